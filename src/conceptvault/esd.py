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
from dataclasses import dataclass

import torch

from .backbone import unet_fingerprint
from .errors import ConceptVaultError
from .latents import LatentSource, SampledLatents, Sampler
from .manifest import Method
from .training import (
    Concept,
    HideResult,
    LossSpace,
    Objective,
    TextStates,
    TrainedLayers,
    cached_latents,
    check_inputs,
    check_settings,
    option,
    peak_memory,
    progress_bar,
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

    def __post_init__(self):
        check_settings(self, positive=("iterations", "lr", "sampler_steps", "cache_trajectories", "batch_size"))

    def to_dict(self) -> dict:
        return {name: getattr(value, "value", value) for name, value in vars(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> EsdConfig:
        return settings_from_dict(cls, values)


def erase_esd(pipe, concepts: Sequence[Concept], config: EsdConfig, *, progress: bool = True) -> HideResult:
    """Fine-tune ``pipe.unet`` in place so that it no longer makes ``concepts``; returns the changed tensors.

    Args:
        pipe: a diffusers text-to-image pipeline.
        concepts: what to erase, each toward its anchor (default: the empty prompt).
        config: the run's settings (:class:`EsdConfig`).
        progress: show a progress bar.
    """
    concepts, _ = check_inputs(pipe, concepts, ())
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    base_fingerprint = unet_fingerprint(pipe.unet)
    frozen_unet = copy.deepcopy(pipe.unet).requires_grad_(False).eval()
    anchors = [a for c in concepts for a in c.every_anchor()]
    texts = TextStates(pipe, [*(p for c in concepts for p in c.prompts), *anchors, ""])
    trained = trainable_parameters(pipe.unet, config.train)
    optimiser = torch.optim.Adam(trained.values(), lr=config.lr)
    objective = Objective(pipe.unet, frozen_unet, pipe.scheduler.config, config)
    sampler = Sampler.for_pipeline(pipe, config.sampler_steps, config.guidance, texts(""))
    if config.latents == LatentSource.CACHE:
        prompts = [p for c in concepts for p in c.prompts]
        source = cached_latents(frozen_unet, sampler, texts, prompts, config.cache_trajectories, generator, progress)
    else:
        source = SampledLatents(pipe.unet, sampler, texts)
    requires_grad = {name: p.requires_grad for name, p in pipe.unet.named_parameters()}
    pipe.unet.requires_grad_(False).eval()
    for parameter in trained.values():
        parameter.requires_grad_(True)
    losses, setup_seconds = [], time.perf_counter() - started
    try:
        with progress_bar(progress, config.iterations, 0) as advance:
            for step in range(config.iterations):
                concept = concepts[randint(len(concepts), generator)]
                prompt = concept.prompts[randint(len(concept.prompts), generator)]
                z, t = source.draw(prompt, config.batch_size, generator)
                frozen, anchor = objective.teachers(z, t, texts, source.last_teacher), concept.anchor_of(prompt)
                loss = objective.hide(z, t, texts(prompt), texts(anchor), frozen(prompt), frozen_anchor=frozen(anchor))
                if not torch.isfinite(loss):
                    raise ConceptVaultError(
                        f"the training loss became {loss.item()} at step {step + 1}; nothing was written. "
                        "Lower --lr and run again."
                    )
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                losses.append(float(loss.detach()))
                advance(f"L_hide {losses[-1]:.2e}")
    except KeyboardInterrupt:
        raise ConceptVaultError(
            f"interrupted at step {len(losses)} of {config.iterations}; nothing was written."
        ) from None
    finally:
        for name, p in pipe.unet.named_parameters():
            p.requires_grad_(requires_grad.get(name, True))
    public = {name: p.detach().cpu().clone() for name, p in trained.items()}
    stats = {
        "steps": config.iterations,
        "seconds": round(time.perf_counter() - started - setup_seconds, 3),
        "setup_seconds": round(setup_seconds, 3),
        "initial": {"L_hide": losses[0]},
        "final": {"L_hide": sum(losses[-10:]) / len(losses[-10:])},
        **peak_memory(),
    }
    return HideResult(
        public=public,
        keys={},
        stats=stats,
        base_fingerprint=base_fingerprint,
        concepts=concepts,
        config=config,
        method=Method.ESD,
    )
