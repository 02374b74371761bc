"""One way to fingerprint tensors: SHA-256 over named tensors, the model's, a vault's public part or a key."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch


def tensor_digest(tensors: Mapping[str, torch.Tensor], *, cast: torch.dtype | None = None, with_dtype=False) -> str:
    """SHA-256 over ``tensors`` in name order: each one's name and shape (and dtype, ``with_dtype``), then its
    bytes, floating-point tensors cast to ``cast`` first (float16 makes a model loaded in either precision agree)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(f"{name}:{tuple(tensor.shape)}{f':{tensor.dtype}' if with_dtype else ''}".encode())
        if cast is not None and tensor.is_floating_point():
            tensor = tensor.to(cast)
        digest.update(tensor.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
