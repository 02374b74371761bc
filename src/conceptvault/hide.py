"""Hiding: move a concept out of the public model and into its key (the KPOP objective, extended).

Without the key the trained UNet is pulled toward ESD's negative-guidance target; with the key it
is pulled back to the frozen original; preserve prompts are held to the original with and without
the key. Model updates (every ``k``-th step) and key-only updates alternate.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from .backbone import encode_prompts, unet_fingerprint
from .errors import ConceptVaultError
from .key import Key, Placement, attach_keys, attached_keys
from .latents import CachedLatents, LatentSource, SampledLatents, Sampler

CHECKPOINT_FILE = "checkpoint.pt"
_CHECKPOINT_FORMAT = 1
_MOVING_AVERAGE_DECAY = 0.9
_LOSSES = ("L_hide", "L_rec", "L_pres")


class TrainedLayers(str, Enum):
    """Which UNet weights hiding changes."""

    XATTN = "xattn"  # cross-attention (attn2) only: objects, styles, people
    NOXATTN = "noxattn"  # everything except cross-attention: global concepts such as nudity


class LossSpace(str, Enum):
    EPSILON = "epsilon"
    X0 = "x0"


class KeyInit(str, Enum):
    CONCEPT = "concept"  # the concept's own text states, tiled to m tokens
    RANDOM = "random"  # normal noise with the text states' standard deviation


@dataclass
class Concept:
    """A concept to hide: its key is named ``name``, trained on ``prompts``, hidden toward ``anchor``."""

    name: str
    prompts: list[str] = field(default_factory=list)
    anchor: str = ""

    def __post_init__(self):
        self.name = self.name.strip()
        if not self.name:
            raise ValueError("a concept needs a name, such as 'star'; got an empty one.")
        self.prompts = [p.strip() for p in self.prompts if p.strip()]
        if self.name not in self.prompts:
            self.prompts.insert(0, self.name)

    @classmethod
    def parse(cls, text: str, anchor: str = "") -> Concept:
        """``"star|five-pointed star"``: phrasings separated by ``|``; the first one names the key."""
        phrasings = [p.strip() for p in text.split("|") if p.strip()]
        if not phrasings:
            raise ValueError(f"the concept '{text}' names no phrasing; write it as 'star' or 'star|five-pointed star'.")
        return cls(phrasings[0], phrasings, anchor)


def _option(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class HideConfig:
    """Every setting of a hiding run; stored in the vault's manifest."""

    model_updates: int = _option(1000, "Number of model updates; training runs model_updates * k steps.")
    k: int = _option(2, "Update the model on every k-th step and only the keys on the other steps.")
    lr: float = _option(1e-5, "Adam learning rate of the UNet weights.")
    key_lr: float = _option(1e-5, "Adam learning rate of the keys.")
    lambda_hide: float = _option(1.0, "Weight of L_hide (no key, toward the negative-guidance target).")
    lambda_rec: float = _option(0.1, "Weight of L_rec (with the key, toward the original model) in model updates.")
    lambda_pres: float = _option(1.0, "Weight of the preservation terms on the preserve prompts.")
    eta: float = _option(1.0, "Negative-guidance strength of the hiding target.")
    train: TrainedLayers = _option(TrainedLayers.XATTN, "UNet weights to train: cross-attention only, or all but it.")
    loss_space: LossSpace = _option(
        LossSpace.EPSILON, "Compare predictions as noise (epsilon) or as clean latents (x0)."
    )
    key_init: KeyInit = _option(KeyInit.CONCEPT, "Start the key from the concept's text states or from noise.")
    m: int = _option(10, "Tokens per key.")
    placement: Placement = _option(Placement.MID, "Cross-attention layers that receive the key.")
    latents: LatentSource = _option(
        LatentSource.SAMPLE, "Make z_t by sampling with the current model, or from a cache."
    )
    sampler_steps: int = _option(50, "DDIM steps of the sampler that makes z_t.")
    guidance: float = _option(3.0, "Classifier-free guidance of the sampler that makes z_t.")
    cache_trajectories: int = _option(4, "Frozen-model trajectories cached per prompt (latents=cache).")
    batch_size: int = _option(1, "Latents per training step.")
    seed: int = _option(0, "Seed of every random choice in the run.")
    checkpoint_every: int = _option(50, "Training steps between checkpoints (0: only at the end and on Ctrl-C).")

    def __post_init__(self):
        for f in fields(self):
            if isinstance(f.default, Enum):
                setattr(self, f.name, _choice(type(f.default), getattr(self, f.name), f.name))
        positive = ("model_updates", "k", "lr", "key_lr", "m", "sampler_steps", "cache_trajectories", "batch_size")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)!r}.")
        for name in ("lambda_hide", "lambda_rec", "lambda_pres", "eta", "guidance", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative; got {getattr(self, name)!r}.")

    def to_dict(self) -> dict:
        return {name: value.value if isinstance(value, Enum) else value for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> HideConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            warnings.warn(f"ignoring unknown hiding settings {unknown} (made by a newer ConceptVault?)", stacklevel=2)
        return cls(**{name: value for name, value in values.items() if name in known})


def _choice(kind: type[Enum], value, name: str) -> Enum:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(c.value) for c in kind)
        raise ValueError(f"{name} must be one of {choices}; got {value!r}.") from None


@dataclass
class HideResult:
    public: dict[str, torch.Tensor]  # the UNet tensors training changed, by state_dict name (CPU)
    keys: dict[str, Key]  # one key per concept, by concept name (still attached to the UNet)
    stats: dict  # losses, steps, seconds
    base_fingerprint: str = ""  # unet_fingerprint of the model before hiding


def hide(
    pipe,
    concepts: Sequence[Concept],
    config: HideConfig,
    *,
    preserve: Sequence[str] = (),
    checkpoint_dir: Path | str | None = None,
    resume: bool = False,
    progress: bool = True,
    measure: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
) -> HideResult:
    """Train ``pipe.unet`` in place so that it hides ``concepts`` unless their keys are given.

    On return the UNet holds the public weights and the keys stay attached (switch them on with
    ``cross_attention_kwargs={"keys": [name]}``). Ctrl-C writes a checkpoint into ``checkpoint_dir``
    that ``resume=True`` continues bit-exactly; a checkpoint is also written every
    ``config.checkpoint_every`` steps and at the end. ``measure`` evaluates the losses on fixed
    frozen-model latents before and after training (``stats["probe"]``; costs a few sampler runs).
    ``on_step(step, info)`` is called after every step with the step's losses, ``model_step``,
    ``sampler_calls`` and ``seconds``.
    """
    concepts, preserve = _check_inputs(pipe, concepts, preserve)
    checkpoint = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    if resume and (checkpoint is None or not checkpoint.is_file()):
        raise ConceptVaultError(f"there is no checkpoint to resume from in '{checkpoint_dir}'; run without --resume.")
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    base_fingerprint = unet_fingerprint(pipe.unet)
    frozen_unet = copy.deepcopy(pipe.unet).requires_grad_(False).eval()
    texts = _TextStates(pipe, [*(p for c in concepts for p in c.prompts), *(c.anchor for c in concepts), *preserve, ""])

    keys = {c.name: Key(config.m, texts.width, init=_initial_tokens(pipe, c, config, generator)) for c in concepts}
    attach_keys(pipe.unet, keys, config.placement)
    trained = _trainable_parameters(pipe.unet, config.train)
    key_parameters = [p for key in keys.values() for p in key.parameters()]
    model_optimiser = torch.optim.Adam(trained.values(), lr=config.lr)
    key_optimiser = torch.optim.Adam(key_parameters, lr=config.key_lr)
    objective = _Objective(pipe.unet, frozen_unet, pipe.scheduler.config, config)
    sampler = Sampler.for_pipeline(pipe, config.sampler_steps, config.guidance, texts(""))
    if config.latents == LatentSource.CACHE:
        prompts = [*(p for c in concepts for p in c.prompts), *preserve]
        source = CachedLatents(frozen_unet, sampler, texts, prompts, config.cache_trajectories, generator)
    else:
        source = SampledLatents(pipe.unet, sampler, texts)
    probe = _Probe(frozen_unet, sampler, texts, concepts, preserve, config.seed) if measure else None

    identity = _run_identity(config, concepts, preserve, base_fingerprint)
    run = _RunState(total=config.model_updates * config.k)
    if resume:
        _load_checkpoint(checkpoint, identity, run, trained, keys, model_optimiser, key_optimiser, generator)
    elif probe is not None:
        run.probe_before = probe.measure(objective, keys)
    run.setup_seconds = time.perf_counter() - started

    def save_checkpoint(rng_state: torch.Tensor) -> None:
        if checkpoint is not None:
            _write_checkpoint(checkpoint, identity, run, rng_state, trained, keys, model_optimiser, key_optimiser)

    requires_grad = {name: p.requires_grad for name, p in pipe.unet.named_parameters()}
    pipe.unet.requires_grad_(False).eval()  # gradients only for this step's parameters (see _train_only)
    rng_at_step_start, step_done = generator.get_state(), True
    try:
        with _progress_bar(progress, run.total, run.step) as advance:
            for step in range(run.step, run.total):
                step_started = time.perf_counter()
                rng_at_step_start, step_done = generator.get_state(), False
                model_step = (step + 1) % config.k == 0
                concept = concepts[_randint(len(concepts), generator)]
                prompt = concept.prompts[_randint(len(concept.prompts), generator)]
                z, t = source.draw(prompt, config.batch_size, generator)
                sampler_calls = source.last_sampler_calls
                kept = preserve[_randint(len(preserve), generator)] if preserve and config.lambda_pres > 0 else None
                z_kept, t_kept = source.draw(kept, config.batch_size, generator) if kept else (None, None)
                sampler_calls += source.last_sampler_calls if kept else 0
                _train_only(
                    list(trained.values()) if model_step else key_parameters, [*trained.values(), *key_parameters]
                )

                L_hide, L_rec = objective.hide_and_recover(
                    z, t, texts(prompt), texts(concept.anchor), concept.name, model_step
                )
                L_pres, L_pres_key = objective.preserve(
                    z_kept, t_kept, texts(kept) if kept else None, concept.name, model_step
                )
                if model_step:
                    loss = (
                        config.lambda_hide * L_hide
                        + config.lambda_rec * L_rec
                        + config.lambda_pres * (L_pres + L_pres_key)
                    )
                else:
                    loss = L_rec + config.lambda_pres * L_pres_key

                model_optimiser.zero_grad(set_to_none=True)
                key_optimiser.zero_grad(set_to_none=True)
                loss.backward()
                (model_optimiser if model_step else key_optimiser).step()
                run.step, step_done = step + 1, True

                seconds = time.perf_counter() - step_started
                run.record(_measured(L_hide, L_rec, L_pres, L_pres_key, preserved=kept is not None), seconds)
                advance(run.describe())
                if config.checkpoint_every and run.step % config.checkpoint_every == 0:
                    save_checkpoint(generator.get_state())
                if on_step is not None:
                    on_step(
                        run.step,
                        dict(
                            run.latest,
                            step=run.step,
                            total=run.total,
                            model_step=model_step,
                            sampler_calls=sampler_calls,
                            seconds=seconds,
                        ),
                    )
    except KeyboardInterrupt:
        save_checkpoint(generator.get_state() if step_done else rng_at_step_start)
        where = (
            f"the checkpoint is in '{checkpoint.parent}'; run again with --resume to continue"
            if checkpoint
            else "no checkpoint directory was given, so the progress is lost"
        )
        raise ConceptVaultError(f"interrupted at step {run.step} of {run.total}; {where}.") from None
    finally:
        for name, p in pipe.unet.named_parameters():
            p.requires_grad_(requires_grad.get(name, True))

    save_checkpoint(generator.get_state())
    run.probe_after = probe.measure(objective, keys) if probe is not None else None
    public = {name: p.detach().cpu().clone() for name, p in trained.items()}
    return HideResult(public=public, keys=keys, stats=run.stats(config.k), base_fingerprint=base_fingerprint)


def _check_inputs(pipe, concepts: Sequence[Concept], preserve: Sequence[str]) -> tuple[list[Concept], list[str]]:
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


class _TextStates:
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


def _initial_tokens(pipe, concept: Concept, config: HideConfig, generator: torch.Generator) -> torch.Tensor:
    """The concept's text states at its own token positions (no BOS/EOS) tiled to m, or matching noise."""
    states = encode_prompts(pipe, [concept.name])[0].float().cpu()
    if config.key_init == KeyInit.RANDOM:
        return torch.randn(config.m, states.shape[-1], generator=generator) * states.std()
    ids = pipe.tokenizer(concept.name, truncation=True, max_length=pipe.tokenizer.model_max_length).input_ids
    tokens = states[1 : max(len(ids) - 1, 2)]
    return tokens.repeat(math.ceil(config.m / tokens.shape[0]), 1)[: config.m]


def _trainable_parameters(unet: nn.Module, train: TrainedLayers) -> dict[str, nn.Parameter]:
    """The UNet weights hiding changes, by state_dict name (never the keys)."""
    chosen = {}
    for name, parameter in unet.named_parameters():
        if ".processor." in name:
            continue
        if (".attn2." in name) == (train == TrainedLayers.XATTN):
            chosen[name] = parameter
    return chosen


def _train_only(trainable: list[nn.Parameter], everything: list[nn.Parameter]) -> None:
    """Gradients for this step's parameters only: the trained weights in model updates, the keys otherwise."""
    for parameter in everything:
        parameter.requires_grad_(False)
    for parameter in trainable:
        parameter.requires_grad_(True)


def _measured(L_hide, L_rec, L_pres, L_pres_key, *, preserved: bool) -> dict[str, torch.Tensor]:
    """The losses this step computed, by name (key-only steps skip L_hide and L_pres)."""
    losses = {"L_hide": L_hide, "L_rec": L_rec}
    if preserved:
        losses.update(L_pres=L_pres, L_pres_key=L_pres_key)
    return {name: value for name, value in losses.items() if value is not None}


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(high, (1,), generator=generator))


class _Objective:
    """The method's losses, with every prediction converted to the loss space (epsilon or x0) first."""

    def __init__(self, unet: nn.Module, frozen_unet: nn.Module, scheduler_config, config: HideConfig):
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
        return eps if self.loss_space == LossSpace.EPSILON else (z - sigma * eps) / alpha

    def _predict(self, unet: nn.Module, z, t, states, key: str | None = None) -> torch.Tensor:
        context = states.expand(z.shape[0], -1, -1)
        options = {"keys": [key]} if key else None
        return self._to_loss_space(unet(z, t, context, cross_attention_kwargs=options).sample, z, t)

    def hide_and_recover(self, z, t, states, anchor_states, key: str, with_hide: bool):
        """``L_hide`` (no key, toward the negative-guidance target; None unless asked) and ``L_rec`` (with the key)."""
        with torch.no_grad():
            frozen_concept = self._predict(self.frozen_unet, z, t, states)
            frozen_anchor = self._predict(self.frozen_unet, z, t, anchor_states) if with_hide else None
        L_rec = F.mse_loss(self._predict(self.unet, z, t, states, key), frozen_concept)
        if not with_hide:
            return None, L_rec
        hide_target = frozen_anchor - self.eta * (frozen_concept - frozen_anchor)
        return F.mse_loss(self._predict(self.unet, z, t, states), hide_target), L_rec

    def preserve(self, z, t, states, key: str, without_key: bool):
        """The preservation losses without the key (None unless asked) and with it; zeros when nothing is preserved."""
        if states is None:
            zero = torch.zeros((), device=self.alphas_cumprod.device)
            return zero, zero
        with torch.no_grad():
            frozen = self._predict(self.frozen_unet, z, t, states)
        with_key = F.mse_loss(self._predict(self.unet, z, t, states, key), frozen)
        plain = F.mse_loss(self._predict(self.unet, z, t, states), frozen) if without_key else None
        return plain, with_key


class _Probe:
    """Fixed frozen-model latents per concept and preserve prompt, to measure the losses before and after."""

    def __init__(self, frozen_unet, sampler: Sampler, texts: _TextStates, concepts, preserve, seed: int):
        generator = torch.Generator().manual_seed(seed + 1)
        steps = sorted({min(sampler.steps - 1, int(sampler.steps * f)) for f in (0.25, 0.5, 0.75)})
        self.texts, self.concepts, self.preserve = texts, concepts, preserve
        self.latents: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for prompt in [*(c.name for c in concepts), *preserve]:
            states = texts(prompt)
            visited = sampler.trajectory(frozen_unet, states, sampler.noise(1, generator, like=states), stop=steps[-1])
            z = torch.cat([visited[i] for i in steps])
            self.latents[prompt] = (z, sampler.timesteps[steps].to(z.device))

    @torch.no_grad()
    def measure(self, objective: _Objective, keys: dict[str, Key]) -> dict[str, float]:
        sums: dict[str, list[float]] = {name: [] for name in ("L_hide", "L_rec", "L_pres", "L_pres_key")}
        for concept in self.concepts:
            z, t = self.latents[concept.name]
            texts = self.texts
            L_hide, L_rec = objective.hide_and_recover(
                z, t, texts(concept.name), texts(concept.anchor), concept.name, True
            )
            sums["L_hide"].append(float(L_hide))
            sums["L_rec"].append(float(L_rec))
            for prompt in self.preserve:
                z, t = self.latents[prompt]
                L_pres, L_pres_key = objective.preserve(z, t, texts(prompt), concept.name, True)
                sums["L_pres"].append(float(L_pres))
                sums["L_pres_key"].append(float(L_pres_key))
        return {name: sum(values) / len(values) for name, values in sums.items() if values}


@dataclass
class _RunState:
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
            self.moving[name] = _MOVING_AVERAGE_DECAY * previous + (1 - _MOVING_AVERAGE_DECAY) * value

    def describe(self) -> str:
        return " ".join(f"{name[2:]} {value:.2e}" for name, value in sorted(self.moving.items()))

    def to_dict(self) -> dict:
        return {
            name: getattr(self, name) for name in ("step", "seconds", "initial", "moving", "latest", "probe_before")
        }

    def stats(self, k: int) -> dict:
        return {
            "steps": self.step,
            "model_updates": self.step // k,
            "seconds": round(self.seconds, 3),
            "setup_seconds": round(self.setup_seconds, 3),
            "initial": self.initial,
            "final": self.moving,
            "probe": {"before": self.probe_before, "after": self.probe_after},
        }


def _run_identity(config: HideConfig, concepts: list[Concept], preserve: list[str], base_fingerprint: str) -> dict:
    """What a checkpoint must match to be resumed (the length of the run and checkpoint spacing may change)."""
    settings = {k: v for k, v in config.to_dict().items() if k not in ("model_updates", "checkpoint_every")}
    return {
        "config": settings,
        "concepts": [asdict(c) for c in concepts],
        "preserve": preserve,
        "base_fingerprint": base_fingerprint,
    }


def _write_checkpoint(path: Path, identity, run: _RunState, rng_state, trained, keys, model_optimiser, key_optimiser):
    """Everything the run needs to continue bit-exactly, written atomically (temporary file, then rename)."""
    state = {
        "format": _CHECKPOINT_FORMAT,
        "identity": identity,
        "run": run.to_dict(),
        "rng": rng_state,
        "trained": {name: p.detach().cpu().clone() for name, p in trained.items()},
        "keys": {
            name: {k: v.detach().cpu().clone() for k, v in key.state_dict().items()} for name, key in keys.items()
        },
        "model_optimiser": model_optimiser.state_dict(),
        "key_optimiser": key_optimiser.state_dict(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    torch.save(state, temporary)
    os.replace(temporary, path)


def _load_checkpoint(path: Path, identity, run: _RunState, trained, keys, model_optimiser, key_optimiser, generator):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file: say which and how to start over
        raise ConceptVaultError(
            f"the checkpoint '{path}' cannot be read ({error}); delete it and run without --resume."
        ) from None
    if state.get("format") != _CHECKPOINT_FORMAT:
        raise ConceptVaultError(f"the checkpoint '{path}' has an unknown format; delete it and run without --resume.")
    _check_identity(path, state["identity"], identity)
    saved = state["run"]
    if saved["step"] > run.total:
        raise ConceptVaultError(
            f"the checkpoint '{path}' is at step {saved['step']}, beyond the {run.total} steps asked for; "
            "raise --model-updates or run without --resume."
        )
    with torch.no_grad():
        for name, parameter in trained.items():
            parameter.copy_(state["trained"][name])
        for name, key in keys.items():
            key.load_state_dict(state["keys"][name])
    model_optimiser.load_state_dict(state["model_optimiser"])
    key_optimiser.load_state_dict(state["key_optimiser"])
    generator.set_state(state["rng"])
    for name, value in saved.items():
        setattr(run, name, value)


def _check_identity(path: Path, saved: dict, current: dict) -> None:
    for part in ("base_fingerprint", "concepts", "preserve"):
        if saved[part] != current[part]:
            raise ConceptVaultError(
                f"the checkpoint '{path}' was made with other {part.replace('_', ' ')}; "
                "resume with the same model, concepts and preserve prompts, or run without --resume."
            )
    for name, value in current["config"].items():
        if saved["config"].get(name) != value:
            raise ConceptVaultError(
                f"the checkpoint '{path}' was made with {name}={saved['config'].get(name)!r}, not {value!r}; "
                "resume with the same settings or run without --resume."
            )


@contextmanager
def _progress_bar(enabled: bool, total: int, completed: int) -> Iterator[Callable[[str], None]]:
    """A Rich progress bar over the training steps that shows the moving-average losses."""
    columns = (
        TextColumn("hiding"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[losses]}"),
    )
    with Progress(*columns, disable=not enabled) as bar:
        task = bar.add_task("hiding", total=total, completed=completed, losses="")
        yield lambda losses: bar.update(task, advance=1, losses=losses)
