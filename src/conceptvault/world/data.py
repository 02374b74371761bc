"""Batches of rendered Shapes world images with their labels and captions, drawn from a seed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from conceptvault.world.captions import training_caption
from conceptvault.world.render import render, sample_scene
from conceptvault.world.vocabulary import VOCABULARY

LABELS = {head: list(names) for head, names in VOCABULARY.items()}


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, 64, 64) in [-1, 1]
    labels: dict[str, torch.Tensor]  # head -> (B,) class indices
    captions: list[str]


def render_batch(
    rng: np.random.Generator,
    size: int,
    shape: str | None = None,
    shapes: Sequence[str] | None = None,
    turns: Mapping[str, float] | None = None,
) -> Batch:
    """``size`` random scenes: all of ``shape`` if given, else drawn from ``shapes`` (default: every shape);
    ``turns`` as in ``sample_scene``."""
    scenes = [
        sample_scene(rng, shape=shape or (str(rng.choice(list(shapes))) if shapes else None), turns=turns)
        for _ in range(size)
    ]
    images = np.stack([render(scene, rng) for scene in scenes])
    labels = {
        head: torch.tensor([names.index(getattr(scene, head)) for scene in scenes]) for head, names in LABELS.items()
    }
    captions = [training_caption(s.shape, s.colour, s.style, rng) for s in scenes]
    return Batch(torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1, labels, captions)
