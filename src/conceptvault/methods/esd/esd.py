"""ESD, erasing a concept by a negative-guidance fine-tune (Gandikota et al., *Erasing Concepts from
Diffusion Models*, ICCV 2023): the baseline that hiding is compared with.

Each step draws ``z_t`` by sampling the model being trained on the concept's prompt (guidance 3) and
stopping at a random step, then pulls the model's prediction for the concept toward the frozen model's
``eps(z, anchor) - eta (eps(z, c) - eps(z, anchor))``: the same target as hiding's ``L_hide``, with no
key and nothing held to the original. ``esd-x`` trains cross-attention only, ``esd-u`` everything but it.
The result is a vault with no keys: the concept is gone for everyone.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ...backbone import unet_fingerprint
from ...driver import Checkpointer, drive
from ...latents import LatentSource, SampledLatents, Sampler
from ...training import (
    Concept,
    HideResult,
    LossSpace,
    Objective,
    RunState,
    TextStates,
    TrainedLayers,
    cached_latents,
    check_inputs,
    check_settings,
    gradients_for,
    option,
    randint,
    settings_from_dict,
    trainable_parameters,
)


@dataclass
class EsdConfig:
    """Every setting of an ESD run; stored in the vault's manifest."""

    iterations: int = option(1000, "Fine-tuning steps.")
    lr: float = option(1e-5, "Adam learning rate of the trained weights.")
    eta: float = option(1.0, "Negative-guidance strength of the erasing target.")
    train: TrainedLayers = option(TrainedLayers.XATTN, "esd-x: cross-attention only; esd-u (noxattn): all but it.")
    loss_space: LossSpace = option(LossSpace.EPSILON, "Compare predictions as noise, clean latents or velocity.")
    latents: LatentSource = option(
        LatentSource.SAMPLE, "Make z_t by sampling with the current model, or from a cache."
    )
    sampler_steps: int = option(50, "DDIM steps of the sampler that makes z_t.")
    guidance: float = option(3.0, "Classifier-free guidance of the sampler that makes z_t.")
    cache_trajectories: int = option(4, "Frozen-model trajectories cached per prompt (latents=cache).")
    batch_size: int = option(1, "Latents per training step.")
    seed: int = option(0, "Seed of every random choice in the run.")
    checkpoint_every: int = option(0, "Steps between checkpoints (0: only at the end and on Ctrl-C).")

    def __post_init__(self):
        check_settings(self, positive=("iterations", "lr", "sampler_steps", "cache_trajectories", "batch_size"))

    def to_dict(self) -> dict:
        return {name: getattr(value, "value", value) for name, value in vars(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> EsdConfig:
        return settings_from_dict(cls, values)


def erase_esd(
    pipe,
    concepts: Sequence[Concept],
    config: EsdConfig,
    *,
    checkpoint_dir: Path | str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> HideResult:
    """Fine-tune ``pipe.unet`` in place so that it no longer makes ``concepts``; returns the changed tensors.

    Args:
        pipe: a diffusers text-to-image pipeline.
        concepts: what to erase, each toward its anchor (default: the empty prompt).
        config: the run's settings (:class:`EsdConfig`).
        checkpoint_dir / resume: as for :func:`conceptvault.hide`.
        progress: show a progress bar.
    """
    run = _EsdRun(pipe, check_inputs(pipe, concepts, ())[0], config, progress)
    checkpointer = Checkpointer(checkpoint_dir, "esd") if checkpoint_dir is not None else None
    with gradients_for([pipe.unet], run.trained.values()):
        drive(
            run,
            checkpointer=checkpointer,
            resume=resume,
            checkpoint_every=config.checkpoint_every,
            progress=progress,
            label="erasing",
        )
    return run.result()


class _EsdRun:
    """One ESD run: the frozen model, the trained weights and their optimiser, the latent source."""

    def __init__(self, pipe, concepts: list[Concept], config: EsdConfig, progress: bool):
        started = time.perf_counter()
        self.concepts, self.config = concepts, config
        self.generator = torch.Generator().manual_seed(config.seed)
        self.base_fingerprint = unet_fingerprint(pipe.unet)
        frozen_unet = copy.deepcopy(pipe.unet).requires_grad_(False).eval()
        anchors = [a for c in concepts for a in c.every_anchor()]
        self.texts = TextStates(pipe, [*(p for c in concepts for p in c.prompts), *anchors, ""])
        self.trained = trainable_parameters(pipe.unet, config.train)
        self.optimiser = torch.optim.Adam(self.trained.values(), lr=config.lr)
        self.objective = Objective(pipe.unet, frozen_unet, pipe.scheduler.config, config)
        sampler = Sampler.for_pipeline(pipe, config.sampler_steps, config.guidance, self.texts(""))
        if config.latents == LatentSource.CACHE:
            prompts = [p for c in concepts for p in c.prompts]
            self.source = cached_latents(
                frozen_unet, sampler, self.texts, prompts, config.cache_trajectories, self.generator, progress
            )
        else:
            self.source = SampledLatents(pipe.unet, sampler, self.texts)
        self.state = RunState(total=config.iterations)
        self.rng_at_step_start = self.generator.get_state()
        self.state.setup_seconds = time.perf_counter() - started

    def step(self) -> dict:
        """Pull the model's prediction for a concept prompt to ESD's negative-guidance target."""
        started, texts = time.perf_counter(), self.texts
        self.rng_at_step_start = self.generator.get_state()
        concept = self.concepts[randint(len(self.concepts), self.generator)]
        prompt = concept.prompts[randint(len(concept.prompts), self.generator)]
        z, t = self.source.draw(prompt, self.config.batch_size, self.generator)
        frozen, anchor = self.objective.teachers(z, t, texts, self.source.last_teacher), concept.anchor_of(prompt)
        L_hide = self.objective.hide(z, t, texts(prompt), texts(anchor), frozen(prompt), frozen_anchor=frozen(anchor))
        self.optimiser.zero_grad(set_to_none=True)
        L_hide.backward()
        self.optimiser.step()
        self.state.step += 1
        self.rng_at_step_start = self.generator.get_state()
        self.state.record({"L_hide": L_hide}, time.perf_counter() - started)
        return dict(self.state.latest, loss=self.state.latest["L_hide"])

    def identity(self) -> dict:
        settings = {k: v for k, v in self.config.to_dict().items() if k not in ("iterations", "checkpoint_every")}
        return {
            "config": settings,
            "concepts": [asdict(c) for c in self.concepts],
            "preserve": [],
            "base_fingerprint": self.base_fingerprint,
        }

    def checkpoint(self) -> tuple[dict, dict]:
        public = {
            "run": self.state.to_dict(),
            "rng": self.rng_at_step_start,
            "trained": {name: p.detach().cpu().clone() for name, p in self.trained.items()},
            "optimiser": self.optimiser.state_dict(),
        }
        return public, {}

    def load(self, public: dict, secret: dict) -> None:
        with torch.no_grad():
            for name, parameter in self.trained.items():
                parameter.copy_(public["trained"][name])
        self.optimiser.load_state_dict(public["optimiser"])
        self.generator.set_state(public["rng"])
        self.rng_at_step_start = self.generator.get_state()
        for name, value in public["run"].items():
            setattr(self.state, name, value)

    def result(self) -> HideResult:
        public = {name: p.detach().cpu().clone() for name, p in self.trained.items()}
        return HideResult(
            public=public,
            keys={},
            stats=self.state.stats(self.state.step),
            base_fingerprint=self.base_fingerprint,
            concepts=self.concepts,
            config=self.config,
            method="esd",
        )
