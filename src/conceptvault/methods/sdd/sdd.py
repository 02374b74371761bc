"""Safe self-distillation (Kim et al., *Towards Safe Self-Distillation of Internet-Scale Text-to-Image Diffusion
Models*, 2023): a baseline that hiding is compared with.

Each step draws ``z_t`` by sampling the model being trained on a concept prompt (guidance ``guidance``) and
stopping at a random step, then pulls the model's (the student's) prediction for the concept prompt to the
teacher's prediction for the empty prompt, with no gradient through the teacher. The teacher starts as the
original model and follows the student as its exponential moving average (``ema_decay`` of it kept per step),
so the target moves slowly with what the student has become. Cross-attention trains by default, as in the paper.
The teacher is part of every checkpoint, so a resumed run is the run it continues. The vault holds the student:
the concept is gone for everyone.
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
class SddConfig(SamplerSettings):
    """Every setting of an SDD run; stored in the vault's manifest."""

    iterations: int = option(1500, "Fine-tuning steps.")
    lr: float = option(1e-5, "Adam learning rate of the trained weights.")
    ema_decay: float = option(
        0.999, "Share of the teacher kept at each step; the rest is the student (1: the original throughout)."
    )
    train: TrainedLayers = option(TrainedLayers.XATTN, "Cross-attention only (the paper's), all but it, or all.")
    loss_space: LossSpace = option(LossSpace.EPSILON, "Compare predictions as noise, clean latents or velocity.")
    checkpoint_every: int = option(0, "Steps between checkpoints (0: only at the end and on Ctrl-C).")

    positive = (*SamplerSettings.positive, "iterations", "lr")

    def __post_init__(self):
        super().__post_init__()
        if self.ema_decay > 1:
            raise ValueError(f"ema_decay must be at most 1; got {self.ema_decay!r}.")


def erase_sdd(
    pipe,
    concepts: Sequence[Concept],
    config: SddConfig,
    *,
    checkpoint_dir: Path | str | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
) -> HideResult:
    """Fine-tune ``pipe.unet`` in place so that it no longer makes ``concepts``; returns the changed tensors.

    Args:
        pipe: a diffusers text-to-image pipeline.
        concepts: what to erase (their anchors are not used: every concept goes to the empty prompt).
        config: the run's settings (:class:`SddConfig`).
        checkpoint_dir / resume: as for :func:`conceptvault.hide`.
        progress: show a progress bar.
        on_step: called after every step as ``on_step(step, info)`` with the step's loss.
    """
    run = _SddRun(pipe, check_inputs(pipe, concepts, ())[0], config, progress)
    return run_erasure(
        run, pipe.unet, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress, on_step=on_step
    )


class _SddRun(ErasureRun):
    """One SDD run: the student's trained weights and their optimiser, the moving-average teacher, the latents."""

    method = "sdd"

    def __init__(self, pipe, concepts: list[Concept], config: SddConfig, progress: bool):
        started = time.perf_counter()
        self.concepts, self.preserve = concepts, []
        self.begin(pipe, config)
        # the teacher starts as the original: the run's copy of it serves, and follows the student from here
        self.teacher_unet = self.frozen_unet
        self.texts = TextStates(pipe, [*(p for c in concepts for p in c.prompts), ""])
        self.trained = trainable_parameters(pipe.unet, config.train)
        teacher_parameters = dict(self.teacher_unet.named_parameters())
        self.teacher = {name: teacher_parameters[name] for name in self.trained}
        self.optimiser = torch.optim.Adam(self.trained.values(), lr=config.lr)
        self.objective = Objective(pipe.unet, self.teacher_unet, pipe.scheduler.config, config)
        cached = [p for c in concepts for p in c.prompts]
        _, self.source = latent_source(pipe, self.teacher_unet, self.texts, cached, config, self.generator, progress)
        self.state = RunState(total=config.iterations)
        self.at_step_boundary()
        self.state.setup_seconds = time.perf_counter() - started

    def step(self) -> dict:
        """Pull the student's prediction for a concept prompt to the teacher's unconditional one, then move the
        teacher toward the student."""
        started = time.perf_counter()
        self.at_step_boundary()
        prompt = self.pick(self.pick(self.concepts).prompts)
        z, t = self.source.draw(prompt, self.config.batch_size, self.generator)
        # always the teacher as it is now: a cache's predictions are the original model's
        unconditional = self.objective.teacher(z, t, self.texts(""))
        L_distil = self.objective.distil(z, t, self.texts(prompt), target=unconditional)
        measured = self.update(L_distil, {"L_distil": L_distil}, started)
        self.follow_student()
        return measured

    @torch.no_grad()
    def follow_student(self) -> None:
        """teacher <- decay * teacher + (1 - decay) * student, for every trained weight (the others are equal)."""
        for name, parameter in self.trained.items():
            self.teacher[name].lerp_(parameter, 1 - self.config.ema_decay)

    def checkpoint(self) -> tuple[dict, dict]:
        teacher = {name: p.detach().cpu().clone() for name, p in self.teacher.items()}
        return {**self.trained_state(), "teacher": teacher}, {}

    def load(self, public: dict, secret: dict) -> None:
        self.load_trained_state(public)
        saved = public["teacher"]
        if saved.keys() != self.teacher.keys():
            raise KeyError("teacher")  # the checkpointer reports a checkpoint that does not fit
        with torch.no_grad():
            for name, parameter in self.teacher.items():
                parameter.copy_(saved[name])
