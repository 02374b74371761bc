"""Key files: one per concept, plain safetensors or passphrase-protected (scrypt + AES-256-GCM).

Every key file names the vault it belongs to by the vault's public fingerprint and refuses to load
into another one. A protected file is ``MAGIC | header length | header JSON | ciphertext``; the
header (KDF parameters, salt, nonce, concept, fingerprints) is authenticated as associated data, so
changing any byte of the file makes decryption fail.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import struct
from pathlib import Path

import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from safetensors.torch import save_file

from .errors import ConceptVaultError
from .key import Key

PLAIN_SUFFIX = ".safetensors"
PROTECTED_SUFFIX = ".key"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_MAGIC = b"CONCEPTVAULT-KEY\x01"
_FORMAT = "conceptvault-key"


def key_fingerprint(key: Key) -> str:
    """SHA-256 over the key's two token tensors (float32 bytes)."""
    digest = hashlib.sha256()
    for name, tensor in (("p_k", key.p_k), ("p_v", key.p_v)):
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def key_slug(name: str) -> str:
    """A file-name-safe form of a concept name: ``"Five-pointed Star"`` -> ``"five-pointed-star"``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or hashlib.sha256(name.encode()).hexdigest()[:12]


def write_key_file(
    path: Path, key: Key, *, concept: str, public_fingerprint: str, passphrase: str | None = None
) -> None:
    """Write ``key`` to ``path`` (``.safetensors`` when plain, ``.key`` when a passphrase is given)."""
    tensors = {"p_k": key.p_k.detach().cpu().contiguous(), "p_v": key.p_v.detach().cpu().contiguous()}
    info = {
        "format": _FORMAT,
        "concept": concept,
        "public_fingerprint": public_fingerprint,
        "key_fingerprint": key_fingerprint(key),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    if passphrase is None:
        save_file(tensors, str(path), metadata=info)
        return
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
    secret = _derive(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    path.write_bytes(prefix + AESGCM(secret).encrypt(nonce, save_tensors(tensors), prefix))


def read_key_file(path: Path, *, public_fingerprint: str, passphrase: str | None = None) -> tuple[str, Key]:
    """The concept name and the key in ``path``, checked against the vault it is loaded into."""
    if path.suffix == PROTECTED_SUFFIX:
        info, tensors = _read_protected(path, passphrase)
    else:
        info, tensors = _read_plain(path)
    if info.get("format") != _FORMAT:
        raise ConceptVaultError(
            f"'{path}' is not a ConceptVault key file; replace it with the key file of its concept."
        )
    if info.get("public_fingerprint") != public_fingerprint:
        raise ConceptVaultError(
            f"the key file '{path}' belongs to another vault (fingerprint {str(info.get('public_fingerprint'))[:12]}), "
            f"not this one ({public_fingerprint[:12]}); use the key file made with this vault."
        )
    try:
        key = Key(*tensors["p_k"].shape, init=tensors["p_k"])
        key.p_v.data.copy_(tensors["p_v"])
    except (KeyError, ValueError, RuntimeError, TypeError):
        raise ConceptVaultError(f"the key file '{path}' is damaged (its tensors are missing or misshaped).") from None
    if key_fingerprint(key) != info.get("key_fingerprint"):
        raise ConceptVaultError(f"the key file '{path}' is damaged (its tensors do not match its fingerprint).")
    return info["concept"], key


def _read_plain(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            info = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ConceptVaultError(
            f"the key file '{path}' cannot be read ({error}); it is damaged or not a key file."
        ) from None
    return info, tensors


def _read_protected(path: Path, passphrase: str | None) -> tuple[dict, dict[str, torch.Tensor]]:
    data = path.read_bytes()
    try:
        if not data.startswith(_MAGIC):
            raise ValueError("no key-file marker")
        (length,) = struct.unpack(">I", data[len(_MAGIC) : len(_MAGIC) + 4])
        start = len(_MAGIC) + 4
        header = json.loads(data[start : start + length])
        prefix, ciphertext = data[: start + length], data[start + length :]
        salt, nonce = _unb64(header["salt"]), _unb64(header["nonce"])
        cost = int(header["n"]), int(header["r"]), int(header["p"])
        if not (2 <= cost[0] <= 2**20 and 1 <= cost[1] <= 32 and 1 <= cost[2] <= 16):
            raise ValueError("scrypt cost out of range")
    except (ValueError, KeyError, TypeError, struct.error):
        raise ConceptVaultError(f"the key file '{path}' is damaged (its header cannot be read).") from None
    if passphrase is None:
        raise ConceptVaultError(f"the key file '{path}' is protected by a passphrase; give it with --passphrase-file.")
    try:
        plaintext = AESGCM(_derive(passphrase, salt, *cost)).decrypt(nonce, ciphertext, prefix)
    except (InvalidTag, ValueError):
        raise ConceptVaultError(
            f"cannot open the key file '{path}': the passphrase is wrong or the file was changed."
        ) from None
    return header, load_tensors(plaintext)


def _prefix(header: bytes) -> bytes:
    return _MAGIC + struct.pack(">I", len(header)) + header


def _derive(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)
