"""Erasure with adversarial preservation (Bui et al., *Erasing Undesirable Concepts in Diffusion Models with
Adversarial Preservation*, NeurIPS 2024).

Each step draws ``z_t`` of a concept prompt as ESD does and pulls the model's prediction for it toward ESD's
negative-guidance target ``eps(z, anchor) - eta (eps(z, c) - eps(z, anchor))``. Before the update, the
adversarial concept (:mod:`conceptvault.adversarial_preservation`: a learned mix of the preserve prompts', the
anchors' and the empty prompt's text states) takes ``adversary_steps`` steps of gradient ascent toward where the
trained model differs most from the original at those latents; the update then also holds the model's prediction
there to the original's, weighted by ``lambda_pres``. Where the paper compares predictions with an L1 erasing loss
and searches with Gumbel noise over a vocabulary of CLIP tokens, this run uses the shared loss space for both terms
and a plain softmax over the prompts it is given. The result is a vault with no keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ...adversarial_preservation import SEARCH_LR, AdversarialConcept, vocabulary
from ...concepts import Concept, HideResult, check_inputs
from ...driver import run_erasure
from ...objective import Objective, TextStates
from ...settings import LossSpace, SamplerSettings, TrainedLayers, option
from ...training import ErasureRun, RunState, latent_source, trainable_parameters


@dataclass
class AdvPresConfig(SamplerSettings):
    """Every setting of an adversarial-preservation erasure; stored in the vault's manifest."""

    iterations: int = option(1000, "Fine-tuning steps.")
    lr: float = option(1e-5, "Adam learning rate of the trained weights.")
    eta: float = option(1.0, "Negative-guidance strength of the erasing target.")
    lambda_pres: float = option(1.0, "Weight of holding the adversarial concept to the original.")
    adversary_steps: int = option(
        2, "Gradient-ascent steps of the adversarial concept's search before each update (0: it stays where it is)."
    )
    adversary_lr: float = option(SEARCH_LR, "Adam learning rate of the adversarial concept's mixing logits.")
    train: TrainedLayers = option(TrainedLayers.XATTN, "Cross-attention only (xattn), or all but it (noxattn).")
    loss_space: LossSpace = option(LossSpace.EPSILON, "Compare predictions as noise, clean latents or velocity.")
    checkpoint_every: int = option(0, "Steps between checkpoints (0: only at the end and on Ctrl-C).")

    positive = (*SamplerSettings.positive, "iterations", "lr", "adversary_lr")


def erase_advpres(
    pipe,
    concepts: Sequence[Concept],
    config: AdvPresConfig,
    *,
    preserve: Sequence[str] = (),
    checkpoint_dir: Path | str | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
) -> HideResult:
    """Fine-tune ``pipe.unet`` in place so that it no longer makes ``concepts`` while the concept the erasure
    changes most stays as it was; returns the changed tensors.

    Args:
        pipe: a diffusers text-to-image pipeline.
        concepts: what to erase, each toward its anchor (default: the empty prompt).
        config: the run's settings (:class:`AdvPresConfig`).
        preserve: prompts the adversarial concept is mixed from, with the anchors and the empty prompt.
        checkpoint_dir / resume: as for :func:`conceptvault.hide`.
        progress: show a progress bar.
        on_step: called after every step as ``on_step(step, info)`` with the step's losses.
    """
    run = _AdvPresRun(pipe, *check_inputs(pipe, concepts, preserve), config, progress)
    return run_erasure(
        run, pipe.unet, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress, on_step=on_step
    )


class _AdvPresRun(ErasureRun):
    """One run: the frozen model, the trained weights and their optimiser, the adversarial concept, the latents."""

    method = "advpres"

    def __init__(self, pipe, concepts: list[Concept], preserve: list[str], config: AdvPresConfig, progress: bool):
        started = time.perf_counter()
        self.concepts, self.preserve = concepts, preserve
        self.begin(pipe, config)
        prompts = vocabulary(concepts, preserve)
        self.texts = TextStates(pipe, [*(p for c in concepts for p in c.prompts), *prompts])
        self.adversarial = AdversarialConcept(self.texts, prompts, lr=config.adversary_lr)
        self.trained = trainable_parameters(pipe.unet, config.train)
        self.optimiser = torch.optim.Adam(self.trained.values(), lr=config.lr)
        self.objective = Objective(pipe.unet, self.frozen_unet, pipe.scheduler.config, config)
        cached = [p for c in concepts for p in c.prompts]
        _, self.source = latent_source(pipe, self.frozen_unet, self.texts, cached, config, self.generator, progress)
        self.state = RunState(total=config.iterations)
        self.at_step_boundary()
        self.state.setup_seconds = time.perf_counter() - started

    def step(self) -> dict:
        """Search the adversarial concept, then erase the concept and hold the adversarial one, in one update."""
        started, texts, objective = time.perf_counter(), self.texts, self.objective
        self.at_step_boundary()
        concept = self.pick(self.concepts)
        prompt = self.pick(concept.prompts)
        z, t = self.source.draw(prompt, self.config.batch_size, self.generator)
        self.adversarial.search(objective, z, t, self.config.adversary_steps)
        frozen, anchor = objective.teachers(z, t, texts, self.source.last_teacher), concept.anchor_of(prompt)
        L_hide = objective.hide(z, t, texts(prompt), texts(anchor), frozen(prompt), frozen_anchor=frozen(anchor))
        held = objective.predict_together([(z, t, self.adversarial.states())])[0]
        L_adv = self.adversarial.loss(held, objective, z, t)
        loss = L_hide + self.config.lambda_pres * L_adv
        return self.update(loss, {"L_hide": L_hide, "L_adv": L_adv}, started)

    def checkpoint(self) -> tuple[dict, dict]:
        return {**self.trained_state(), "adversarial": self.adversarial.state_dict()}, {}

    def load(self, public: dict, secret: dict) -> None:
        self.load_trained_state(public)
        self.adversarial.load_state_dict(public["adversarial"])

    def result(self) -> HideResult:
        result = super().result()
        result.stats["adversarial_concept"] = self.adversarial.strongest()
        return result
