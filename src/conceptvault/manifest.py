"""The vault's manifest: what was hidden, on which base model, by which method, how, and how well.

A typed dataclass that writes itself as JSON (sorted keys, indented, no NaN) and reads itself back
checked as a whole against one schema, its own field types: a wrong type, an unknown field, a missing
field or an impossible value is one :class:`ConceptVaultError` line that names the field, never a
traceback later on. A manifest is read from a file anyone may have edited, so nothing in it is trusted:
key file names must point inside the vault's ``keys/`` folder, fingerprints must be SHA-256 hex
digests, and the hiding settings are checked by their own config class.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import ConceptVaultError
from .key import Placement
from .registry import KeyKind, methods

FORMAT_VERSION = 3
# version 1 had no method field (every version-1 vault is a KPOP vault); version 2 no history
READABLE_VERSIONS = (1, 2, 3)
KEYS_DIR = "keys"
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_KEY_FILE = re.compile(rf"{KEYS_DIR}/[a-z0-9][a-z0-9-]{{0,127}}\.(safetensors|key)")


@dataclass
class ConceptEntry:
    """One hidden concept: its key's name, the phrasings it was trained on, its anchors, its key file."""

    name: str
    prompts: list[str]
    anchor: str = ""
    key_fingerprint: str | None = None
    key_file: str | None = None  # relative to the vault: keys/<slug>.safetensors or keys/<slug>.key
    key_norm: list[float] | None = None  # |p_k| and |p_v|: lets attacks draw random keys of the same size
    anchors: dict[str, str] = field(default_factory=dict)  # a prompt's own anchor, where it has one


@dataclass
class Manifest:
    """Everything a vault says about itself. ``config`` holds the method's settings as a plain dict."""

    base_model: str
    base_fingerprint: str
    public_fingerprint: str
    concepts: list[ConceptEntry]
    method: str = "kpop"  # the registered name of the method that made it
    family: str | None = None  # the base model's family, whose default settings the run started from
    placement: str | None = None  # the key's placement; None for methods without keys
    m: int | None = None
    cross_attention_dim: int | None = None
    public_tensors: int = 0
    config: dict = field(default_factory=dict)
    preserve: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # what was hidden, added and rotated, when, with which settings
    created: str = ""
    conceptvault_version: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def concept_names(self) -> list[str]:
        return [c.name for c in self.concepts]

    def entry(self, name: str) -> ConceptEntry:
        return next(c for c in self.concepts if c.name == name)

    def to_json(self) -> str:
        try:
            return json.dumps(asdict(self), indent=2, sort_keys=True, allow_nan=False) + "\n"
        except ValueError:
            raise ConceptVaultError("the vault's figures hold NaN or infinity; nothing was written.") from None

    @classmethod
    def from_json(cls, text: str, source: Path | str) -> Manifest:
        """Parse and check a manifest; every problem is one ConceptVaultError naming ``source`` and the field."""
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except (json.JSONDecodeError, ValueError):
            raise ConceptVaultError(
                f"'{source}' is damaged (not valid JSON); restore the vault from its original copy."
            ) from None
        if not isinstance(data, dict):
            raise ConceptVaultError(
                f"'{source}' is damaged (not a JSON object); restore the vault from its original copy."
            )
        version = data.get("format_version", None)
        if type(version) is not int or version not in READABLE_VERSIONS:
            if type(version) is int and version > FORMAT_VERSION:
                raise ConceptVaultError(
                    f"'{source}' has format version {version}, newer than this ConceptVault reads "
                    f"({FORMAT_VERSION}); upgrade conceptvault."
                )
            raise ConceptVaultError(
                f"'{source}' has no readable format_version (got {_shown(version)}); "
                "restore the vault from its original copy."
            )
        try:
            manifest = _build(cls, data, "")
            manifest._check_values()
        except _SchemaError as error:
            raise ConceptVaultError(
                f"'{source}' is damaged: {error}; restore the vault from its original copy."
            ) from None
        return manifest

    def _check_values(self) -> None:
        """What types alone cannot say: known method and placement, well-formed fingerprints and key files."""
        known = {spec.name: spec for spec in methods()}
        if self.method not in known:
            choices = ", ".join(repr(name) for name in known)
            raise _SchemaError(f"method is {_shown(self.method)}, not one of {choices}")
        spec = known[self.method]
        if spec.keys == KeyKind.PROMPT:  # a prompt key enters at a placement; a delta key changes the weights
            _member(Placement, self.placement, "placement")
        for name in ("base_fingerprint", "public_fingerprint"):
            if not _FINGERPRINT.fullmatch(getattr(self, name)):
                raise _SchemaError(f"{name} is not a SHA-256 digest")
        for name in ("m", "cross_attention_dim"):  # a key's token count and width: whole and above 0
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise _SchemaError(f"{name} is {_shown(getattr(self, name))}, not a count of at least 1")
        if self.public_tensors < 0:
            raise _SchemaError(f"public_tensors is {_shown(self.public_tensors)}, not a count")
        names = self.concept_names
        if not names or len(set(names)) != len(names) or not all(n.strip() for n in names):
            raise _SchemaError("concepts must name at least one concept, each once and not empty")
        for concept in self.concepts:
            if concept.key_fingerprint is not None and not _FINGERPRINT.fullmatch(concept.key_fingerprint):
                raise _SchemaError(f"the key fingerprint of {concept.name!r} is not a SHA-256 digest")
            if concept.key_file is not None and not _KEY_FILE.fullmatch(concept.key_file):
                raise _SchemaError(f"the key file of {concept.name!r} is not a file in {KEYS_DIR}/")
            norms = concept.key_norm
            if norms is not None and (len(norms) != 2 or not all(math.isfinite(n) and n >= 0 for n in norms)):
                raise _SchemaError(f"the key norms of {concept.name!r} are not two sizes of at least 0")
        try:
            spec.config_class.from_dict(self.config)
        except (ValueError, TypeError) as error:
            raise _SchemaError(f"config: {error}") from None


class _SchemaError(ValueError):
    pass


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _member(kind: type[Enum], value, name: str) -> Enum:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(c.value) for c in kind)
        raise _SchemaError(f"{name} is {_shown(value)}, not one of {choices}") from None


def _build(cls: type, data: dict, where: str):
    """An instance of dataclass ``cls`` from ``data``, every field checked against its annotation."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise _SchemaError(f"{where}has fields this ConceptVault does not know: {', '.join(map(repr, unknown))}")
    values = {}
    for name, f in known.items():
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise _SchemaError(f"{where}{name} is missing")
            continue
        values[name] = _check(hints[name], data[name], f"{where}{name}")
    return cls(**values)


def _check(annotation, value, where: str):
    """``value`` if it fits ``annotation`` (str, int, float, bool, dict, list[X], dict[str, X], X | None, a
    dataclass)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        return _check(next(a for a in options if a is not type(None)), value, where)
    if origin is list:
        if not isinstance(value, list):
            raise _SchemaError(f"{where} is {_shown(value)}, not a list")
        (item,) = typing.get_args(annotation)
        return [_check(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _SchemaError(f"{where} is {_shown(value)}, not an object")
        _, item = typing.get_args(annotation)
        return {name: _check(item, v, f"{where}[{name!r}]") for name, v in value.items()}
    if isinstance(annotation, type) and hasattr(annotation, "__dataclass_fields__"):
        if not isinstance(value, dict):
            raise _SchemaError(f"{where} is {_shown(value)}, not an object")
        return _build(annotation, value, f"{where}.")
    expected = {str: str, int: int, float: (int, float), bool: bool, dict: dict}[annotation]
    if isinstance(value, bool) and annotation is not bool:  # JSON true is no number
        raise _SchemaError(f"{where} is {_shown(value)}, not a {annotation.__name__}")
    if not isinstance(value, expected):
        raise _SchemaError(f"{where} is {_shown(value)}, not a {annotation.__name__}")
    return value
