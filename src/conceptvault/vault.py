"""The vault: the artifact a hiding run leaves behind.

```
VAULT/manifest.json            what was hidden, on which base model, how, and how well (conceptvault.manifest)
VAULT/public.safetensors       the UNet tensors hiding changed (only those)
VAULT/keys/<slug>.safetensors  one key per concept (<slug>.key when passphrase-protected)
```
The public part can be shared without ``keys/``. Like an adapter, a vault is applied onto a named and
checked base model and can be taken off again: ``apply`` / ``unapply`` / ``with vault.applied(pipe)``.
Loading checks the manifest as a whole, the public tensors against their fingerprint, and each key
file against the vault; nothing a manifest says is trusted to point outside the vault's ``keys/``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .backbone import model_name, unet_fingerprint
from .defaults import model_family
from .digest import tensor_digest
from .errors import ConceptVaultError
from .files import slug
from .key import Key, Placement, attach_keys, detach_keys, is_key_parameter
from .keyfile import (
    PLAIN_SUFFIX,
    PROTECTED_SUFFIX,
    key_fingerprint,
    key_from_tensors,
    key_tensors,
    read_key_file,
    write_key_file,
)
from .manifest import FORMAT_VERSION, KEYS_DIR, ConceptEntry, Manifest
from .registry import MethodSpec, get_method

__all__ = ["Vault", "read_manifest", "save_vault", "public_fingerprint", "unet_fingerprint"]

MANIFEST_FILE = "manifest.json"
PUBLIC_FILE = "public.safetensors"
_APPLIED_ATTRIBUTE = "conceptvault_applied"  # on a pipeline: the _Applied record of the vault applied to it


def public_fingerprint(public: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the public tensors' names, shapes, dtypes and exact bytes; names the vault."""
    return tensor_digest(public, with_dtype=True)


def _version() -> str:
    try:
        return metadata.version("conceptvault")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class _Applied:
    """What ``apply`` changed on a pipeline, so that ``unapply`` can restore it bit for bit."""

    public_fingerprint: str
    originals: dict[str, torch.Tensor]  # the base model's values of the tensors the vault replaced (CPU)


@dataclass
class Vault:
    path: Path | None
    manifest: Manifest
    public: dict[str, torch.Tensor]
    keys: dict[str, Key] = field(default_factory=dict)

    # -- what it holds ----------------------------------------------------------------------------
    @property
    def concepts(self) -> list[str]:
        return self.manifest.concept_names

    @property
    def method(self) -> MethodSpec:
        """The registered method that made the vault (its ``name``, whether it ``has_keys``)."""
        return get_method(self.manifest.method)

    @property
    def placement(self) -> Placement | None:
        return Placement(self.manifest.placement) if self.manifest.placement else None

    @property
    def public_fingerprint(self) -> str:
        return self.manifest.public_fingerprint

    # -- making one -------------------------------------------------------------------------------
    @classmethod
    def from_hiding(
        cls, pipe, result, *, action: str = "hide", changed: list[str] | None = None, history: list[dict] = ()
    ) -> Vault:
        """A vault (not yet saved) from a finished :func:`conceptvault.hide` run on ``pipe``; the concepts,
        settings and preserve prompts come with the result. The run is recorded at the end of ``history`` (the
        earlier vault's) as ``action`` (``hide``, ``add`` or ``rotate``) of the concepts ``changed`` (all)."""
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        public = {name: tensor.detach().cpu().contiguous() for name, tensor in result.public.items()}
        keys = {name: _cpu_copy(key) for name, key in result.keys.items()}
        config = result.config
        manifest = Manifest(
            base_model=model_name(pipe),
            base_fingerprint=result.base_fingerprint,
            public_fingerprint=public_fingerprint(public),
            concepts=[_entry(c, keys.get(c.name)) for c in result.concepts],
            method=get_method(result.method).name,
            family=model_family(pipe).value,
            placement=Placement(config.placement).value if getattr(config, "placement", None) and keys else None,
            m=config.m if getattr(config, "m", None) and keys else None,
            cross_attention_dim=pipe.unet.config.cross_attention_dim,
            public_tensors=len(public),
            config=config.to_dict(),
            preserve=list(result.preserve),
            stats=result.stats,
            history=[*history, _event(action, changed or [c.name for c in result.concepts], result, created)],
            created=created,
            conceptvault_version=_version(),
        )
        return cls(path=None, manifest=manifest, public=public, keys=keys)

    # -- saving and loading -----------------------------------------------------------------------
    def save(self, path: Path | str, *, passphrase: str | None = None, overwrite: bool = False) -> None:
        """Write the vault atomically: into ``<path>.tmp-*`` first, renamed only when complete.

        Args:
            path: the vault folder to create.
            passphrase: protect the key files with it (scrypt + AES-256-GCM); None writes them plain.
            overwrite: replace an existing folder at ``path``.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise ConceptVaultError(f"'{path}' already exists; choose another output path or delete it first.")
        if not all(torch.isfinite(t).all() for t in self.public.values() if t.is_floating_point()):
            raise ConceptVaultError("the vault's public weights hold NaN or infinity; nothing was written.")
        manifest = copy.deepcopy(self.manifest)
        manifest.format_version = FORMAT_VERSION
        manifest.to_json()  # refuses NaN and infinity before anything is written
        temporary = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            temporary.mkdir(parents=True)
            save_file(self.public, str(temporary / PUBLIC_FILE))
            for entry in manifest.concepts:
                entry.key_file = self._save_key(temporary, entry, passphrase) or entry.key_file
            (temporary / MANIFEST_FILE).write_text(manifest.to_json())
            _replace_folder(temporary, path)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        self.path, self.manifest = path, manifest

    def _save_key(self, folder: Path, entry: ConceptEntry, passphrase: str | None) -> str | None:
        key = self.keys.get(entry.name)
        if key is None:
            return None
        suffix = PLAIN_SUFFIX if passphrase is None else PROTECTED_SUFFIX
        relative = f"{KEYS_DIR}/{_unique_slug(entry.name, self.concepts)}{suffix}"
        write_key_file(
            folder / relative,
            key,
            concept=entry.name,
            public_fingerprint=self.public_fingerprint,
            passphrase=passphrase,
        )
        return relative

    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        keys: list[str] | Literal["all"] | None = "all",
        passphrase: str | None = None,
    ) -> Vault:
        """Read a vault.

        Args:
            path: the vault folder.
            keys: ``"all"`` (every key file present), a list of concept names, or None (the public part only).
            passphrase: opens protected key files.

        Every problem (a damaged or edited manifest, changed public tensors, a key file from another vault,
        a wrong passphrase) is one :class:`ConceptVaultError` line.
        """
        path = Path(path)
        manifest = _read_manifest(path)
        public = _read_public(path / PUBLIC_FILE)
        if public_fingerprint(public) != manifest.public_fingerprint:
            raise ConceptVaultError(
                f"'{path / PUBLIC_FILE}' does not match the vault's manifest (it was changed or damaged); "
                "restore the vault from its original copy."
            )
        vault = cls(path=path, manifest=manifest, public=public)
        for name in _requested_keys(vault, keys):
            vault.keys[name] = vault._load_key(name, passphrase)
        return vault

    def _load_key(self, name: str, passphrase: str | None) -> Key:
        file = _key_file(self.path, self.manifest.entry(name), self.concepts)
        if file is None:
            raise ConceptVaultError(
                f"the key for '{name}' is not in '{self.path / KEYS_DIR}'; "
                "copy its key file there from whoever holds it."
            )
        concept, key = read_key_file(file, public_fingerprint=self.public_fingerprint, passphrase=passphrase)
        if concept != name or key_fingerprint(key) != self.manifest.entry(name).key_fingerprint:
            raise ConceptVaultError(
                f"the key file '{file}' is not the key of '{name}' recorded in this vault's manifest; "
                "use the key file saved with this vault."
            )
        return key

    # -- using one --------------------------------------------------------------------------------
    def apply(self, pipe) -> None:
        """Load the public tensors into ``pipe.unet`` (after checking the base model) and attach the loaded keys.

        Args:
            pipe: the base pipeline the vault was made for. Applying the same vault again only re-attaches
                its keys; another vault must be taken off first (:meth:`unapply`).
        """
        applied = getattr(pipe, _APPLIED_ATTRIBUTE, None)
        if applied is not None and applied.public_fingerprint != self.public_fingerprint:
            raise ConceptVaultError("another vault is applied to this pipeline; unapply it first.")
        if applied is None:
            self._check_base(pipe.unet)
            state = _unet_weights(pipe.unet)
            self._check_public(state)
            originals = {name: state[name].detach().to("cpu", copy=True) for name in self.public}
            _copy_into(state, self.public)
            setattr(pipe, _APPLIED_ATTRIBUTE, _Applied(self.public_fingerprint, originals))
        detach_keys(pipe.unet)
        if self.keys:
            attach_keys(pipe.unet, self.keys, self.placement)

    def unapply(self, pipe) -> None:
        """Take the vault off ``pipe``: keys detached, the base model's tensors restored bit for bit."""
        applied = getattr(pipe, _APPLIED_ATTRIBUTE, None)
        if applied is None:
            return
        if applied.public_fingerprint != self.public_fingerprint:
            raise ConceptVaultError("another vault is applied to this pipeline; unapply that one.")
        detach_keys(pipe.unet)
        _copy_into(_unet_weights(pipe.unet), applied.originals)
        delattr(pipe, _APPLIED_ATTRIBUTE)

    @contextmanager
    def applied(self, pipe) -> Iterator[None]:
        """Apply the vault for a ``with`` block, then take it off again (the pipeline is as it was)."""
        was_applied = getattr(pipe, _APPLIED_ATTRIBUTE, None) is not None
        self.apply(pipe)
        try:
            yield
        finally:
            if not was_applied:
                self.unapply(pipe)

    def _check_base(self, unet) -> None:
        expected, found = self.manifest.base_fingerprint, unet_fingerprint(unet)
        if found != expected:
            base = self.manifest.base_model
            raise ConceptVaultError(
                f"this vault was made for '{base}' (fingerprint {expected[:12]}), but the model given has "
                f"fingerprint {found[:12]}; load '{base}'."
            )

    def _check_public(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.public) - set(state))
        if missing:
            raise ConceptVaultError(
                f"the UNet has no tensors named {missing[:3]} that this vault changes; load its base model."
            )
        misshaped = [n for n, t in self.public.items() if tuple(t.shape) != tuple(state[n].shape)]
        if misshaped:
            raise ConceptVaultError(
                f"the vault's tensors {misshaped[:3]} do not fit the UNet's shapes; load its base model."
            )

    def export(self, pipe, out: Path | str, *, format: str = "diffusers") -> None:
        """Write the public model (no keys): a plain diffusers pipeline folder, or (``format="single-file"``)
        one safetensors checkpoint in the original Stable Diffusion layout. Written atomically."""
        out = Path(out)
        if out.exists():
            raise ConceptVaultError(f"'{out}' already exists; choose another output path or delete it first.")
        if format not in ("diffusers", "single-file"):
            raise ConceptVaultError(f"unknown export format {format!r}; choose 'diffusers' or 'single-file'.")
        self.apply(pipe)
        keys = detach_keys(pipe.unet)
        temporary = out.with_name(f"{out.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            if format == "single-file":
                from .single_file import export_single_file

                export_single_file(pipe, temporary)
            else:
                pipe.save_pretrained(temporary, safe_serialization=True)
            os.replace(temporary, out)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True) if temporary.is_dir() else temporary.unlink(missing_ok=True)
            raise
        finally:
            if keys:
                attach_keys(pipe.unet, keys, self.placement)


def save_vault(path, pipe, result, *, passphrase: str | None = None) -> Vault:
    """Build a vault from a hiding run and save it at ``path``."""
    vault = Vault.from_hiding(pipe, result)
    vault.save(path, passphrase=passphrase)
    return vault


def _unet_weights(unet) -> dict[str, torch.Tensor]:
    """The UNet's own tensors by state_dict name (no key tensors)."""
    return {name: t for name, t in unet.state_dict().items() if not is_key_parameter(name)}


def _copy_into(state: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, tensor in tensors.items():
            state[name].copy_(tensor)


def _entry(concept, key) -> ConceptEntry:
    if key is None:
        return ConceptEntry(concept.name, list(concept.prompts), concept.anchor, anchors=dict(concept.anchors))
    norms = (
        [round(float(key.p_k.detach().norm()), 6), round(float(key.p_v.detach().norm()), 6)]
        if isinstance(key, Key)
        else None
    )
    return ConceptEntry(
        concept.name,
        list(concept.prompts),
        concept.anchor,
        key_fingerprint(key),
        key_norm=norms,
        anchors=dict(concept.anchors),
    )


def _event(action: str, concepts: list[str], result, created: str) -> dict:
    """One entry of a vault's history: what the run did to which concepts, when, with which settings."""
    return {
        "action": action,
        "concepts": concepts,
        "created": created,
        "method": get_method(result.method).name,
        "settings": result.config.to_dict(),
    }


def _cpu_copy(key):
    """A CPU copy of a prompt key or a delta key, detached from the run that made it."""
    return key_from_tensors(key_tensors(key))


def _unique_slug(name: str, names: list[str]) -> str:
    short = slug(name)
    if sum(slug(other) == short for other in names) > 1:
        short = f"{short}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return short


def replace_vault(new: Path | str, target: Path | str) -> None:
    """Put the complete vault ``new`` in the place of ``target`` (a reader sees one or the other, never half)."""
    _replace_folder(Path(new), Path(target))


def _replace_folder(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f"{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _read_manifest(path: Path) -> Manifest:
    file = path / MANIFEST_FILE
    if not file.is_file():
        raise ConceptVaultError(
            f"'{path}' is not a ConceptVault vault (it has no {MANIFEST_FILE}); give a vault folder."
        )
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise ConceptVaultError(f"'{file}' cannot be read; restore the vault from its original copy.") from None
    try:
        _refuse_ambiguous_json(text, file)
        return Manifest.from_json(text, file)
    except RecursionError:  # brackets nested deeper than any manifest's: the parser gives up
        raise ConceptVaultError(
            f"'{file}' is damaged (nested too deeply to be a manifest); restore the vault from its original copy."
        ) from None


class _Ambiguous(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _Ambiguous(f"the key {key!r} appears twice in one object")
        seen.add(key)
    return dict(pairs)


def _finite_number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Ambiguous(f"the number {text[:20]} is beyond any float")
    return value


def _refuse_ambiguous_json(text: str, file: Path) -> None:
    """Refuse JSON that Python would read silently otherwise than written: a key given twice (the last would
    win) and a number too large for a float (1e400 would read as infinity). Other faults are left to the
    manifest's own checks, which name them."""
    try:
        json.loads(text, object_pairs_hook=_unique_keys, parse_float=_finite_number)
    except _Ambiguous as error:
        raise ConceptVaultError(f"'{file}' is damaged ({error}); restore the vault from its original copy.") from None
    except ValueError:
        pass


def read_manifest(path: Path | str) -> Manifest:
    """The checked manifest of the vault folder ``path``, without reading its tensors or keys."""
    return _read_manifest(Path(path))


def _read_public(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise ConceptVaultError(f"the vault is missing '{file}'; restore the vault from its original copy.")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ConceptVaultError(
            f"'{file}' cannot be read ({error}); restore the vault from its original copy."
        ) from None


def _requested_keys(vault: Vault, keys) -> list[str]:
    if keys is None or (keys == "all" and not vault.method.has_keys):
        return []
    if not vault.method.has_keys:
        raise ConceptVaultError(
            f"this vault was made by {vault.method.name}, which erases its concepts: it has no keys; "
            "load it without keys."
        )
    if keys == "all":
        return [name for name in vault.concepts if _key_file(vault.path, vault.manifest.entry(name), vault.concepts)]
    if isinstance(keys, str):
        keys = [keys]
    unknown = [name for name in keys if name not in vault.concepts]
    if unknown:
        raise ConceptVaultError(
            f"this vault has no key named {unknown[0]!r}; its concepts are {', '.join(map(repr, vault.concepts))}."
        )
    return list(dict.fromkeys(keys))


def _key_file(folder: Path, entry: ConceptEntry, names: list[str]) -> Path | None:
    """The concept's key file in ``folder/keys``: the one the manifest names, else a plain or protected one.

    Only a regular file that really lies in the vault's own ``keys/`` folder counts: no symbolic link
    (of the file or of ``keys/``) is followed, so a manifest cannot make ConceptVault open, or reveal
    the existence of, any file elsewhere. Every refusal looks like a missing key.
    """
    keys_dir = folder / KEYS_DIR
    if keys_dir.is_symlink() or not keys_dir.is_dir():
        return None
    slug = _unique_slug(entry.name, names)
    candidates = [entry.key_file, f"{KEYS_DIR}/{slug}{PLAIN_SUFFIX}", f"{KEYS_DIR}/{slug}{PROTECTED_SUFFIX}"]
    for candidate in filter(None, candidates):
        path = folder / candidate
        if path.parent == keys_dir and not path.is_symlink() and path.is_file():
            return path
    return None
