"""The methods of making a vault, by name: the ground floor every other layer may read.

Each method lives in its own package under ``conceptvault.methods`` and registers itself there, once, with
:func:`register_method`: its name, its settings class, its run, whether it leaves keys, and its default
settings per model family. The manifest checks a vault's settings here, the command line builds its
``--method`` choices here, and the demo, ``compare`` and ``attack`` look methods up here, so a new method
touches its own folder and nothing else. This module imports no method: on the first lookup it imports
every package under ``conceptvault.methods`` (each registers itself as it is imported).
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from .errors import ConceptVaultError

METHODS_PACKAGE = "conceptvault.methods"


class KeyKind(str, Enum):
    """What a method's keys are."""

    NONE = "none"  # erasure: the concept is gone for everyone
    PROMPT = "prompt"  # tokens (and perhaps projection changes) fed to cross-attention at a placement
    DELTA = "delta"  # a weight change: public + key is the original model


@dataclass(frozen=True)
class MethodSpec:
    """One method of making a vault.

    ``run(pipe, concepts, config, *, preserve, checkpoint_dir, resume, passphrase, progress)`` trains or edits
    ``pipe.unet`` in place and returns a :class:`conceptvault.training.HideResult`. ``family_defaults`` maps a
    model family's name to settings that differ from the config class's own defaults; ``per_concept`` names
    the settings that are multiplied by the number of concepts hidden at once, per family. ``variants`` are
    named presets a user can choose instead of the method's name (``esd-x``: ESD with ``train="xattn"``).
    """

    name: str
    config_class: type
    run: Callable
    keys: KeyKind
    summary: str
    family_defaults: Mapping[str, Mapping] = field(default_factory=dict)
    per_concept: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    variants: Mapping[str, Mapping] = field(default_factory=dict)
    resumable: bool = True

    @property
    def has_keys(self) -> bool:
        return self.keys != KeyKind.NONE

    @property
    def value(self) -> str:
        """The name, as ``Vault.method.value`` gave it when methods were an enum."""
        warnings.warn("Vault.method.value is deprecated: use Vault.method.name.", DeprecationWarning, stacklevel=2)
        return self.name

    def config(self, family: str | None = None, concepts: int = 1, **explicit):
        """The family's default settings for hiding ``concepts`` concepts at once, with ``explicit`` ones on
        top (explicit always wins); the config class checks every value."""
        defaults = dict(self.family_defaults.get(family, {}))
        for name in self.per_concept.get(family, ()):
            defaults[name] *= max(1, concepts)
        return self.config_class(**{**defaults, **explicit})


_METHODS: dict[str, MethodSpec] = {}
_discovered = False


def register_method(spec: MethodSpec) -> MethodSpec:
    """Make ``spec`` known by its name and its variants' names; a name taken already is refused."""
    taken = [name for name in (spec.name, *spec.variants) if name in _METHODS or name in _variant_names()]
    if taken:
        raise ValueError(f"a method named {taken[0]!r} is registered already; choose another name.")
    _METHODS[spec.name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Forget a method (for tests that register a toy one)."""
    _METHODS.pop(name, None)


def _variant_names() -> dict[str, str]:
    return {variant: spec.name for spec in _METHODS.values() for variant in spec.variants}


def _discover() -> None:
    """Import every method package once; each registers itself."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(METHODS_PACKAGE)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{METHODS_PACKAGE}.{module.name}")


def methods() -> list[MethodSpec]:
    """Every registered method, by name."""
    _discover()
    return [_METHODS[name] for name in sorted(_METHODS)]


def get_method(name: str) -> MethodSpec:
    """The method called ``name`` (or whose variant is called so); an unknown name is one ConceptVaultError."""
    _discover()
    name = _variant_names().get(name, name)
    if name not in _METHODS:
        raise ConceptVaultError(f"unknown method {name!r}; one of {', '.join(choices())}.")
    return _METHODS[name]


def variant_settings(name: str) -> dict:
    """The settings a variant name stands for (``esd-u``: ``{"train": "noxattn"}``); none for a method's name."""
    return dict(get_method(name).variants.get(name, {}))


def choices(with_keys: bool | None = None) -> list[str]:
    """The names a user may choose from: each method's name, or its variants' names where it has variants;
    ``with_keys`` keeps only the methods that leave keys (True) or only those that do not (False)."""
    _discover()
    names = []
    for spec in methods():
        if with_keys is None or spec.has_keys == with_keys:
            names += list(spec.variants) or [spec.name]
    return names
