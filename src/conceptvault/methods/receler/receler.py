"""Receler, erasing a concept with lightweight erasers trained against adversarial prompts (Huang et al.,
*Receler: Reliable Concept Erasing of Text-to-Image Diffusion Models via Lightweight Erasers*, 2023): another
erasure baseline hiding is compared with.

An eraser sits after every cross-attention layer and adds a change to the layer's output; the UNet's own weights
stay frozen while the erasers train. Each step draws ``z_t`` from the run's latent source for one of the
concept's prompts and then, in turn:

1. the adversary: a few learnable soft tokens, one set per concept (starting from the concept's own token
   states), appended to the prompt's text states and moved for ``adversary_steps`` Adam steps so that the
   eraser-equipped model's prediction comes back to the frozen model's prediction for the concept: the soft
   tokens look for a prompt that brings the concept back, which is what makes the erasing loss large;
2. the erasers: pulled to ESD's negative-guidance target ``anchor - eta (concept - anchor)`` of the frozen model,
   for the prompt as it is and, weighted by ``lambda_adversary``, for the prompt with the soft tokens.

The soft tokens and their optimiser live across steps (and in checkpoints), as the erasers do.

The erasers are linear. The paper's eraser puts a non-linearity between its down- and up-projection; a vault
carries UNet state-dict tensors only, and a non-linear map of a layer's output is no change of existing
weights. A linear low-rank eraser ``y -> y + y D U`` (``D``: width x rank, ``U``: rank x width, ``U`` starting
at zero) on the output ``y = W h + b`` of the layer's output projection ``to_out[0]`` folds exactly into it:
``W' = (I + (D U)^T) W`` and ``b' = (I + (D U)^T) b``, a rank-``rank`` change of ``to_out[0]`` (diffusers'
cross-attention adds no residual after ``to_out`` and rescales by 1, so the projection's output is the layer's
output). The vault holds the folded ``to_out.0`` weights and biases and nothing new.

The paper's concept-localised regularisation (the erasers' output held to zero outside the concept's attention
masks) is left out: like ESD, Receler here holds nothing to the original and takes no preserve prompts.
The result is a vault with no keys: the concept is gone for everyone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...backbone import is_sdxl
from ...concepts import Concept, HideResult, check_inputs
from ...driver import run_erasure
from ...objective import Objective, TextStates
from ...settings import LossSpace, SamplerSettings, option
from ...training import ErasureRun, RunState, concept_tokens, latent_source


@dataclass
class RecelerConfig(SamplerSettings):
    """Every setting of a Receler run; stored in the vault's manifest."""

    iterations: int = option(500, "Eraser updates.")
    lr: float = option(3e-4, "Adam learning rate of the erasers.")
    rank: int = option(8, "Rank of each eraser: the inner width of its down- and up-projection.")
    eta: float = option(1.0, "Negative-guidance strength of the erasing target.")
    loss_space: LossSpace = option(LossSpace.EPSILON, "Compare predictions as noise, clean latents or velocity.")
    adversary_tokens: int = option(4, "Soft tokens appended to the concept's prompts by the adversary (0: none).")
    adversary_steps: int = option(2, "Adversary updates before each eraser update.")
    adversary_lr: float = option(1e-3, "Adam learning rate of the adversary's soft tokens.")
    lambda_adversary: float = option(1.0, "Weight of the erasing loss on the prompt with the soft tokens.")
    checkpoint_every: int = option(0, "Steps between checkpoints (0: only at the end and on Ctrl-C).")

    positive = (*SamplerSettings.positive, "iterations", "lr", "rank")


class Eraser(nn.Module):
    """A linear low-rank change of a layer's output ``y -> y + y D U``; ``U`` starts at zero, so a new eraser
    changes nothing until it is trained."""

    def __init__(self, width: int, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        self.down = nn.Parameter(torch.randn(width, rank, generator=generator) / width**0.5)
        self.up = nn.Parameter(torch.zeros(rank, width))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + (y @ self.down.to(y.dtype)) @ self.up.to(y.dtype)

    @torch.no_grad()
    def fold_into(self, linear: nn.Linear) -> None:
        """Make ``linear`` compute what ``linear`` followed by this eraser computes (in float64, then cast)."""
        change = (self.down.double() @ self.up.double()).T.to(linear.weight.device)
        for parameter in (linear.weight, linear.bias):
            if parameter is not None:
                parameter.copy_((parameter.double() + change @ parameter.double()).to(parameter.dtype))


class Erasers(nn.Module):
    """One eraser after every cross-attention layer of ``unet``, on its output projection ``to_out[0]`` (forward
    hooks while :meth:`attached`); they belong to this module, never to the UNet's state_dict."""

    def __init__(self, unet: nn.Module, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        layers = [(name, module.to_out[0]) for name, module in unet.named_modules() if name.endswith("attn2")]
        self.layer_names = [name for name, _ in layers]
        self._projections = [linear for _, linear in layers]  # a plain list: the UNet's modules are not ours
        self.erasers = nn.ModuleList(Eraser(linear.out_features, rank, generator) for _, linear in layers)
        self.to(next(unet.parameters()).device)
        self._hooks: list = []

    def named_trained(self) -> dict[str, nn.Parameter]:
        """Every eraser weight, named after its layer (the names a checkpoint keeps them under)."""
        return {
            f"{layer}.eraser.{part}": parameter
            for layer, eraser in zip(self.layer_names, self.erasers, strict=True)
            for part, parameter in eraser.named_parameters()
        }

    @contextmanager
    def attached(self) -> Iterator[None]:
        """Inside: every cross-attention layer's output passes through its eraser. Afterwards: the UNet as it was."""
        for linear, eraser in zip(self._projections, self.erasers, strict=True):
            self._hooks.append(linear.register_forward_hook(lambda module, inputs, output, e=eraser: e(output)))
        try:
            yield
        finally:
            for hook in self._hooks:
                hook.remove()
            self._hooks.clear()

    def fold(self) -> dict[str, torch.Tensor]:
        """Fold every eraser into its layer's output projection, in place; returns the changed UNet tensors."""
        if self._hooks:
            raise RuntimeError("fold the erasers once they are detached, or they would apply twice")
        public = {}
        for layer, linear, eraser in zip(self.layer_names, self._projections, self.erasers, strict=True):
            eraser.fold_into(linear)
            for part, parameter in linear.named_parameters():
                public[f"{layer}.to_out.0.{part}"] = parameter.detach().cpu().clone()
        return public


def erase_receler(
    pipe,
    concepts: Sequence[Concept],
    config: RecelerConfig,
    *,
    checkpoint_dir: Path | str | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
) -> HideResult:
    """Train erasers after ``pipe.unet``'s cross-attention layers so that it no longer makes ``concepts``, fold
    them into the layers' output projections in place; returns the changed tensors.

    Args:
        pipe: a diffusers text-to-image pipeline.
        concepts: what to erase, each toward its anchor (default: the empty prompt).
        config: the run's settings (:class:`RecelerConfig`).
        checkpoint_dir / resume: as for :func:`conceptvault.hide`.
        progress: show a progress bar.
        on_step: called after every step as ``on_step(step, info)`` with the step's losses (the erasers are on
            while it runs).
    """
    run = _RecelerRun(pipe, check_inputs(pipe, concepts, ())[0], config, progress)
    return run_erasure(
        run, pipe.unet, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress, on_step=on_step
    )


def with_tokens(states: torch.Tensor, tokens: torch.Tensor, sdxl: bool = False) -> torch.Tensor:
    """A prompt's text states ``(1, L, d)`` with ``tokens`` ``(k, d)`` appended (before SDXL's packed row)."""
    tokens = tokens.to(states.dtype)[None]
    if sdxl:
        return torch.cat([states[:, :-1], tokens, states[:, -1:]], dim=1)
    return torch.cat([states, tokens], dim=1)


class _RecelerRun(ErasureRun):
    """One Receler run: the frozen model, the erasers and their optimiser, the adversary's soft tokens and theirs,
    the latent source."""

    method = "receler"

    def __init__(self, pipe, concepts: list[Concept], config: RecelerConfig, progress: bool):
        started = time.perf_counter()
        self.concepts, self.preserve, self.config = concepts, [], config
        self.begin(pipe, config)  # the frozen copy is taken before any eraser hooks the UNet
        self.sdxl = is_sdxl(pipe.unet)
        anchors = [a for c in concepts for a in c.every_anchor()]
        self.texts = TextStates(pipe, [*(p for c in concepts for p in c.prompts), *anchors, ""])
        self.erasers = Erasers(pipe.unet, config.rank, self.generator)
        self.trained = self.erasers.named_trained()
        self.optimiser = torch.optim.Adam(self.trained.values(), lr=config.lr)
        device = next(pipe.unet.parameters()).device
        self.adversaries = {
            c.name: nn.Parameter(concept_tokens(pipe, c.name, config.adversary_tokens).to(device))
            for c in concepts
            if config.adversary_tokens
        }
        self.adversary_optimiser = (
            torch.optim.Adam(self.adversaries.values(), lr=config.adversary_lr) if self.adversaries else None
        )
        self.objective = Objective(pipe.unet, self.frozen_unet, pipe.scheduler.config, config)
        cached = [p for c in concepts for p in c.prompts]
        _, self.source = latent_source(pipe, self.frozen_unet, self.texts, cached, config, self.generator, progress)
        self.state = RunState(total=config.iterations)
        self.at_step_boundary()
        self.state.setup_seconds = time.perf_counter() - started

    def every_parameter(self) -> list[nn.Parameter]:
        return [*self.trained.values(), *self.adversaries.values()]

    def step(self) -> dict:
        """The adversary's steps, then one eraser update on the prompt with and without its soft tokens."""
        started, texts = time.perf_counter(), self.texts
        self.at_step_boundary()
        concept = self.pick(self.concepts)
        prompt = self.pick(concept.prompts)
        z, t = self.source.draw(prompt, self.config.batch_size, self.generator)
        frozen, anchor = self.objective.teachers(z, t, texts, self.source.last_teacher), concept.anchor_of(prompt)
        adversary = self.adversaries.get(concept.name)
        losses = self._attack(z, t, texts(prompt), frozen(prompt), adversary) if adversary is not None else {}

        self.train_only(self.trained.values())
        erase = dict(frozen_concept=frozen(prompt), frozen_anchor=frozen(anchor))
        losses["L_erase"] = self.objective.hide(z, t, texts(prompt), texts(anchor), **erase)
        loss = losses["L_erase"]
        if adversary is not None:
            adversarial = with_tokens(texts(prompt), adversary.detach(), self.sdxl)
            losses["L_erase_adv"] = self.objective.hide(z, t, adversarial, texts(anchor), **erase)
            loss = loss + self.config.lambda_adversary * losses["L_erase_adv"]
        return self.update(loss, losses, started)

    def _attack(self, z, t, states, frozen_concept, adversary: nn.Parameter) -> dict[str, torch.Tensor]:
        """Move the soft tokens toward a prompt that brings the concept back: the eraser-equipped prediction
        with them pulled to the frozen model's prediction for the concept. Returns the last step's loss."""
        self.train_only([adversary])
        losses = {}
        for _ in range(self.config.adversary_steps):
            recovery = self.objective.distil(z, t, with_tokens(states, adversary, self.sdxl), target=frozen_concept)
            self.adversary_optimiser.zero_grad(set_to_none=True)
            recovery.backward()
            self.adversary_optimiser.step()
            losses["L_adversary"] = recovery
        return losses

    def attached(self):
        return self.erasers.attached()

    def checkpoint(self) -> tuple[dict, dict]:
        public = {
            **self.trained_state(),
            "adversaries": {name: p.detach().cpu().clone() for name, p in self.adversaries.items()},
            "adversary_optimiser": self.adversary_optimiser.state_dict() if self.adversary_optimiser else None,
        }
        return public, {}

    def load(self, public: dict, secret: dict) -> None:
        self.load_trained_state(public)
        if set(public["adversaries"]) != set(self.adversaries):
            raise KeyError("adversaries")  # the driver reports a checkpoint that does not fit
        with torch.no_grad():
            for name, tokens in self.adversaries.items():
                tokens.copy_(public["adversaries"][name])
        if self.adversary_optimiser:
            self.adversary_optimiser.load_state_dict(public["adversary_optimiser"])

    def result(self) -> HideResult:
        """The erasers folded into the UNet's output projections (they must be detached by now)."""
        return HideResult(
            public=self.erasers.fold(),
            keys={},
            stats=self.state.stats(self.state.step),
            base_fingerprint=self.base_fingerprint,
            concepts=self.concepts,
            config=self.config,
            method="receler",
        )
