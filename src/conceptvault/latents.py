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
from .parallel import gathered, mine
from .parallel import size as processes


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
        visited = [latents]
        for timestep in self.timesteps[:stop]:
            latents, _, _ = self.step(unet, states, latents, timestep)
            visited.append(latents)
        return visited

    @torch.no_grad()
    def step(
        self, unet: nn.Module, states: torch.Tensor, latents: torch.Tensor, timestep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One guided DDIM step: the next latents, and the UNet's unconditional and conditional predictions."""
        batch = latents.shape[0]
        context = torch.cat([self.empty_states.expand(batch, -1, -1), states.expand(batch, -1, -1)])
        both = unet_predict(unet, torch.cat([latents, latents]), timestep, context)
        unconditional, conditional = both.chunk(2)
        guided = unconditional + self.guidance * (conditional - unconditional)
        return self.scheduler.step(guided, timestep, latents).prev_sample, unconditional, conditional


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(high, (1,), generator=generator))


class SampledLatents:
    """Run the sampler with the model being trained, stop at a random step, return that step's ``(z_t, t)``."""

    def __init__(self, unet: nn.Module, sampler: Sampler, states: Callable[[str], torch.Tensor]):
        self.unet, self.sampler, self.states = unet, sampler, states
        self.last_sampler_calls = 0
        self.last_teacher: dict[str, torch.Tensor] = {}  # sampling with the trained model gives no teacher

    def draw(self, prompt: str, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        stop = _randint(self.sampler.steps, generator)
        states = self.states(prompt)
        noise = self.sampler.noise(batch, generator, like=states)
        latents = self.sampler.trajectory(self.unet, states, noise, stop=stop)[-1]
        self.last_sampler_calls = stop
        timestep = self.sampler.timesteps[stop].to(states.device)
        return latents, timestep.expand(batch)


class CachedLatents:
    """Frozen-model DDIM trajectories made once per prompt; each draw picks a trajectory and a step.

    The frozen model's predictions at every cached step come free with the trajectory (guidance computes
    them), so a draw also leaves them in ``last_teacher``, by prompt ("" for the unconditional one): a
    training step then needs no forward pass of the frozen model for those prompts. Several prompts'
    trajectories run in one sampler batch; each is the trajectory it would be alone.
    """

    TRAJECTORIES_PER_CALL = 16  # a guided call on 32 latents: cheaper per latent than 8 on a CPU, small on a GPU

    def __init__(
        self,
        frozen_unet: nn.Module,
        sampler: Sampler,
        states: Callable[[str], torch.Tensor],
        prompts: list[str],
        trajectories: int,
        generator: torch.Generator,
        on_prompts: Callable[[int], None] | None = None,
    ):
        """``on_prompts(n)`` is called as each batch of ``n`` prompts' trajectories is done."""
        self.sampler = sampler
        self.last_sampler_calls = 0
        self.last_teacher: dict[str, torch.Tensor] = {}
        # prompt -> (latents, unconditional, conditional), each (trajectories, steps, C, H, W) on the CPU
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        unique = list(dict.fromkeys(prompts))
        noise = {prompt: sampler.noise(trajectories, generator, like=states(prompt)) for prompt in unique}
        together = max(1, self.TRAJECTORIES_PER_CALL // trajectories)
        chunks = [unique[start : start + together] for start in range(0, len(unique), together)]
        for index in mine(len(chunks)):  # on several processes each makes its share of the prompts
            chunk = chunks[index]
            chunk_states = torch.cat([states(prompt).expand(trajectories, -1, -1) for prompt in chunk])
            latents = torch.cat([noise[prompt] for prompt in chunk])
            visited: list[tuple[torch.Tensor, ...]] = []
            for timestep in sampler.timesteps:
                following, unconditional, conditional = sampler.step(frozen_unet, chunk_states, latents, timestep)
                visited.append((latents, unconditional, conditional))
                latents = following
            parts = [torch.stack(part, dim=1).cpu().split(trajectories) for part in zip(*visited, strict=True)]
            self.cache.update(zip(chunk, zip(*parts, strict=True), strict=True))
            if on_prompts is not None:  # this round's prompts on every process, so the count ends at the total
                first = index - index % processes()
                on_prompts(sum(len(c) for c in chunks[first : first + processes()]))
        shares = gathered(self.cache)
        self.cache = {prompt: shares[prompt] for prompt in unique}
        self.device = next(frozen_unet.parameters()).device

    def draw(self, prompt: str, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        latents, unconditional, conditional = self.cache[prompt]
        which = torch.randint(latents.shape[0], (batch,), generator=generator)
        steps = torch.randint(latents.shape[1], (batch,), generator=generator)
        self.last_teacher = {
            "": unconditional[which, steps].to(self.device),
            prompt: conditional[which, steps].to(self.device),
        }
        return latents[which, steps].to(self.device), self.sampler.timesteps[steps].to(self.device)
