"""ESD, erasing a concept by a negative-guidance fine-tune (Gandikota et al., *Erasing Concepts from
Diffusion Models*, ICCV 2023): the baseline that hiding is compared with.

Each step draws ``z_t`` by sampling the model being trained on the concept's prompt (guidance 3) and
stopping at a random step, then pulls the model's prediction for the concept toward the frozen model's
``eps(z, anchor) - eta (eps(z, c) - eps(z, anchor))``: the same target as hiding's ``L_hide``, with no
key and nothing held to the original. ``esd-x`` trains cross-attention only, ``esd-u`` everything but it.
The result is a vault with no keys: the concept is gone for everyone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ...concepts import Concept, HideResult, check_inputs
from ...driver import run_erasure
from ...objective import Objective, TextStates
from ...settings import LossSpace, SamplerSettings, TrainedLayers, option
from ...training import ErasureRun, RunState, latent_source, trainable_parameters


@dataclass
class EsdConfig(SamplerSettings):
    """Every setting of an ESD run; stored in the vault's manifest."""

    iterations: int = option(1000, "Fine-tuning steps.")
    lr: float = option(1e-5, "Adam learning rate of the trained weights.")
    eta: float = option(1.0, "Negative-guidance strength of the erasing target.")
    train: TrainedLayers = option(TrainedLayers.XATTN, "esd-x: cross-attention only; esd-u (noxattn): all but it.")
    loss_space: LossSpace = option(LossSpace.EPSILON, "Compare predictions as noise, clean latents or velocity.")
    checkpoint_every: int = option(0, "Steps between checkpoints (0: only at the end and on Ctrl-C).")

    positive = (*SamplerSettings.positive, "iterations", "lr")


def erase_esd(
    pipe,
    concepts: Sequence[Concept],
    config: EsdConfig,
    *,
    checkpoint_dir: Path | str | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
) -> HideResult:
    """Fine-tune ``pipe.unet`` in place so that it no longer makes ``concepts``; returns the changed tensors.

    Args:
        pipe: a diffusers text-to-image pipeline.
        concepts: what to erase, each toward its anchor (default: the empty prompt).
        config: the run's settings (:class:`EsdConfig`).
        checkpoint_dir / resume: as for :func:`conceptvault.hide`.
        progress: show a progress bar.
        on_step: called after every step as ``on_step(step, info)`` with the step's loss.
    """
    run = _EsdRun(pipe, check_inputs(pipe, concepts, ())[0], config, progress)
    return run_erasure(
        run, pipe.unet, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress, on_step=on_step
    )


class _EsdRun(ErasureRun):
    """One ESD run: the frozen model, the trained weights and their optimiser, the latent source."""

    method = "esd"

    def __init__(self, pipe, concepts: list[Concept], config: EsdConfig, progress: bool):
        started = time.perf_counter()
        self.concepts, self.preserve, self.config = concepts, [], config
        self.begin(pipe, config)
        frozen_unet = self.frozen_unet
        anchors = [a for c in concepts for a in c.every_anchor()]
        self.texts = TextStates(pipe, [*(p for c in concepts for p in c.prompts), *anchors, ""])
        self.trained = trainable_parameters(pipe.unet, config.train)
        self.optimiser = torch.optim.Adam(self.trained.values(), lr=config.lr)
        self.objective = Objective(pipe.unet, frozen_unet, pipe.scheduler.config, config)
        cached = [p for c in concepts for p in c.prompts]
        _, self.source = latent_source(pipe, frozen_unet, self.texts, cached, config, self.generator, progress)
        self.state = RunState(total=config.iterations)
        self.at_step_boundary()
        self.state.setup_seconds = time.perf_counter() - started

    def step(self) -> dict:
        """Pull the model's prediction for a concept prompt to ESD's negative-guidance target."""
        started, texts = time.perf_counter(), self.texts
        self.at_step_boundary()
        concept = self.pick(self.concepts)
        prompt = self.pick(concept.prompts)
        z, t = self.source.draw(prompt, self.config.batch_size, self.generator)
        frozen, anchor = self.objective.teachers(z, t, texts, self.source.last_teacher), concept.anchor_of(prompt)
        L_hide = self.objective.hide(z, t, texts(prompt), texts(anchor), frozen(prompt), frozen_anchor=frozen(anchor))
        return self.update(L_hide, {"L_hide": L_hide}, started)
