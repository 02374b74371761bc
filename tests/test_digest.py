"""Fingerprints are stored in every vault and key file, so their format must never drift: checked here against
the format written out by hand."""

from __future__ import annotations

import hashlib

import torch

from conceptvault.digest import tensor_digest

TENSORS = {"b.weight": torch.tensor([[1.5, -2.0]]), "a.bias": torch.tensor([0.25, 3.0, 7.0])}


def by_hand(tensors, dtype, with_dtype: bool) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update((f"{name}:{tuple(tensor.shape)}" + (f":{tensor.dtype}" if with_dtype else "")).encode())
        digest.update(tensor.to(dtype).numpy().tobytes())
    return digest.hexdigest()


def test_the_fingerprint_formats_stay_as_they_were_written():
    assert tensor_digest(TENSORS, cast=torch.float16) == by_hand(TENSORS, torch.float16, False)  # a model's
    assert tensor_digest(TENSORS, cast=torch.float32) == by_hand(TENSORS, torch.float32, False)  # a key's
    assert tensor_digest(TENSORS, with_dtype=True) == by_hand(TENSORS, torch.float32, True)  # a public part's
    assert tensor_digest(dict(reversed(TENSORS.items()))) == tensor_digest(TENSORS)  # order does not matter


def test_every_bit_counts():
    changed = {**TENSORS, "a.bias": torch.tensor([0.25, 3.0, 7.0000005])}
    assert tensor_digest(changed) != tensor_digest(TENSORS)
    assert tensor_digest({"x": torch.zeros(2, 3)}) != tensor_digest({"x": torch.zeros(3, 2)})
