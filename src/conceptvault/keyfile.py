"""Key files: one per concept, plain safetensors or passphrase-protected (scrypt + AES-256-GCM).

Every key file names the vault it belongs to by the vault's public fingerprint and refuses to load
into another one. A protected file is ``MAGIC | header length | header JSON | ciphertext``; the
header (KDF parameters, salt, nonce, concept, fingerprints) is authenticated as associated data, so
changing any byte of the file makes decryption fail.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from pathlib import Path

import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from .delta_key import DeltaKey
from .digest import tensor_digest
from .errors import ConceptVaultError
from .files import atomic_write
from .key import Key

PLAIN_SUFFIX = ".safetensors"
PROTECTED_SUFFIX = ".key"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_MAGIC = b"CONCEPTVAULT-KEY\x01"
_FORMAT = "conceptvault-key"


def key_tensors(key) -> dict[str, torch.Tensor]:
    """What a key file stores: a prompt key's two token tensors (and its projection changes, if it has a
    rank), or a delta key's parts."""
    parts = key.tensors() if isinstance(key, DeltaKey) else key.state_dict()
    return {name: t.detach().cpu().contiguous() for name, t in parts.items()}


def key_from_tensors(tensors: dict[str, torch.Tensor]):
    """The key a file's tensors make: a prompt key (``p_k``, ``p_v``, projection changes) or a delta key;
    raises on anything else."""
    if "p_k" in tensors:
        key = Key.from_tensors(tensors)
    else:
        key = DeltaKey.from_tensors(tensors)
        if not key.names or len(key.tensors()) != len(tensors):
            raise ValueError("not a key's tensors")
    if not all(torch.isfinite(p).all() for p in key.parameters()):
        raise ValueError("non-finite key")
    return key


def key_fingerprint(key) -> str:
    """SHA-256 over the key's tensors by name (float32 bytes)."""
    return tensor_digest(key_tensors(key), cast=torch.float32)


def write_key_file(
    path: Path, key: Key, *, concept: str, public_fingerprint: str, passphrase: str | None = None
) -> None:
    """Write ``key`` to ``path`` (``.safetensors`` when plain, ``.key`` when a passphrase is given), readable
    by its owner only."""
    tensors = key_tensors(key)
    info = {
        "format": _FORMAT,
        "concept": concept,
        "public_fingerprint": public_fingerprint,
        "key_fingerprint": key_fingerprint(key),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (
        save_tensors(tensors, metadata=info) if passphrase is None else seal(save_tensors(tensors), passphrase, info)
    )
    write_secret(path, data)


def write_secret(path: Path, data: bytes) -> None:
    """Write a file that holds a secret: owner-only permissions, replaced atomically."""
    atomic_write(path, data, mode=0o600)


def seal(plaintext: bytes, passphrase: str, info: dict) -> bytes:
    """``plaintext`` encrypted under ``passphrase`` (scrypt, AES-256-GCM); ``info`` travels in the clear but
    authenticated, so changing any byte of the result makes :func:`unseal` fail."""
    salt, nonce = os.urandom(16), os.urandom(12)
    header = dict(
        info,
        version=1,
        cipher="AES-256-GCM",
        kdf="scrypt",
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        salt=_b64(salt),
        nonce=_b64(nonce),
    )
    prefix = _prefix(json.dumps(header, sort_keys=True).encode())
    return prefix + AESGCM(_derive(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)).encrypt(nonce, plaintext, prefix)


def is_sealed(data: bytes) -> bool:
    return data.startswith(_MAGIC)


def unseal(data: bytes, passphrase: str | None, shown_as: str) -> tuple[dict, bytes]:
    """The header and plaintext of sealed ``data``. The header, and the scrypt cost in it, is checked before
    any key derivation: only the cost ConceptVault itself writes is accepted, so a forged header cannot make
    opening a file cost gigabytes of memory."""
    try:
        if not is_sealed(data):
            raise ValueError("no key-file marker")
        (length,) = struct.unpack(">I", data[len(_MAGIC) : len(_MAGIC) + 4])
        start = len(_MAGIC) + 4
        header = json.loads(data[start : start + length])
        prefix, ciphertext = data[: start + length], data[start + length :]
        salt, nonce = _unb64(header["salt"]), _unb64(header["nonce"])
        cost = header["n"], header["r"], header["p"]
        if cost != (SCRYPT_N, SCRYPT_R, SCRYPT_P) or len(salt) != 16 or len(nonce) != 12:
            raise ValueError("scrypt cost or sizes other than ConceptVault writes")
    except (ValueError, KeyError, TypeError, AttributeError, struct.error):
        raise ConceptVaultError(f"{shown_as} is damaged (its header cannot be read).") from None
    if passphrase is None:
        raise ConceptVaultError(f"{shown_as} is protected by a passphrase; give its `passphrase`.")
    try:
        plaintext = AESGCM(_derive(passphrase, salt, *cost)).decrypt(nonce, ciphertext, prefix)
    except (InvalidTag, ValueError):
        raise ConceptVaultError(f"cannot open {shown_as}: the passphrase is wrong or the file was changed.") from None
    return header, plaintext


def read_key_file(path: Path, *, public_fingerprint: str, passphrase: str | None = None) -> tuple[str, Key]:
    """The concept name and the key in ``path``, checked against the vault it is loaded into."""
    if path.suffix == PROTECTED_SUFFIX:
        info, plaintext = unseal(_read_bytes(path), passphrase, f"the key file '{path}'")
        tensors = _tensors(plaintext, path)
    else:
        info, tensors = _read_plain(path)
    if not isinstance(info, dict) or info.get("format") != _FORMAT:
        raise ConceptVaultError(
            f"'{path}' is not a ConceptVault key file; replace it with the key file of its concept."
        )
    if info.get("public_fingerprint") != public_fingerprint:
        raise ConceptVaultError(
            f"the key file '{path}' belongs to another vault "
            f"(fingerprint {str(info.get('public_fingerprint'))[:12]}), "
            f"not this one ({public_fingerprint[:12]}); use the key file made with this vault."
        )
    try:
        key = key_from_tensors(tensors)
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError):
        raise ConceptVaultError(f"the key file '{path}' is damaged (its tensors are missing or misshaped).") from None
    if key_fingerprint(key) != info.get("key_fingerprint") or not isinstance(info.get("concept"), str):
        raise ConceptVaultError(f"the key file '{path}' is damaged (its tensors do not match its fingerprint).")
    return info["concept"], key


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConceptVaultError(f"the key file '{path}' cannot be read ({error.strerror}).") from None


def _tensors(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_tensors(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise ConceptVaultError(f"the key file '{path}' cannot be read ({error}); it is damaged.") from None


def _read_plain(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            info = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ConceptVaultError(
            f"the key file '{path}' cannot be read ({error}); it is damaged or not a key file."
        ) from None
    return info, tensors


def _prefix(header: bytes) -> bytes:
    return _MAGIC + struct.pack(">I", len(header)) + header


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)
