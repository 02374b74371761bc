"""The objective every trained method shares: the prompts' text states, encoded once, and the predictions of the
trained and the frozen model compared in one loss space (noise, clean latent or velocity)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from torch import nn

from .backbone import encode_prompts, unet_predict
from .settings import LossSpace


class TextStates:
    """Every prompt of the run, encoded once: ``texts(prompt)`` is its ``(1, 77, d)`` text states."""

    def __init__(self, pipe, prompts: list[str], chunk: int = 32):
        unique = list(dict.fromkeys(prompts))
        self.states: dict[str, torch.Tensor] = {}
        for start in range(0, len(unique), chunk):
            part = unique[start : start + chunk]
            self.states.update(zip(part, encode_prompts(pipe, part).split(1), strict=True))
        self.width = self.states[unique[0]].shape[-1]

    def __call__(self, prompt: str) -> torch.Tensor:
        return self.states[prompt]


def _named(key: str | None) -> list[str]:
    return [key] if key else []


class Objective:
    """The methods' losses, every prediction converted to the loss space first; ``config`` gives ``loss_space``
    and, where the method uses ESD's negative-guidance target, ``eta``."""

    def __init__(self, unet: nn.Module, frozen_unet: nn.Module, scheduler_config, config) -> None:
        self.unet, self.frozen_unet = unet, frozen_unet
        self.eta, self.loss_space = getattr(config, "eta", None), config.loss_space
        self.prediction_type = scheduler_config.get("prediction_type", "epsilon")
        alphas_cumprod = DDIMScheduler.from_config(scheduler_config).alphas_cumprod
        self.alphas_cumprod = alphas_cumprod.to(next(unet.parameters()).device)

    def _to_loss_space(self, output: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_bar = self.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        output, z = output.float(), z.float()
        if self.prediction_type == "v_prediction":
            eps = alpha * output + sigma * z
        elif self.prediction_type == "sample":
            eps = (z - alpha * output) / sigma
        else:
            eps = output
        if self.loss_space == LossSpace.EPSILON:
            return eps
        x0 = (z - sigma * eps) / alpha
        return x0 if self.loss_space == LossSpace.X0 else alpha * eps - sigma * x0

    def noise_target(self, z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The standard denoising target of ``z`` made by noising a clean latent with ``noise`` at ``t``: what a
        perfect model predicts there, in the loss space."""
        alpha_bar = self.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        noise = noise.float()
        clean = (z.float() - sigma * noise) / alpha
        if self.prediction_type == "v_prediction":
            output = alpha * noise - sigma * clean
        elif self.prediction_type == "sample":
            output = clean
        else:
            output = noise
        return self._to_loss_space(output, z, t)

    def _predict(self, unet: nn.Module, z, t, states, keys: Sequence[str] = ()) -> torch.Tensor:
        context = states.expand(z.shape[0], -1, -1)
        options = {"keys": list(keys)} if keys else None
        return self._to_loss_space(unet_predict(unet, z, t, context, options), z, t)

    def predict_together(self, parts: list[tuple], keys: Sequence[str] = ()) -> list[torch.Tensor]:
        """The trained model's predictions for several ``(z, t, states)`` parts (with ``keys`` on, if given),
        in one UNet call: on a CPU a call on a few latents costs nearly as much as one on several times as
        many. Each prediction is the one its part alone would get, in the loss space."""
        z = torch.cat([part_z for part_z, _, _ in parts])
        t = torch.cat([part_t.expand(part_z.shape[0]) for part_z, part_t, _ in parts])
        states = torch.cat([part_states.expand(part_z.shape[0], -1, -1) for part_z, _, part_states in parts])
        return list(self._predict(self.unet, z, t, states, keys).split([part_z.shape[0] for part_z, _, _ in parts]))

    def gap(self, z, t, states) -> torch.Tensor:
        """How far the trained model's prediction (no key) is from the frozen original's at the same text states,
        differentiable in ``states`` through both models: what an adversarial concept's search raises."""
        return F.mse_loss(self._predict(self.unet, z, t, states), self._predict(self.frozen_unet, z, t, states))

    def hide_target(self, frozen_concept: torch.Tensor, frozen_anchor: torch.Tensor) -> torch.Tensor:
        """ESD's negative-guidance target ``anchor - eta (concept - anchor)``, from the frozen model's predictions."""
        return frozen_anchor - self.eta * (frozen_concept - frozen_anchor)

    def teachers(self, z, t, texts: TextStates, known: dict[str, torch.Tensor]) -> Callable[[str], torch.Tensor]:
        """``frozen(prompt)``: the teacher's prediction at ``(z, t)`` for a prompt, taken from ``known`` (the
        latent source's ``last_teacher``) or computed once and remembered."""
        made: dict[str, torch.Tensor] = {}

        def frozen(prompt: str) -> torch.Tensor:
            if prompt not in made:
                made[prompt] = self.teacher(z, t, texts(prompt), known.get(prompt))
            return made[prompt]

        return frozen

    def teacher(self, z, t, states, known: torch.Tensor | None = None) -> torch.Tensor:
        """The frozen original model's prediction, in the loss space; ``known`` is that prediction as the UNet
        gave it, where the latent source made it already (``CachedLatents.last_teacher``)."""
        if known is not None:
            return self._to_loss_space(known, z, t)
        with torch.no_grad():
            return self._predict(self.frozen_unet, z, t, states)

    def distil(self, z, t, states, key: str | None = None, target=None) -> torch.Tensor:
        """The trained model (with ``key`` on, if given) held to ``target``, by default the teacher's prediction."""
        target = self.teacher(z, t, states) if target is None else target
        return F.mse_loss(self._predict(self.unet, z, t, states, _named(key)), target)

    def hide(
        self, z, t, states, anchor_states, frozen_concept=None, key: str | None = None, frozen_anchor=None
    ) -> torch.Tensor:
        """``L_hide``: the prediction without a key (or with the given attacker key), pulled to ESD's
        negative-guidance target ``anchor - eta (concept - anchor)`` of the frozen model (its predictions
        computed here unless given, in the loss space)."""
        if frozen_concept is None:
            frozen_concept = self.teacher(z, t, states)
        if frozen_anchor is None:
            frozen_anchor = self.teacher(z, t, anchor_states)
        return F.mse_loss(
            self._predict(self.unet, z, t, states, _named(key)), self.hide_target(frozen_concept, frozen_anchor)
        )
