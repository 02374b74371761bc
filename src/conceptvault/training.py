"""What every trained method's run shares: which UNet weights train and when, the frozen copy and its latents,
the run's records, peak memory and its progress bar, and where keys start."""

from __future__ import annotations

import copy
import importlib
import math
import resource
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from .backbone import encode_prompts, unet_fingerprint
from .concepts import HideResult as _HideResult  # under its own name here it would hide the moved-name warning
from .errors import ConceptVaultError
from .key import is_key_parameter
from .latents import CachedLatents, LatentSource, SampledLatents, Sampler
from .parallel import sharded
from .settings import TrainedLayers

MOVING_AVERAGE_DECAY = 0.9


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


def frozen_copy(unet: nn.Module) -> nn.Module:
    """The original model, as the teacher every target comes from: a copy that never trains."""
    return copy.deepcopy(unet).requires_grad_(False).eval()


def latent_source(pipe, frozen_unet, texts, cached: list[str], config, generator, progress):
    """The sampler of ``config`` (``sampler_steps``, ``guidance``) and the source of a run's ``z_t``: the frozen
    model's trajectories of the ``cached`` prompts, made once, or sampling with the model as it trains."""
    sampler = Sampler.for_pipeline(pipe, config.sampler_steps, config.guidance, texts(""))
    if config.latents == LatentSource.CACHE:
        source = cached_latents(frozen_unet, sampler, texts, cached, config.cache_trajectories, generator, progress)
    else:
        source = SampledLatents(pipe.unet, sampler, texts)
    return sampler, sharded(source)  # on several processes, each trains on its share of every batch


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


class TrainedRun:
    """What every trained method's run keeps alike, for the driver: the trained weights and their optimiser, the
    RNG as it was at the last step boundary and the run's records go into its checkpoint, and a checkpoint must
    match its settings, concepts, preserve prompts and base model to be resumed.

    A run sets ``config``, ``concepts``, ``preserve``, ``base_fingerprint``, ``generator``, ``trained``,
    ``optimiser`` and ``state``, and calls :meth:`at_step_boundary` when it is made and after every step;
    ``length_settings`` are the settings a resumed run may change (how long it trains).
    """

    length_settings: tuple[str, ...] = ()

    def begin(self, pipe, config) -> None:
        """What every run starts from: its settings, a generator seeded from them, the base model's fingerprint
        and the frozen copy of the original that every target comes from."""
        self.config = config
        self.generator = torch.Generator().manual_seed(config.seed)
        self.base_fingerprint = unet_fingerprint(pipe.unet)
        self.frozen_unet = frozen_copy(pipe.unet)

    def train_only(self, trainable) -> None:
        """Gradients for ``trainable`` alone among the run's parameters (its ``every_parameter()``)."""
        train_only(list(trainable), self.every_parameter())

    def pick(self, items: Sequence):
        """One of ``items``, drawn with the run's generator."""
        return items[randint(len(items), self.generator)]

    def at_step_boundary(self) -> None:
        self.rng_at_step_start = self.generator.get_state()

    def identity(self) -> dict:
        changeable = (*self.length_settings, "checkpoint_every")
        return {
            "config": {k: v for k, v in self.config.to_dict().items() if k not in changeable},
            "concepts": [asdict(c) for c in self.concepts],
            "preserve": self.preserve,
            "base_fingerprint": self.base_fingerprint,
        }

    def trained_state(self) -> dict:
        """The public half every run's checkpoint holds (a run adds its own parts)."""
        return {
            "run": self.state.to_dict(),
            "rng": self.rng_at_step_start,
            "trained": {name: p.detach().cpu().clone() for name, p in self.trained.items()},
            "optimiser": self.optimiser.state_dict(),
        }

    def load_trained_state(self, public: dict) -> None:
        """Put back what :meth:`trained_state` saved; a checkpoint whose tensors are not this run's is refused."""
        saved = public["trained"]
        wrong = [n for n, p in self.trained.items() if n not in saved or saved[n].shape != p.shape]
        if wrong or len(saved) != len(self.trained):
            named = wrong[0] if wrong else sorted(set(saved) - set(self.trained))[0]
            raise ConceptVaultError(
                f"the checkpoint's trained weights do not fit this run ({named!r} is missing, extra or "
                "mis-shaped); delete the checkpoint and run without resuming."
            )
        with torch.no_grad():
            for name, parameter in self.trained.items():
                parameter.copy_(saved[name])
        self.optimiser.load_state_dict(public["optimiser"])
        self.generator.set_state(public["rng"])
        self.at_step_boundary()
        for name, value in public["run"].items():
            setattr(self.state, name, value)


class ErasureRun(TrainedRun):
    """A trained eraser's run: its ``trained`` weights and their one ``optimiser``, ``iterations`` long, leaving
    those weights and no key. ``method`` names it (in checkpoints and in the vault)."""

    method: ClassVar[str]
    length_settings = ("iterations",)

    def update(self, loss: torch.Tensor, losses: dict[str, torch.Tensor], started: float) -> dict:
        """One optimiser step on ``loss``; records ``losses`` (timed from ``started``) and returns what the step
        measured, for the driver."""
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        self.state.step += 1
        self.at_step_boundary()
        self.state.record(losses, time.perf_counter() - started)
        return dict(self.state.latest, loss=float(loss.detach()))

    def attached(self) -> AbstractContextManager:
        """What the run puts on the model while it trains and takes off before :meth:`result` (nothing, for most)."""
        return nullcontext()

    def checkpoint(self) -> tuple[dict, dict]:
        return self.trained_state(), {}

    def load(self, public: dict, secret: dict) -> None:
        self.load_trained_state(public)

    def result(self) -> _HideResult:
        return _HideResult(
            public={name: p.detach().cpu().clone() for name, p in self.trained.items()},
            keys={},
            stats=self.state.stats(self.state.step),
            base_fingerprint=self.base_fingerprint,
            concepts=self.concepts,
            config=self.config,
            preserve=list(self.preserve),
            method=self.method,
        )


# where the names that lived here went: each still works, with a warning that gives its new home
_MOVED = {
    **dict.fromkeys(("Concept", "HideResult", "check_inputs"), "concepts"),
    **dict.fromkeys(("TextStates", "Objective"), "objective"),
    **dict.fromkeys(("LossSpace", "TrainedLayers", "option", "check_settings", "settings_from_dict"), "settings"),
}


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module 'conceptvault.training' has no attribute {name!r}")
    warnings.warn(
        f"conceptvault.training.{name} is deprecated: import it from conceptvault.{_MOVED[name]}.",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(f"conceptvault.{_MOVED[name]}"), name)
