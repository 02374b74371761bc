"""Where the training latents ``z_t`` come from.

``sample`` runs the DDIM sampler from seeded noise with the model being trained (no key, with
classifier-free guidance) and stops at a random step, as the method prescribes. ``cache`` runs the
frozen model's DDIM trajectories once per prompt before training and draws ``(z_t, t)`` pairs from
them, trading freshness for a large saving in UNet calls per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
from diffusers import DDIMScheduler
from torch import nn

from .backbone import unet_predict


class LatentSource(str, Enum):
    """How ``z_t`` is made for each training step."""

    SAMPLE = "sample"
    CACHE = "cache"


@dataclass
class Sampler:
    """Deterministic DDIM (eta = 0) with classifier-free guidance, on pre-encoded text states."""

    scheduler: DDIMScheduler
    steps: int
    guidance: float
    latent_shape: tuple[int, int, int]
    empty_states: torch.Tensor  # (1, 77, d): the unconditional prompt

    @classmethod
    def for_pipeline(cls, pipe, steps: int, guidance: float, empty_states: torch.Tensor) -> Sampler:
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        scheduler.set_timesteps(steps)
        unet = pipe.unet
        size = unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return cls(scheduler, steps, guidance, (unet.config.in_channels, *size), empty_states)

    @property
    def timesteps(self) -> torch.Tensor:
        return self.scheduler.timesteps

    def noise(self, batch: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        """Seeded on the CPU so that every device draws the same noise."""
        noise = torch.randn((batch, *self.latent_shape), generator=generator)
        return noise.to(device=like.device, dtype=like.dtype) * self.scheduler.init_noise_sigma

    @torch.no_grad()
    def trajectory(
        self, unet: nn.Module, states: torch.Tensor, latents: torch.Tensor, stop: int | None = None
    ) -> list[torch.Tensor]:
        """The latents fed to the UNet at steps ``0 .. stop`` (all steps when ``stop`` is None)."""
        stop = self.steps - 1 if stop is None else stop
        batch = latents.shape[0]
        context = torch.cat([self.empty_states.expand(batch, -1, -1), states.expand(batch, -1, -1)])
        visited = [latents]
        for timestep in self.timesteps[:stop]:
            both = unet_predict(unet, torch.cat([latents, latents]), timestep, context)
            unconditional, conditional = both.chunk(2)
            guided = unconditional + self.guidance * (conditional - unconditional)
            latents = self.scheduler.step(guided, timestep, latents).prev_sample
            visited.append(latents)
        return visited


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(high, (1,), generator=generator))


class SampledLatents:
    """Run the sampler with the model being trained, stop at a random step, return that step's ``(z_t, t)``."""

    def __init__(self, unet: nn.Module, sampler: Sampler, states: Callable[[str], torch.Tensor]):
        self.unet, self.sampler, self.states = unet, sampler, states
        self.last_sampler_calls = 0

    def draw(self, prompt: str, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        stop = _randint(self.sampler.steps, generator)
        states = self.states(prompt)
        noise = self.sampler.noise(batch, generator, like=states)
        latents = self.sampler.trajectory(self.unet, states, noise, stop=stop)[-1]
        self.last_sampler_calls = stop
        timestep = self.sampler.timesteps[stop].to(states.device)
        return latents, timestep.expand(batch)


class CachedLatents:
    """Frozen-model DDIM trajectories made once per prompt; each draw picks a trajectory and a step."""

    def __init__(
        self,
        frozen_unet: nn.Module,
        sampler: Sampler,
        states: Callable[[str], torch.Tensor],
        prompts: list[str],
        trajectories: int,
        generator: torch.Generator,
    ):
        self.sampler = sampler
        self.last_sampler_calls = 0
        self.cache: dict[str, torch.Tensor] = {}  # prompt -> (trajectories, steps, C, H, W) on the CPU
        for prompt in dict.fromkeys(prompts):
            prompt_states = states(prompt)
            noise = sampler.noise(trajectories, generator, like=prompt_states)
            visited = sampler.trajectory(frozen_unet, prompt_states, noise)
            self.cache[prompt] = torch.stack(visited, dim=1).cpu()
        self.device = next(frozen_unet.parameters()).device

    def draw(self, prompt: str, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        trajectories = self.cache[prompt]
        which = torch.randint(trajectories.shape[0], (batch,), generator=generator)
        steps = torch.randint(trajectories.shape[1], (batch,), generator=generator)
        latents = trajectories[which, steps].to(self.device)
        return latents, self.sampler.timesteps[steps].to(self.device)
