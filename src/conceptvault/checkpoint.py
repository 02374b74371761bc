"""Checkpoints of a hiding run, and the lock that keeps two runs from writing the same output.

```
CHECKPOINT_DIR/checkpoint.pt   the public side: trained UNet tensors, model optimiser, run state, RNG, identity
CHECKPOINT_DIR/keys.ckpt       the secret side: keys and key optimiser, sealed with the run's passphrase if any
CHECKPOINT_DIR/lock            held by the run that writes here
```
Both files are written atomically and readable by their owner only. A run that had a passphrase
records it in its identity, so it cannot be resumed without one (its keys would otherwise end up in
plain files), and the passphrase is checked by opening the sealed keys before training continues.
"""

from __future__ import annotations

import fcntl
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import ConceptVaultError
from .keyfile import is_sealed, seal, unseal, write_secret

CHECKPOINT_FILE = "checkpoint.pt"
KEYS_FILE = "keys.ckpt"
LOCK_FILE = "lock"
FORMAT = 2


def write_checkpoint(folder: Path, public: dict, secret: dict, passphrase: str | None) -> None:
    """Write both halves; ``secret`` (keys and their optimiser) is sealed when there is a passphrase."""
    folder.mkdir(parents=True, exist_ok=True)
    data = _to_bytes(secret)
    write_secret(
        folder / KEYS_FILE,
        data if passphrase is None else seal(data, passphrase, {"format": "conceptvault-checkpoint-keys"}),
    )
    write_secret(folder / CHECKPOINT_FILE, _to_bytes(dict(public, format=FORMAT)))


def check_passphrase(folder: Path, passphrase: str | None) -> None:
    """Refuse, before any work, a run whose checkpoint's keys the passphrase given does not open."""
    path = folder / CHECKPOINT_FILE
    public = _from_bytes(_read(path), path)
    data = _read(folder / KEYS_FILE)
    if public.get("identity", {}).get("protected") and passphrase is None:
        raise ConceptVaultError(
            f"the run in '{folder}' protects its keys with a passphrase; resume it with the same `passphrase`."
        )
    if is_sealed(data):
        unseal(data, passphrase, f"the checkpoint's keys '{folder / KEYS_FILE}'")


def read_checkpoint(folder: Path, identity: dict, passphrase: str | None) -> tuple[dict, dict]:
    """Both halves of the checkpoint in ``folder``, after checking that it belongs to this run."""
    path = folder / CHECKPOINT_FILE
    public = _from_bytes(_read(path), path)
    if public.get("format") != FORMAT:
        raise ConceptVaultError(f"the checkpoint '{path}' has an unknown format; delete it and run without `resume`.")
    check_identity(path, public["identity"], identity)
    data = _read(folder / KEYS_FILE)
    if public["identity"].get("protected") and passphrase is None:
        raise ConceptVaultError(
            f"the run in '{folder}' protects its keys with a passphrase; resume it with the same `passphrase`."
        )
    if is_sealed(data):
        _, data = unseal(data, passphrase, f"the checkpoint's keys '{folder / KEYS_FILE}'")
    return public, _from_bytes(data, folder / KEYS_FILE)


def check_identity(path: Path, saved: dict, current: dict) -> None:
    for part in ("base_fingerprint", "concepts", "preserve"):
        if saved.get(part) != current[part]:
            raise ConceptVaultError(
                f"the checkpoint '{path}' was made with other {part.replace('_', ' ')}; "
                "resume with the same model, concepts and preserve prompts, or run without `resume`."
            )
    for name, value in current["config"].items():
        if saved["config"].get(name) != value:
            raise ConceptVaultError(
                f"the checkpoint '{path}' was made with {name}={saved['config'].get(name)!r}, not {value!r}; "
                "resume with the same settings or run without `resume`."
            )


def _to_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConceptVaultError(
            f"the checkpoint '{path}' cannot be read ({error.strerror}); delete its folder and run without `resume`."
        ) from None


def _from_bytes(data: bytes, path: Path) -> dict:
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file: say which and how to start over
        raise ConceptVaultError(
            f"the checkpoint '{path}' cannot be read ({type(error).__name__}); "
            "delete its folder and run without `resume`."
        ) from None
    if not isinstance(state, dict):
        raise ConceptVaultError(f"the checkpoint '{path}' is damaged; delete its folder and run without `resume`.")
    return state


def checkpoint_folder(out: Path) -> Path:
    """Where the run that writes ``out`` keeps its checkpoints: beside it, as ``<out>.checkpoint``."""
    return Path(out).with_name(f"{Path(out).name}.checkpoint")


@contextmanager
def output_lock(out: Path, resume: bool) -> Iterator[Path]:
    """Claim ``out`` for one run: its checkpoint folder ``<out>.checkpoint`` is created (which also proves the
    folder is writable) and locked for the run; yields that folder. Refuses, before any work, an ``out`` that
    exists, a run already writing there, and an unfinished run unless ``resume``."""
    out = Path(out)
    if not out.name or out.name in (".", ".."):
        raise ConceptVaultError(f"`out` '{out}' names no new folder; give one such as star.vault.")
    folder = checkpoint_folder(out)
    if out.exists():
        raise ConceptVaultError(f"'{out}' already exists; choose another `out` or delete it first.")
    existed = folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_FILE, "a")
    except OSError as error:
        raise ConceptVaultError(
            f"cannot write beside '{out}' ({error.strerror}); choose an `out` in a folder you can write to."
        ) from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConceptVaultError(
                f"another run is writing to '{out}' right now; wait for it or choose another `out`."
            ) from None
        if existed and not resume and (folder / CHECKPOINT_FILE).exists():
            raise ConceptVaultError(
                f"'{folder}' holds an unfinished run; add `resume` to continue it, or delete it to start over."
            )
        if resume and not (folder / CHECKPOINT_FILE).exists():
            raise ConceptVaultError(f"there is no checkpoint to resume from in '{folder}'; run without `resume`.")
        yield folder
    finally:
        handle.close()
        if not existed and not (folder / CHECKPOINT_FILE).exists():
            _remove_empty(folder)


def _remove_empty(folder: Path) -> None:
    """Remove a checkpoint folder that never received a checkpoint (only its lock file)."""
    (folder / LOCK_FILE).unlink(missing_ok=True)
    try:
        os.rmdir(folder)
    except OSError:
        pass
