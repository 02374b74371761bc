"""What every way of hiding or erasing a concept shares: the concepts and the run's result, settings checks,
the prompts' text states, the objective's predictions in a common loss space, which UNet weights train,
the run's records and its progress bar.
"""

from __future__ import annotations

import math
import resource
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from .backbone import encode_prompts, unet_predict
from .errors import ConceptVaultError
from .key import Key, attached_keys, is_key_parameter
from .latents import CachedLatents, Sampler

MOVING_AVERAGE_DECAY = 0.9


class TrainedLayers(str, Enum):
    """Which UNet weights hiding changes."""

    XATTN = "xattn"  # cross-attention (attn2) only: objects, styles, people
    NOXATTN = "noxattn"  # everything except cross-attention: global concepts such as nudity
    ALL = "all"  # every UNet weight (sealed hiding: the knowledge itself must leave the public weights)


class LossSpace(str, Enum):
    """Where predictions are compared: as noise, as the clean latent, or as velocity (v = alpha eps - sigma x0)."""

    EPSILON = "epsilon"
    X0 = "x0"
    V = "v"


@dataclass
class Concept:
    """A concept to hide: its key is named ``name``, trained on ``prompts``, hidden toward ``anchor``, or toward
    a prompt's own anchor in ``anchors`` (a caption without the concept's words, for a concept that is an
    attribute: "a crimson heart" toward "a heart" moves only the colour)."""

    name: str
    prompts: list[str] = field(default_factory=list)
    anchor: str = ""
    anchors: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.name = self.name.strip()
        if not self.name:
            raise ValueError("a concept needs a name, such as 'star'; got an empty one.")
        self.prompts = [p.strip() for p in self.prompts if p.strip()]
        if self.name not in self.prompts:
            self.prompts.insert(0, self.name)

    def anchor_of(self, prompt: str) -> str:
        return self.anchors.get(prompt, self.anchor)

    def every_anchor(self) -> list[str]:
        return [self.anchor, *self.anchors.values()]

    @classmethod
    def parse(cls, text: str, anchor: str = "") -> Concept:
        """``"star|five-pointed star"``: phrasings separated by ``|``; the first one names the key."""
        phrasings = [p.strip() for p in text.split("|") if p.strip()]
        if not phrasings:
            raise ValueError(
                f"the concept '{text}' names no phrasing; write it as 'star' or 'star|five-pointed star'."
            )
        return cls(phrasings[0], phrasings, anchor)


def option(default, help: str):
    return field(default=default, metadata={"help": help})


def check_settings(config, positive: tuple[str, ...]) -> None:
    """Check every field of a settings dataclass: enum choices, whole numbers, finite floats, signs.

    Raises ValueError quoting the bad value, so no run starts (and no vault is written) from NaN,
    infinity, a negative weight or a fraction where a count belongs.
    """
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(f.default, Enum):
            setattr(config, f.name, _choice(type(f.default), value, f.name))
        elif isinstance(f.default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{f.name} must be true or false; got {value!r}.")
        elif isinstance(f.default, int):
            if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 2**63:
                raise ValueError(f"{f.name} must be a whole number below 2^63; got {value!r}.")
        elif isinstance(f.default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number; got {value!r}.")
            setattr(config, f.name, float(value))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if f.name in positive and not value > 0:
                raise ValueError(f"{f.name} must be positive; got {value!r}.")
            if value < 0:
                raise ValueError(f"{f.name} must not be negative; got {value!r}.")


def settings_from_dict(cls, values: dict):
    """``cls(**values)``, refusing names ``cls`` does not have."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown settings {', '.join(map(repr, unknown))} (made by a newer ConceptVault?)")
    return cls(**values)


def _choice(kind: type[Enum], value, name: str) -> Enum:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(c.value) for c in kind)
        raise ValueError(f"{name} must be one of {choices}; got {value!r}.") from None


@dataclass
class HideResult:
    """What a hiding run leaves: the public tensors, the keys, and what it was asked to do."""

    public: dict[str, torch.Tensor]  # the UNet tensors training changed, by state_dict name (CPU)
    keys: dict[str, Key]  # one key per concept, by concept name (still attached to the UNet)
    stats: dict  # losses, steps, seconds
    base_fingerprint: str  # unet_fingerprint of the model before hiding
    concepts: list[Concept]
    config: Any  # the method's settings: HideConfig, SealConfig, EsdConfig or UceConfig
    preserve: list[str] = field(default_factory=list)
    method: str = "kpop"  # the registered name of the method that made it


def check_inputs(pipe, concepts: Sequence[Concept], preserve: Sequence[str]) -> tuple[list[Concept], list[str]]:
    concepts = list(concepts)
    if not concepts:
        raise ConceptVaultError("nothing to hide: give at least one concept, such as --concept star.")
    names = [c.name for c in concepts]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConceptVaultError(f"the concept {repeated[0]!r} is given twice; give each concept once.")
    if attached_keys(pipe.unet):
        raise ConceptVaultError(
            f"this pipeline already has keys attached ({', '.join(attached_keys(pipe.unet))}); "
            "hide concepts on a freshly loaded base model."
        )
    preserve = [preserve] if isinstance(preserve, str) else list(preserve)
    return concepts, list(dict.fromkeys(p.strip() for p in preserve if p.strip()))


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


def trainable_parameters(unet: nn.Module, train: TrainedLayers) -> dict[str, nn.Parameter]:
    """The UNet weights hiding changes, by state_dict name (never the keys)."""
    chosen = {}
    for name, parameter in unet.named_parameters():
        if is_key_parameter(name):
            continue
        if train == TrainedLayers.ALL or (".attn2." in name) == (train == TrainedLayers.XATTN):
            chosen[name] = parameter
    return chosen


def train_only(trainable: list[nn.Parameter], everything: list[nn.Parameter]) -> None:
    """Gradients for this step's parameters only: the trained weights in model updates, the keys otherwise."""
    for parameter in everything:
        parameter.requires_grad_(False)
    for parameter in trainable:
        parameter.requires_grad_(True)


@contextmanager
def gradients_for(modules: Sequence[nn.Module], parameters=()) -> Iterator[None]:
    """Inside: the modules in eval mode, no gradients for any of their weights but ``parameters``. Afterwards
    every flag as it was (a weight added inside, such as a key, is left trainable)."""
    flags = {id(p): p.requires_grad for module in modules for p in module.parameters()}
    for module in modules:
        module.requires_grad_(False).eval()
    for parameter in parameters:
        parameter.requires_grad_(True)
    try:
        yield
    finally:
        for module in modules:
            for parameter in module.parameters():
                parameter.requires_grad_(flags.get(id(parameter), True))


def randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(high, (1,), generator=generator))


def _named(key: str | None) -> list[str]:
    return [key] if key else []


class Objective:
    """The methods' losses, every prediction converted to the loss space first; ``config`` gives ``eta`` and
    ``loss_space``."""

    def __init__(self, unet: nn.Module, frozen_unet: nn.Module, scheduler_config, config) -> None:
        self.unet, self.frozen_unet = unet, frozen_unet
        self.eta, self.loss_space = config.eta, config.loss_space
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


@dataclass
class RunState:
    """Where the run stands: step, timings and loss records (all of it goes into checkpoints)."""

    total: int
    step: int = 0
    seconds: float = 0.0
    setup_seconds: float = 0.0
    initial: dict = field(default_factory=dict)
    moving: dict = field(default_factory=dict)
    latest: dict = field(default_factory=dict)
    probe_before: dict | None = None
    probe_after: dict | None = None

    def record(self, losses: dict[str, torch.Tensor], seconds: float) -> None:
        self.seconds += seconds
        self.latest = {name: float(value.detach()) for name, value in losses.items()}
        for name, value in self.latest.items():
            self.initial.setdefault(name, value)
            previous = self.moving.get(name, value)
            self.moving[name] = MOVING_AVERAGE_DECAY * previous + (1 - MOVING_AVERAGE_DECAY) * value

    def describe(self) -> str:
        return " ".join(f"{name[2:]} {value:.2e}" for name, value in sorted(self.moving.items()))

    def to_dict(self) -> dict:
        return {
            name: getattr(self, name) for name in ("step", "seconds", "initial", "moving", "latest", "probe_before")
        }

    def stats(self, model_updates: int) -> dict:
        return {
            "steps": self.step,
            "model_updates": model_updates,
            "seconds": round(self.seconds, 3),
            "setup_seconds": round(self.setup_seconds, 3),
            "initial": self.initial,
            "final": self.moving,
            "probe": {"before": self.probe_before, "after": self.probe_after},
            **peak_memory(),
        }


def peak_memory() -> dict:
    """The process's peak resident memory so far, and the GPU's peak allocation where there is one (MiB)."""
    figures = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        figures["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return figures


@contextmanager
def progress_bar(enabled: bool, total: int, completed: int, label: str = "hiding") -> Iterator[Callable[..., None]]:
    """A Rich progress bar over the training steps that shows the moving-average losses: ``advance(losses)``
    after each step (``advance(steps=n)`` for n steps without losses)."""
    columns = (
        TextColumn(label),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[losses]}"),
    )
    with Progress(*columns, disable=not enabled) as bar:
        task = bar.add_task(label, total=total, completed=completed, losses="")
        yield lambda losses="", steps=1: bar.update(task, advance=steps, losses=losses)


def cached_latents(frozen_unet, sampler: Sampler, texts, prompts: list[str], trajectories: int, generator, progress):
    """The frozen model's trajectories of ``prompts`` (:class:`CachedLatents`), with a progress bar: on a CPU
    they take a fifth of a short hiding run."""
    with progress_bar(progress, len(dict.fromkeys(prompts)), 0, label="caching trajectories") as advance:
        return CachedLatents(frozen_unet, sampler, texts, prompts, trajectories, generator, lambda n: advance(steps=n))


def concept_tokens(pipe, name: str, m: int) -> torch.Tensor:
    """The concept's text states at its own token positions (no BOS/EOS), tiled to ``m`` tokens: where a key
    starts, the owner's and an attacker's alike."""
    states = encode_prompts(pipe, [name])[0].float().cpu()
    ids = pipe.tokenizer(name, truncation=True, max_length=pipe.tokenizer.model_max_length).input_ids
    tokens = states[1 : max(len(ids) - 1, 2)]
    return tokens.repeat(math.ceil(m / tokens.shape[0]), 1)[:m]
