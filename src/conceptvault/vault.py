"""The vault: the artifact a hiding run leaves behind.

```
VAULT/manifest.json            what was hidden, on which base model, how, and how well
VAULT/public.safetensors       the UNet tensors hiding changed (only those)
VAULT/keys/<slug>.safetensors  one key per concept (<slug>.key when passphrase-protected)
```
The public part can be shared without ``keys/``. Loading is lenient about unknown manifest fields
and strict about tensors and fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .backbone import model_name, unet_fingerprint
from .errors import ConceptVaultError
from .key import Key, Placement, attach_keys, detach_keys
from .keyfile import PLAIN_SUFFIX, PROTECTED_SUFFIX, key_fingerprint, key_slug, read_key_file, write_key_file

__all__ = ["Vault", "save_vault", "public_fingerprint", "unet_fingerprint"]

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
PUBLIC_FILE = "public.safetensors"
KEYS_DIR = "keys"
_APPLIED_ATTRIBUTE = "conceptvault_vault"
_KNOWN_FIELDS = {
    "format_version",
    "conceptvault_version",
    "created",
    "base_model",
    "base_fingerprint",
    "public_fingerprint",
    "public_tensors",
    "placement",
    "m",
    "cross_attention_dim",
    "config",
    "preserve",
    "stats",
    "concepts",
}
_REQUIRED_FIELDS = ("format_version", "base_model", "base_fingerprint", "public_fingerprint", "placement", "concepts")


def public_fingerprint(public: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the public tensors' names, shapes, dtypes and exact bytes; names the vault."""
    digest = hashlib.sha256()
    for name, tensor in sorted(public.items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _version() -> str:
    try:
        return metadata.version("conceptvault")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class Vault:
    path: Path | None
    manifest: dict
    public: dict[str, torch.Tensor]
    keys: dict[str, Key] = field(default_factory=dict)

    # -- what it holds ----------------------------------------------------------------------------
    @property
    def concepts(self) -> list[str]:
        return [entry["name"] for entry in self.manifest["concepts"]]

    @property
    def placement(self) -> Placement:
        return Placement(self.manifest["placement"])

    @property
    def public_fingerprint(self) -> str:
        return self.manifest["public_fingerprint"]

    # -- making one -------------------------------------------------------------------------------
    @classmethod
    def from_hiding(cls, pipe, concepts, config, result, preserve=()) -> Vault:
        """A vault (not yet saved) from a finished :func:`conceptvault.hide.hide` run."""
        if not result.base_fingerprint:
            raise ConceptVaultError("the hiding result carries no base-model fingerprint; run hide() again.")
        manifest = {
            "format_version": FORMAT_VERSION,
            "conceptvault_version": _version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "base_model": model_name(pipe),
            "base_fingerprint": result.base_fingerprint,
            "public_fingerprint": public_fingerprint(result.public),
            "public_tensors": len(result.public),
            "placement": Placement(config.placement).value,
            "m": config.m,
            "cross_attention_dim": pipe.unet.config.cross_attention_dim,
            "config": config.to_dict(),
            "preserve": list(preserve),
            "stats": result.stats,
            "concepts": [
                dict(asdict(c), key_fingerprint=key_fingerprint(result.keys[c.name]), key_file=None) for c in concepts
            ],
        }
        keys = {name: _cpu_copy(key) for name, key in result.keys.items()}
        public = {name: tensor.detach().cpu().contiguous() for name, tensor in result.public.items()}
        return cls(path=None, manifest=manifest, public=public, keys=keys)

    # -- saving and loading -----------------------------------------------------------------------
    def save(self, path: Path | str, *, passphrase: str | None = None, overwrite: bool = False) -> None:
        """Write the vault atomically: into ``<path>.tmp-*`` first, renamed only when complete."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise ConceptVaultError(f"'{path}' already exists; choose another output path or delete it first.")
        temporary = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            temporary.mkdir(parents=True)
            save_file(self.public, str(temporary / PUBLIC_FILE))
            manifest = json.loads(json.dumps(self.manifest))
            for entry in manifest["concepts"]:
                entry["key_file"] = self._save_key(temporary, entry, passphrase) or entry.get("key_file")
            (temporary / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            _replace_folder(temporary, path)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        self.path, self.manifest = path, manifest

    def _save_key(self, folder: Path, entry: dict, passphrase: str | None) -> str | None:
        key = self.keys.get(entry["name"])
        if key is None:
            return None
        suffix = PLAIN_SUFFIX if passphrase is None else PROTECTED_SUFFIX
        relative = f"{KEYS_DIR}/{_unique_slug(entry['name'], self.concepts)}{suffix}"
        write_key_file(
            folder / relative,
            key,
            concept=entry["name"],
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
        """Read a vault; ``keys`` is ``"all"`` (every key file present), a list of concept names, or None."""
        path = Path(path)
        manifest = _read_manifest(path)
        public = _read_public(path / PUBLIC_FILE)
        if public_fingerprint(public) != manifest["public_fingerprint"]:
            raise ConceptVaultError(
                f"'{path / PUBLIC_FILE}' does not match the vault's manifest (it was changed or damaged); "
                "restore the vault from its original copy."
            )
        vault = cls(path=path, manifest=manifest, public=public)
        for name in _requested_keys(vault, keys):
            vault.keys[name] = vault._load_key(name, passphrase)
        return vault

    def _load_key(self, name: str, passphrase: str | None) -> Key:
        entry = next(e for e in self.manifest["concepts"] if e["name"] == name)
        file = _key_file(self.path, entry, self.concepts)
        if file is None:
            raise ConceptVaultError(
                f"the key for '{name}' is not in '{self.path / KEYS_DIR}'; "
                "copy its key file there from whoever holds it."
            )
        concept, key = read_key_file(file, public_fingerprint=self.public_fingerprint, passphrase=passphrase)
        if concept != name or key_fingerprint(key) != entry.get("key_fingerprint"):
            raise ConceptVaultError(
                f"the key file '{file}' is not the key of '{name}' recorded in this vault's manifest; "
                "use the key file saved with this vault."
            )
        return key

    # -- using one --------------------------------------------------------------------------------
    def apply(self, pipe) -> None:
        """Load the public tensors into ``pipe.unet`` (after checking the base model) and attach the loaded keys."""
        if getattr(pipe, _APPLIED_ATTRIBUTE, None) != self.public_fingerprint:
            self._check_base(pipe.unet)
            self._load_public(pipe.unet)
            setattr(pipe, _APPLIED_ATTRIBUTE, self.public_fingerprint)
        detach_keys(pipe.unet)
        if self.keys:
            attach_keys(pipe.unet, self.keys, self.placement)

    def _check_base(self, unet) -> None:
        expected, found = self.manifest["base_fingerprint"], unet_fingerprint(unet)
        if found != expected:
            base = self.manifest["base_model"]
            raise ConceptVaultError(
                f"this vault was made for '{base}' (fingerprint {expected[:12]}), but the model given has "
                f"fingerprint {found[:12]}; load '{base}'."
            )

    def _load_public(self, unet) -> None:
        state = {name: t for name, t in unet.state_dict().items() if ".processor." not in name}
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
        with torch.no_grad():
            for name, tensor in self.public.items():
                state[name].copy_(tensor)

    def export(self, pipe, out: Path | str) -> None:
        """Write the public model (no keys) as a plain diffusers pipeline folder, atomically."""
        out = Path(out)
        if out.exists():
            raise ConceptVaultError(f"'{out}' already exists; choose another output folder or delete it first.")
        self.apply(pipe)
        keys = detach_keys(pipe.unet)
        temporary = out.with_name(f"{out.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            pipe.save_pretrained(temporary, safe_serialization=True)
            os.replace(temporary, out)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        finally:
            if keys:
                attach_keys(pipe.unet, keys, self.placement)


def save_vault(path, pipe, concepts, config, result, *, preserve=(), passphrase: str | None = None) -> Vault:
    """Build a vault from a hiding run and save it at ``path``."""
    vault = Vault.from_hiding(pipe, concepts, config, result, preserve)
    vault.save(path, passphrase=passphrase)
    return vault


def _cpu_copy(key: Key) -> Key:
    copy = Key(key.m, key.dim, init=key.p_k.detach().cpu())
    copy.p_v.data.copy_(key.p_v.detach().cpu())
    return copy


def _unique_slug(name: str, names: list[str]) -> str:
    slug = key_slug(name)
    if sum(key_slug(other) == slug for other in names) > 1:
        slug = f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return slug


def _replace_folder(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f"{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _read_manifest(path: Path) -> dict:
    file = path / MANIFEST_FILE
    if not file.is_file():
        raise ConceptVaultError(
            f"'{path}' is not a ConceptVault vault (it has no {MANIFEST_FILE}); give a vault folder."
        )
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConceptVaultError(
            f"'{file}' is damaged (not valid JSON); restore the vault from its original copy."
        ) from None
    missing = [name for name in _REQUIRED_FIELDS if name not in manifest]
    if missing:
        raise ConceptVaultError(f"'{file}' lacks {', '.join(missing)}; restore the vault from its original copy.")
    if not isinstance(manifest["format_version"], int) or manifest["format_version"] > FORMAT_VERSION:
        raise ConceptVaultError(
            f"'{path}' has format version {manifest['format_version']!r}, newer than this ConceptVault reads "
            f"({FORMAT_VERSION}); upgrade conceptvault."
        )
    unknown = sorted(set(manifest) - _KNOWN_FIELDS)
    if unknown:
        warnings.warn(f"{file} has fields this ConceptVault does not know: {unknown}; they are ignored.", stacklevel=3)
    return manifest


def _read_public(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise ConceptVaultError(f"the vault is missing '{file}'; restore the vault from its original copy.")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as error:
        raise ConceptVaultError(
            f"'{file}' cannot be read ({error}); restore the vault from its original copy."
        ) from None


def _requested_keys(vault: Vault, keys) -> list[str]:
    if keys is None:
        return []
    if keys == "all":
        return [name for name in vault.concepts if _key_file(vault.path, _entry(vault, name), vault.concepts)]
    if isinstance(keys, str):
        keys = [keys]
    unknown = [name for name in keys if name not in vault.concepts]
    if unknown:
        raise ConceptVaultError(
            f"this vault has no key named {unknown[0]!r}; its concepts are {', '.join(map(repr, vault.concepts))}."
        )
    return list(dict.fromkeys(keys))


def _entry(vault: Vault, name: str) -> dict:
    return next(e for e in vault.manifest["concepts"] if e["name"] == name)


def _key_file(folder: Path, entry: dict, names: list[str]) -> Path | None:
    """The concept's key file in ``folder/keys``: the one the manifest names, else a plain or protected one."""
    slug = _unique_slug(entry["name"], names)
    candidates = [entry.get("key_file"), f"{KEYS_DIR}/{slug}{PLAIN_SUFFIX}", f"{KEYS_DIR}/{slug}{PROTECTED_SUFFIX}"]
    return next((folder / c for c in candidates if c and (folder / c).is_file()), None)
