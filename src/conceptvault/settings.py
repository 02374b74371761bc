"""What every method's settings share: options with help text, one check of every value (choices, whole numbers,
finite floats, signs), reading settings back from a manifest, and the choices every method offers."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import ClassVar

from .latents import LatentSource


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


def option(default, help: str):
    return field(default=default, metadata={"help": help})


class Settings:
    """The base of every method's settings dataclass: every value checked when made (``positive`` names those
    that must be above zero), written to a manifest as plain values and read back checked."""

    positive: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        check_settings(self, positive=self.positive)

    def to_dict(self) -> dict:
        return {name: getattr(value, "value", value) for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict):
        """Settings from a manifest; an unknown or ill-typed setting is a ValueError naming it."""
        return settings_from_dict(cls, values)


@dataclass
class SamplerSettings(Settings):
    """The settings every trained method shares: how its ``z_t`` are made, the batch, and the run's seed."""

    latents: LatentSource = option(
        LatentSource.SAMPLE, "Make z_t by sampling with the current model, or from a cache."
    )
    sampler_steps: int = option(50, "DDIM steps of the sampler that makes z_t.")
    guidance: float = option(3.0, "Classifier-free guidance of the sampler that makes z_t.")
    cache_trajectories: int = option(4, "Frozen-model trajectories cached per prompt (latents=cache).")
    batch_size: int = option(1, "Latents per training step.")
    seed: int = option(0, "Seed of every random choice in the run.")

    positive: ClassVar[tuple[str, ...]] = ("sampler_steps", "cache_trajectories", "batch_size")


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
