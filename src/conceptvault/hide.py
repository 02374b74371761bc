"""Hiding: move a concept out of the public model and into its key (the KPOP objective, extended).

Without the key the trained UNet is pulled toward ESD's negative-guidance target; with the key it
is pulled back to the frozen original; preserve prompts are held to the original with and without
the key. Model updates (every ``k``-th step) and key-only updates alternate.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import resource
import time
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

from .backbone import encode_prompts, unet_fingerprint, unet_predict
from .checkpoint import CHECKPOINT_FILE, read_checkpoint, write_checkpoint
from .errors import ConceptVaultError
from .key import Key, Placement, attach_keys, attached_keys, detach_keys, is_key_parameter
from .latents import CachedLatents, LatentSource, SampledLatents, Sampler
from .manifest import Method

_MOVING_AVERAGE_DECAY = 0.9


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
            raise ValueError(
                f"the concept '{text}' names no phrasing; write it as 'star' or 'star|five-pointed star'."
            )
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
        LossSpace.EPSILON, "Compare predictions as noise (epsilon), clean latents (x0) or velocity (v)."
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
    key_updates: int = _option(0, "Key-only updates after the model updates, against the final public weights.")
    adversary_every: int = _option(
        0,
        "Hardened hiding: every this many model updates, learn an attacker key against the current public "
        "weights, and train the weights to defeat it (0: off).",
    )
    adversary_steps: int = _option(20, "Steps of each inner attacker-key inversion (hardened hiding).")
    lambda_adversary: float = _option(1.0, "Weight of defeating the attacker key (hardened hiding).")
    checkpoint_every: int = _option(50, "Training steps between checkpoints (0: only at the end and on Ctrl-C).")

    def __post_init__(self):
        check_settings(
            self,
            positive=("model_updates", "k", "lr", "key_lr", "m", "sampler_steps", "cache_trajectories", "batch_size"),
        )

    def to_dict(self) -> dict:
        return {name: value.value if isinstance(value, Enum) else value for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> HideConfig:
        """Settings from a manifest; an unknown or ill-typed setting is a ValueError naming it."""
        return settings_from_dict(cls, values)


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
    config: HideConfig
    preserve: list[str] = field(default_factory=list)
    method: Method = Method.KPOP


def hide(
    pipe,
    concepts: Sequence[Concept],
    config: HideConfig,
    *,
    preserve: Sequence[str] = (),
    checkpoint_dir: Path | str | None = None,
    resume: bool = False,
    passphrase: str | None = None,
    progress: bool = True,
    measure: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
) -> HideResult:
    """Train ``pipe.unet`` in place so that it hides ``concepts`` unless their keys are given.

    Args:
        pipe: a diffusers text-to-image pipeline, as :func:`conceptvault.load_pipeline` returns it.
        concepts: what to hide; each gets a key named after it.
        config: every setting of the run (:class:`HideConfig`).
        preserve: prompts held to the original model, with and without the keys.
        checkpoint_dir: where checkpoints go (every ``config.checkpoint_every`` steps, at the end, and on
            Ctrl-C or SIGTERM); ``resume=True`` continues the run found there bit-exactly.
        passphrase: protects the keys inside checkpoints (a protected run resumes only with it).
        progress: show a progress bar.
        measure: evaluate the losses on fixed frozen-model latents before and after (``stats["probe"]``).
        on_step: called after every step as ``on_step(step, info)`` with the step's losses,
            ``model_step``, ``sampler_calls`` and ``seconds``.

    Returns:
        A :class:`HideResult`. On return the UNet holds the public weights and the keys stay attached
        (switch them on with ``cross_attention_kwargs={"keys": [name]}``).
    """
    run = _HidingRun(pipe, *_check_inputs(pipe, concepts, preserve), config)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume:
        if folder is None or not (folder / CHECKPOINT_FILE).is_file():
            raise ConceptVaultError(f"there is no checkpoint to resume from in '{folder}'; run without --resume.")
        run.load(*read_checkpoint(folder, run.identity(passphrase), passphrase))
    elif measure:
        run.measure("before")
    try:
        with run.training(), _progress_bar(progress, run.state.total, run.state.step) as advance:
            while run.state.step < run.state.total:
                info = run.step()
                advance(run.state.describe())
                if folder and config.checkpoint_every and run.state.step % config.checkpoint_every == 0:
                    write_checkpoint(folder, *run.checkpoint(passphrase), passphrase)
                if on_step is not None:
                    on_step(run.state.step, info)
    except KeyboardInterrupt:
        where = "no checkpoint directory was given, so the progress is lost"
        if folder:
            write_checkpoint(folder, *run.checkpoint(passphrase), passphrase)
            where = f"the checkpoint is in '{folder}'; run again with --resume to continue"
        raise ConceptVaultError(f"interrupted at step {run.state.step} of {run.state.total}; {where}.") from None
    if folder:
        write_checkpoint(folder, *run.checkpoint(passphrase), passphrase)
    if measure:
        run.measure("after")
    return run.result()


class _HidingRun:
    """One hiding run: the frozen teacher, the trained weights, the keys, their optimisers and the data.

    ``step()`` is one training step; model updates (every ``k``-th step) and key-only updates alternate,
    then ``key_updates`` key-only steps follow against the final public weights.
    """

    def __init__(self, pipe, concepts: list[Concept], preserve: list[str], config: HideConfig):
        started = time.perf_counter()
        self.pipe, self.concepts, self.preserve, self.config = pipe, concepts, preserve, config
        self.generator = torch.Generator().manual_seed(config.seed)
        self.base_fingerprint = unet_fingerprint(pipe.unet)
        self.frozen_unet = copy.deepcopy(pipe.unet).requires_grad_(False).eval()
        prompts = [*(p for c in concepts for p in c.prompts), *(c.anchor for c in concepts), *preserve, ""]
        self.texts = _TextStates(pipe, prompts)
        self.keys = {
            c.name: Key(config.m, self.texts.width, init=_initial_tokens(pipe, c, config, self.generator))
            for c in concepts
        }
        # hardened hiding: one attacker key per concept, learned against the public weights as they train
        attacker_init = dataclasses.replace(config, key_init=KeyInit.CONCEPT)
        self.adversaries = {
            _adversary(c.name): Key(config.m, self.texts.width, init=_initial_tokens(pipe, c, attacker_init, None))
            for c in concepts
            if config.adversary_every
        }
        attach_keys(pipe.unet, {**self.keys, **self.adversaries}, config.placement)
        self.trained = _trainable_parameters(pipe.unet, config.train)
        self.key_parameters = [p for key in self.keys.values() for p in key.parameters()]
        self.adversary_parameters = [p for key in self.adversaries.values() for p in key.parameters()]
        self.model_optimiser = torch.optim.Adam(self.trained.values(), lr=config.lr)
        self.key_optimiser = torch.optim.Adam(self.key_parameters, lr=config.key_lr)
        self.adversary_optimiser = (
            torch.optim.Adam(self.adversary_parameters, lr=config.key_lr) if self.adversaries else None
        )
        self.objective = _Objective(pipe.unet, self.frozen_unet, pipe.scheduler.config, config)
        sampler = Sampler.for_pipeline(pipe, config.sampler_steps, config.guidance, self.texts(""))
        if config.latents == LatentSource.CACHE:
            cached = [*(p for c in concepts for p in c.prompts), *preserve]
            self.source = CachedLatents(
                self.frozen_unet, sampler, self.texts, cached, config.cache_trajectories, self.generator
            )
        else:
            self.source = SampledLatents(pipe.unet, sampler, self.texts)
        self.sampler = sampler
        self._probe: _Probe | None = None  # made on first use: it costs a few sampler runs
        self.state = _RunState(total=config.model_updates * config.k + config.key_updates)
        self.rng_at_step_start = self.generator.get_state()
        self.state.setup_seconds = time.perf_counter() - started

    def is_model_step(self, step: int) -> bool:
        return step < self.config.model_updates * self.config.k and (step + 1) % self.config.k == 0

    def step(self) -> dict:
        """One training step: draw latents, compute the losses, update the model or the keys."""
        started, config, step = time.perf_counter(), self.config, self.state.step
        self.rng_at_step_start = self.generator.get_state()
        model_step = self.is_model_step(step)
        concept = self.concepts[_randint(len(self.concepts), self.generator)]
        prompt = concept.prompts[_randint(len(concept.prompts), self.generator)]
        z, t = self.source.draw(prompt, config.batch_size, self.generator)
        sampler_calls = self.source.last_sampler_calls
        kept = (
            self.preserve[_randint(len(self.preserve), self.generator)]
            if self.preserve and config.lambda_pres > 0
            else None
        )
        z_kept, t_kept = self.source.draw(kept, config.batch_size, self.generator) if kept else (None, None)
        sampler_calls += self.source.last_sampler_calls if kept else 0
        if model_step and self.adversaries and (step // config.k) % config.adversary_every == 0:
            self._invert_adversaries()
        _train_only(list(self.trained.values()) if model_step else self.key_parameters, self._every_parameter())

        texts = self.texts
        L_hide, L_rec = self.objective.hide_and_recover(
            z, t, texts(prompt), texts(concept.anchor), concept.name, model_step
        )
        L_pres, L_pres_key = self.objective.preserve(
            z_kept, t_kept, texts(kept) if kept else None, concept.name, model_step
        )
        if model_step:
            loss = config.lambda_hide * L_hide + config.lambda_rec * L_rec + config.lambda_pres * (L_pres + L_pres_key)
            if self.adversaries:  # the attacker key must not bring the concept back either
                adversary = _adversary(concept.name)
                loss = loss + config.lambda_adversary * self.objective.hide(
                    z, t, texts(prompt), texts(concept.anchor), key=adversary
                )
        else:
            loss = L_rec + config.lambda_pres * L_pres_key
        if not torch.isfinite(loss):
            raise ConceptVaultError(
                f"the training loss became {float(loss)} at step {step + 1}; nothing was written. "
                "Lower --lr or --key-lr and run again."
            )
        self.model_optimiser.zero_grad(set_to_none=True)
        self.key_optimiser.zero_grad(set_to_none=True)
        loss.backward()
        (self.model_optimiser if model_step else self.key_optimiser).step()
        self.state.step = step + 1
        self.rng_at_step_start = self.generator.get_state()
        seconds = time.perf_counter() - started
        self.state.record(_measured(L_hide, L_rec, L_pres, L_pres_key, preserved=kept is not None), seconds)
        return dict(
            self.state.latest,
            step=self.state.step,
            total=self.state.total,
            model_step=model_step,
            sampler_calls=sampler_calls,
            seconds=seconds,
        )

    def _every_parameter(self) -> list[nn.Parameter]:
        return [*self.trained.values(), *self.key_parameters, *self.adversary_parameters]

    def _invert_adversaries(self) -> None:
        """A short key inversion against the current public weights: each attacker key learns to make the
        concept as the original model does (the owner's teacher: a stronger attacker than pictures make)."""
        _train_only(self.adversary_parameters, self._every_parameter())
        for _ in range(self.config.adversary_steps):
            concept = self.concepts[_randint(len(self.concepts), self.generator)]
            prompt = concept.prompts[_randint(len(concept.prompts), self.generator)]
            z, t = self.source.draw(prompt, self.config.batch_size, self.generator)
            _, loss = self.objective.hide_and_recover(
                z, t, self.texts(prompt), self.texts(concept.anchor), _adversary(concept.name), False
            )
            self.adversary_optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.adversary_optimiser.step()

    @contextmanager
    def training(self) -> Iterator[None]:
        """Gradients only for each step's own parameters (see ``_train_only``); restored afterwards."""
        unet = self.pipe.unet
        requires_grad = {name: p.requires_grad for name, p in unet.named_parameters()}
        unet.requires_grad_(False).eval()
        try:
            yield
        finally:
            for name, p in unet.named_parameters():
                p.requires_grad_(requires_grad.get(name, True))

    def measure(self, moment: str) -> None:
        """Record the losses on fixed frozen-model latents as ``stats["probe"][moment]``."""
        if self._probe is None:
            self._probe = _Probe(
                self.frozen_unet, self.sampler, self.texts, self.concepts, self.preserve, self.config.seed
            )
        setattr(self.state, f"probe_{moment}", self._probe.measure(self.objective, self.keys))

    def identity(self, passphrase: str | None) -> dict:
        """What a checkpoint must match to be resumed (the length of the run and checkpoint spacing may change)."""
        settings = {
            k: v
            for k, v in self.config.to_dict().items()
            if k not in ("model_updates", "key_updates", "checkpoint_every")
        }
        return {
            "config": settings,
            "concepts": [asdict(c) for c in self.concepts],
            "preserve": self.preserve,
            "base_fingerprint": self.base_fingerprint,
            "protected": passphrase is not None,
        }

    def checkpoint(self, passphrase: str | None) -> tuple[dict, dict]:
        """The public and the secret half of a checkpoint; the RNG as it was when the last step began or ended."""
        public = {
            "identity": self.identity(passphrase),
            "run": self.state.to_dict(),
            "rng": self.rng_at_step_start,
            "trained": {name: p.detach().cpu().clone() for name, p in self.trained.items()},
            "model_optimiser": self.model_optimiser.state_dict(),
            "adversaries": {name: key.state_dict() for name, key in self.adversaries.items()},
            "adversary_optimiser": self.adversary_optimiser.state_dict() if self.adversary_optimiser else None,
        }
        secret = {
            "keys": {
                name: {k: v.detach().cpu().clone() for k, v in key.state_dict().items()}
                for name, key in self.keys.items()
            },
            "key_optimiser": self.key_optimiser.state_dict(),
        }
        return public, secret

    def load(self, public: dict, secret: dict) -> None:
        saved = public["run"]
        if saved["step"] > self.state.total:
            raise ConceptVaultError(
                f"the checkpoint is at step {saved['step']}, beyond the {self.state.total} steps asked for; "
                "raise --model-updates or run without --resume."
            )
        with torch.no_grad():
            for name, parameter in self.trained.items():
                parameter.copy_(public["trained"][name])
            for name, key in self.keys.items():
                key.load_state_dict(secret["keys"][name])
        self.model_optimiser.load_state_dict(public["model_optimiser"])
        for name, key in self.adversaries.items():
            key.load_state_dict(public["adversaries"][name])
        if self.adversary_optimiser:
            self.adversary_optimiser.load_state_dict(public["adversary_optimiser"])
        self.key_optimiser.load_state_dict(secret["key_optimiser"])
        self.generator.set_state(public["rng"])
        self.rng_at_step_start = self.generator.get_state()
        for name, value in saved.items():
            setattr(self.state, name, value)

    def result(self) -> HideResult:
        public = {name: p.detach().cpu().clone() for name, p in self.trained.items()}
        if not all(torch.isfinite(t).all() for t in public.values()):
            raise ConceptVaultError("training left non-finite weights; nothing was written. Lower --lr and run again.")
        if self.adversaries:  # the attacker keys were a training device only: keep the real keys attached
            detach_keys(self.pipe.unet)
            attach_keys(self.pipe.unet, self.keys, self.config.placement)
        return HideResult(
            public=public,
            keys=self.keys,
            stats=self.state.stats(self.config.k),
            base_fingerprint=self.base_fingerprint,
            concepts=self.concepts,
            config=self.config,
            preserve=self.preserve,
        )


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


def _adversary(concept: str) -> str:
    """The name an attacker key of hardened hiding is attached under (never saved)."""
    return f"~adversary-{concept}"


def _trainable_parameters(unet: nn.Module, train: TrainedLayers) -> dict[str, nn.Parameter]:
    """The UNet weights hiding changes, by state_dict name (never the keys)."""
    chosen = {}
    for name, parameter in unet.named_parameters():
        if is_key_parameter(name):
            continue
        if train == TrainedLayers.ALL or (".attn2." in name) == (train == TrainedLayers.XATTN):
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
        if self.loss_space == LossSpace.EPSILON:
            return eps
        x0 = (z - sigma * eps) / alpha
        return x0 if self.loss_space == LossSpace.X0 else alpha * eps - sigma * x0

    def _predict(self, unet: nn.Module, z, t, states, key: str | None = None) -> torch.Tensor:
        context = states.expand(z.shape[0], -1, -1)
        options = {"keys": [key]} if key else None
        return self._to_loss_space(unet_predict(unet, z, t, context, options), z, t)

    def hide_and_recover(self, z, t, states, anchor_states, key: str, with_hide: bool):
        """``L_hide`` (no key, toward the negative-guidance target; None unless asked) and ``L_rec`` (with the key)."""
        with torch.no_grad():
            frozen_concept = self._predict(self.frozen_unet, z, t, states)
        L_rec = F.mse_loss(self._predict(self.unet, z, t, states, key), frozen_concept)
        return (self.hide(z, t, states, anchor_states, frozen_concept) if with_hide else None), L_rec

    def teacher(self, z, t, states) -> torch.Tensor:
        """The frozen original model's prediction, in the loss space."""
        with torch.no_grad():
            return self._predict(self.frozen_unet, z, t, states)

    def distil(self, z, t, states, key: str | None = None, target=None) -> torch.Tensor:
        """The trained model (with ``key`` on, if given) held to ``target``, by default the teacher's prediction."""
        target = self.teacher(z, t, states) if target is None else target
        return F.mse_loss(self._predict(self.unet, z, t, states, key), target)

    def hide(self, z, t, states, anchor_states, frozen_concept=None, key: str | None = None) -> torch.Tensor:
        """``L_hide``: the prediction without a key (or with the given attacker key), pulled to ESD's
        negative-guidance target ``anchor - eta (concept - anchor)`` of the frozen model."""
        with torch.no_grad():
            if frozen_concept is None:
                frozen_concept = self._predict(self.frozen_unet, z, t, states)
            frozen_anchor = self._predict(self.frozen_unet, z, t, anchor_states)
        hide_target = frozen_anchor - self.eta * (frozen_concept - frozen_anchor)
        return F.mse_loss(self._predict(self.unet, z, t, states, key), hide_target)

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
            **peak_memory(),
        }


def peak_memory() -> dict:
    """The process's peak resident memory so far, and the GPU's peak allocation where there is one (MiB)."""
    figures = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available():
        figures["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return figures


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
