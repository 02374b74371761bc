"""UCE, erasing a concept by a closed-form edit of the cross-attention projections (Gandikota et al.,
*Unified Concept Editing in Diffusion Models*, WACV 2024): the second baseline hiding is compared with.

For every cross-attention layer, the key and value projections ``W`` (``to_k``, ``to_v``) are replaced by
the solution of a ridge regression that sends the erased concept's text states where the frozen layer
sends its anchor's, keeps the preserved prompts' projections as they were, and stays close to ``W``:

    min_W  sum_erase |W c_i - W_old a_i|^2  +  sum_preserve |W c_j - W_old c_j|^2  +  lambda |W - W_old|^2
    W = (sum_erase W_old a_i c_i^T + sum_preserve W_old c_j c_j^T + lambda W_old)
        (sum_erase c_i c_i^T + sum_preserve c_j c_j^T + lambda I)^-1

The text states used are the concept's last token and every token after it (the end-of-text and
padding states carry the whole prompt in a causal text encoder), aligned with the same positions of the
anchor; preserved prompts contribute every token. No training, no keys: the concept is gone for everyone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ...backbone import unet_fingerprint
from ...concepts import Concept, HideResult, check_inputs
from ...cross_attention_edit import (
    concept_token_states,
    edit_projections,
    edit_result,
    erased_and_kept_states,
    ridge_inverse,
    ridge_solution,
)
from ...settings import Settings, option

__all__ = ["UceConfig", "concept_token_states", "erase_uce"]


@dataclass
class UceConfig(Settings):
    """Every setting of a UCE edit; stored in the vault's manifest."""

    lamb: float = option(0.1, "Weight of staying close to the original projections (lambda).")
    erase_scale: float = option(1.0, "Weight of the erased concepts' terms.")
    preserve_scale: float = option(1.0, "Weight of the preserved prompts' terms.")
    seed: int = option(0, "Unused by the closed form; kept so every method's settings carry one.")

    positive: ClassVar[tuple[str, ...]] = ("lamb",)


@torch.no_grad()
def erase_uce(pipe, concepts: Sequence[Concept], config: UceConfig, *, preserve: Sequence[str] = ()) -> HideResult:
    """Edit ``pipe.unet``'s cross-attention key and value projections in place; returns the changed tensors.

    Args:
        pipe: a diffusers text-to-image pipeline.
        concepts: what to erase, each toward its anchor (default: the empty prompt).
        config: the edit's settings (:class:`UceConfig`).
        preserve: prompts whose projections stay as they were.
    """
    concepts, preserve = check_inputs(pipe, concepts, preserve)
    started = time.perf_counter()
    base_fingerprint = unet_fingerprint(pipe.unet)
    sources, targets, kept = erased_and_kept_states(pipe, concepts, preserve)
    scales = dict(erase_scale=config.erase_scale, preserve_scale=config.preserve_scale, lamb=config.lamb)
    inverse = ridge_inverse(sources, kept, **scales)
    public = edit_projections(
        pipe.unet, lambda name, old: ridge_solution(old, sources, targets, kept, inverse, **scales)
    )
    stats = {"erased_states": len(sources)}
    return edit_result(
        "uce",
        public,
        stats,
        started,
        base_fingerprint=base_fingerprint,
        concepts=concepts,
        config=config,
        preserve=preserve,
    )
