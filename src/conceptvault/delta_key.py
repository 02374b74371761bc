"""A key that is a change of the UNet's own weights: the sealed method's key.

Where a prompt key (``key.Key``) only unlocks what the public weights still know, a delta key carries
the knowledge itself: ``public + delta`` is the model with the concept. A delta is kept per tensor,
whole or as a truncated SVD (``U @ V``, conv kernels flattened to 2-D), so the key file can be much
smaller than the weights it changes.

A delta key is switched on per call like a prompt key, with ``cross_attention_kwargs={"keys": [name]}``:
a forward pre-hook on the UNet adds the delta to the weights for that call, and a forward hook puts the
public values back exactly (they are copied, not subtracted, so nothing drifts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

_HOOKS = "_conceptvault_delta_hooks"  # on the UNet: (pre-hook, hook, restore(), the attached delta keys)


def _slot(name: str) -> str:
    """Parameter names may not contain dots; UNet tensor names never contain a double underscore."""
    return name.replace(".", "__")


def _name(slot: str) -> str:
    return slot.replace("__", ".")


def factored_size(shape: Sequence[int], rank: int) -> int | None:
    """Numbers a rank-``rank`` delta of a tensor of ``shape`` (flattened to rows x the rest) stores, or None
    where the tensor is kept whole: no rank asked, a 1-D tensor, or factors no smaller than the tensor."""
    if not rank or len(shape) < 2:
        return None
    rows, columns = shape[0], math.prod(shape[1:])
    return rank * (rows + columns) if rank * (rows + columns) < rows * columns else None


def key_size(shapes: Sequence[Sequence[int]], rank: int) -> int:
    """Numbers a delta key stores for a change of every tensor of ``shapes`` (what :meth:`DeltaKey.size`
    gives when each tensor has changed), from the shapes alone."""
    return sum(factored_size(shape, rank) or math.prod(shape) for shape in shapes)


class DeltaKey(nn.Module):
    """Per-tensor weight changes, by the UNet's ``state_dict`` names; each whole or as factors ``u @ v``."""

    def __init__(
        self,
        whole: dict[str, torch.Tensor] | None = None,
        factors: dict[str, tuple] | None = None,
        shapes: dict[str, tuple[int, ...]] | None = None,
    ):
        super().__init__()
        self.whole = nn.ParameterDict(
            {_slot(n): nn.Parameter(t.float(), requires_grad=False) for n, t in (whole or {}).items()}
        )
        self.u = nn.ParameterDict(
            {_slot(n): nn.Parameter(u.float(), requires_grad=False) for n, (u, _) in (factors or {}).items()}
        )
        self.v = nn.ParameterDict(
            {_slot(n): nn.Parameter(v.float(), requires_grad=False) for n, (_, v) in (factors or {}).items()}
        )
        self.shapes = {n: tuple(s) for n, s in (shapes or {}).items()}
        self.names = sorted([*(whole or {}), *(factors or {})])

    @classmethod
    def between(cls, public: dict[str, torch.Tensor], original: dict[str, torch.Tensor], rank: int = 0) -> DeltaKey:
        """The key that turns ``public`` back into ``original``: whole (``rank`` 0) or each tensor's best
        rank-``rank`` approximation where that is smaller than the tensor."""
        whole, factors, shapes = {}, {}, {}
        for name, tensor in public.items():
            delta = (original[name].float() - tensor.float()).cpu()
            if factored_size(delta.shape, rank) is not None:
                u, s, vh = torch.linalg.svd(delta.reshape(delta.shape[0], -1), full_matrices=False)
                factors[name] = (u[:, :rank] * s[:rank], vh[:rank])
                shapes[name] = tuple(delta.shape)
            elif delta.abs().max() > 0:
                whole[name] = delta
        return cls(whole, factors, shapes)

    def delta(self, name: str) -> torch.Tensor:
        slot = _slot(name)
        if slot in self.whole:
            return self.whole[slot]
        return (self.u[slot] @ self.v[slot]).reshape(self.shapes[name])

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything the key file stores, by stable names."""
        out = {f"whole.{_slot(n)}": p.detach() for n, p in zip(self._whole_names(), self.whole.values(), strict=True)}
        for name in self._factor_names():
            out[f"u.{_slot(name)}"] = self.u[_slot(name)].detach()
            out[f"v.{_slot(name)}"] = self.v[_slot(name)].detach()
            out[f"shape.{_slot(name)}"] = torch.tensor(self.shapes[name], dtype=torch.int64)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> DeltaKey:
        """Inverse of :meth:`tensors`; a missing or misshaped part raises KeyError or ValueError."""
        whole = {_name(k[6:]): t for k, t in tensors.items() if k.startswith("whole.")}
        factors = {_name(k[2:]): (t, tensors[f"v.{k[2:]}"]) for k, t in tensors.items() if k.startswith("u.")}
        shapes = {
            _name(k[6:]): tuple(int(x) for x in t.tolist()) for k, t in tensors.items() if k.startswith("shape.")
        }
        key = cls(whole, factors, shapes)
        for name in factors:
            key.delta(name)  # the factors multiply out to the recorded shape, or this raises
        return key

    def _whole_names(self) -> list[str]:
        return [n for n in self.names if _slot(n) in self.whole]

    def _factor_names(self) -> list[str]:
        return [n for n in self.names if _slot(n) in self.u]

    def size(self) -> int:
        """Numbers stored."""
        return sum(p.numel() for p in self.parameters())


def install(unet: nn.Module, keys: dict[str, DeltaKey]) -> None:
    """Let ``keys`` be switched on per call through ``cross_attention_kwargs={"keys": [...]}``."""
    state = dict(unet.named_parameters())
    missing = sorted({n for key in keys.values() for n in key.names} - set(state))
    if missing:
        raise ValueError(f"the delta key changes tensors this UNet does not have ({missing[:3]}); use its base model.")
    saved: dict[str, torch.Tensor] = {}

    def restore() -> None:
        with torch.no_grad():
            for name, value in saved.items():
                state[name].copy_(value)
        saved.clear()

    def before(module, args, kwargs):
        restore()  # a call that failed half-way must not leave a delta merged
        names = (kwargs.get("cross_attention_kwargs") or {}).get("keys") or []
        active = [keys[n] for n in ([names] if isinstance(names, str) else names) if n in keys]
        with torch.no_grad():
            for key in active:
                for name in key.names:
                    parameter = state[name]
                    saved.setdefault(name, parameter.detach().clone())
                    parameter.add_(key.delta(name).to(parameter))

    def after(module, args, output):
        restore()

    for key in keys.values():
        key.to(next(unet.parameters()).device)
    handles = (unet.register_forward_pre_hook(before, with_kwargs=True), unet.register_forward_hook(after))
    setattr(unet, _HOOKS, (*handles, restore, dict(keys)))


def uninstall(unet: nn.Module) -> dict[str, DeltaKey]:
    """Remove the hooks; returns the delta keys that were attached."""
    installed = getattr(unet, _HOOKS, None)
    if installed is None:
        return {}
    before, after, restore, keys = installed
    restore()
    before.remove()
    after.remove()
    delattr(unet, _HOOKS)
    return keys
