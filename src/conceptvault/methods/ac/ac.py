"""Ablating Concepts (Kumari et al., *Ablating Concepts in Text-to-Image Diffusion Models*, ICCV 2023): a concept's
prompts are made to draw what their anchor prompts draw, a baseline that hiding is compared with.

``z_t`` come from the anchor's distribution: the frozen model's DDIM trajectories of each anchor prompt, made once
(``latents="cache"``, as the paper samples its anchor images once), or sampled with the model as it trains. With
``target="model"`` (``ac-model``, the paper's model-based variant) the model's prediction for the concept prompt at
``z_t`` is pulled to the frozen model's prediction for the anchor prompt there. With ``target="noise"``
(``ac-noise``, the noise-based variant) the frozen model's finished samples of the anchor are noised again at a
uniformly drawn training timestep and the concept prompt's prediction is pulled to the true noise: the standard
denoising loss on pairs of the concept's prompt and the anchor's pictures. ``anchor_weight`` adds the paper's
optional regulariser: the anchor prompt's own prediction held to the same target (its frozen prediction, or the
true noise). Cross-attention trains by default (every attn2 weight; the paper's "kv" setting trains only its key
and value projections). The result is a vault with no keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch
import torch.nn.functional as F

from ...concepts import Concept, HideResult, check_inputs
from ...driver import run_erasure
from ...latents import CachedLatents, LatentSource, Sampler
from ...objective import Objective, TextStates
from ...settings import LossSpace, SamplerSettings, TrainedLayers, option
from ...training import ErasureRun, RunState, latent_source, trainable_parameters


class AcTarget(str, Enum):
    """What a concept prompt's prediction is pulled to."""

    MODEL = "model"  # the frozen model's prediction for the anchor prompt at the same z_t
    NOISE = "noise"  # the true noise of a noised sample of the anchor


@dataclass
class AcConfig(SamplerSettings):
    """Every setting of an Ablating Concepts run; stored in the vault's manifest."""

    latents: LatentSource = option(
        LatentSource.CACHE,
        "z_t from the frozen model's trajectories of the anchor prompts, made once (cache), or by sampling them "
        "with the current model (sample; target=model only).",
    )
    iterations: int = option(200, "Fine-tuning steps.")
    lr: float = option(8e-6, "Adam learning rate of the trained weights.")
    batch_size: int = option(4, "Latents per training step.")
    target: AcTarget = option(
        AcTarget.MODEL, "ac-model: the frozen model's anchor prediction; ac-noise: the true noise of anchor samples."
    )
    anchor_weight: float = option(
        0.0, "Weight of the regulariser keeping the anchor prompt's own prediction (0: off)."
    )
    train: TrainedLayers = option(
        TrainedLayers.XATTN, "Cross-attention only (the paper's kv: key and value alone), all but it, or all."
    )
    loss_space: LossSpace = option(LossSpace.EPSILON, "Compare predictions as noise, clean latents or velocity.")
    checkpoint_every: int = option(0, "Steps between checkpoints (0: only at the end and on Ctrl-C).")

    positive = (*SamplerSettings.positive, "iterations", "lr")

    def __post_init__(self):
        super().__post_init__()
        if self.target == AcTarget.NOISE and self.latents != LatentSource.CACHE:
            raise ValueError(
                "target 'noise' noises the frozen model's cached samples of the anchor: it needs latents 'cache'; "
                f"got {self.latents.value!r}."
            )


def erase_ac(
    pipe,
    concepts: Sequence[Concept],
    config: AcConfig,
    *,
    checkpoint_dir: Path | str | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
) -> HideResult:
    """Fine-tune ``pipe.unet`` in place so that ``concepts`` draw their anchors; returns the changed tensors.

    Args:
        pipe: a diffusers text-to-image pipeline.
        concepts: what to erase, each toward its anchor (default: the empty prompt) or a prompt's own anchor.
        config: the run's settings (:class:`AcConfig`).
        checkpoint_dir / resume: as for :func:`conceptvault.hide`.
        progress: show progress bars.
        on_step: called after every step as ``on_step(step, info)`` with the step's losses.
    """
    run = _AcRun(pipe, check_inputs(pipe, concepts, ())[0], config, progress)
    return run_erasure(
        run, pipe.unet, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress, on_step=on_step
    )


def finished_samples(sampler: Sampler, source: CachedLatents) -> dict[str, torch.Tensor]:
    """The frozen model's finished samples of each cached prompt, by prompt, on the CPU: each trajectory's last
    cached step taken once more (its guided prediction is in the cache already)."""
    samples = {}
    for prompt, (latents, unconditional, conditional) in source.cache.items():
        guided = unconditional[:, -1] + sampler.guidance * (conditional[:, -1] - unconditional[:, -1])
        samples[prompt] = sampler.scheduler.step(guided, sampler.timesteps[-1], latents[:, -1]).prev_sample
    return samples


class _AcRun(ErasureRun):
    """One ablation run: the frozen model, the trained weights and their optimiser, the anchors' latents."""

    method = "ac"

    def __init__(self, pipe, concepts: list[Concept], config: AcConfig, progress: bool):
        started = time.perf_counter()
        self.concepts, self.preserve = concepts, []
        self.begin(pipe, config)
        anchors = list(dict.fromkeys(c.anchor_of(p) for c in concepts for p in c.prompts))
        self.texts = TextStates(pipe, [*(p for c in concepts for p in c.prompts), *anchors, ""])
        self.trained = trainable_parameters(pipe.unet, config.train)
        self.optimiser = torch.optim.Adam(self.trained.values(), lr=config.lr)
        self.objective = Objective(pipe.unet, self.frozen_unet, pipe.scheduler.config, config)
        sampler, self.source = latent_source(
            pipe, self.frozen_unet, self.texts, anchors, config, self.generator, progress
        )
        self.noising = sampler.scheduler
        self.samples = finished_samples(sampler, self.source) if config.target == AcTarget.NOISE else {}
        self.state = RunState(total=config.iterations)
        self.at_step_boundary()
        self.state.setup_seconds = time.perf_counter() - started

    def draw(self, anchor: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z_t, t)`` from the anchor's distribution and the target there, in the loss space."""
        batch, generator = self.config.batch_size, self.generator
        if self.config.target == AcTarget.MODEL:
            z, t = self.source.draw(anchor, batch, generator)
            return z, t, self.objective.teacher(z, t, self.texts(anchor), self.source.last_teacher.get(anchor))
        samples = self.samples[anchor]
        clean = samples[torch.randint(samples.shape[0], (batch,), generator=generator)]
        t = torch.randint(len(self.objective.alphas_cumprod), (batch,), generator=generator)
        noise = torch.randn(clean.shape, generator=generator).to(clean.dtype)
        device = self.source.device
        z, t, noise = self.noising.add_noise(clean, noise, t).to(device), t.to(device), noise.to(device)
        return z, t, self.objective.noise_target(z, t, noise)

    def losses(self, z, t, prompt: str, anchor: str, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The concept prompt's prediction against the target and, with the regulariser on, the anchor prompt's
        (both in one UNet call)."""
        if not self.config.anchor_weight:
            return {"L_ablate": self.objective.distil(z, t, self.texts(prompt), target=target)}
        parts = [(z, t, self.texts(prompt)), (z, t, self.texts(anchor))]
        concept_prediction, anchor_prediction = self.objective.predict_together(parts)
        return {"L_ablate": F.mse_loss(concept_prediction, target), "L_anchor": F.mse_loss(anchor_prediction, target)}

    def step(self) -> dict:
        """Pull the model's prediction for a concept prompt to its anchor's target at a ``z_t`` of the anchor."""
        started = time.perf_counter()
        self.at_step_boundary()
        concept = self.pick(self.concepts)
        prompt = self.pick(concept.prompts)
        anchor = concept.anchor_of(prompt)
        z, t, target = self.draw(anchor)
        losses = self.losses(z, t, prompt, anchor, target)
        loss = losses["L_ablate"] + self.config.anchor_weight * losses.get("L_anchor", 0.0)
        return self.update(loss, losses, started)
