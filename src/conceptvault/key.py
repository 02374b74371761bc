"""The key: learnable key/value tokens that enter the UNet's cross-attention through a processor.

A key for a concept is a pair ``p_k, p_v`` of ``m x d`` tensors. In every cross-attention layer of
its placement the text states ``c`` are extended: ``K = to_k([c; p_k])``, ``V = to_v([c; p_v])``.
A key of rank ``r > 0`` also carries, for each of those layers, rank-``r`` changes of the query, key,
value and output projections (``to_q(x) + x A B``), on only while the key is: tokens alone reach only
what the public weights still know; the changes let the key undo part of what hiding changed.
Keys are switched on per call with ``cross_attention_kwargs={"keys": ["star"]}``; without that
switch every layer runs its original diffusers processor untouched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn

from .delta_key import _name, _slot  # a UNet name as a module name, and back


class Placement(str, Enum):
    """Which cross-attention layers receive the key."""

    MID = "mid"
    MID_UP = "mid+up"
    ALL = "all"


_CROSS_ATTENTION = "attn2.processor"
_BLOCK_PREFIXES = {
    Placement.MID: ("mid_block.",),
    Placement.MID_UP: ("mid_block.", "up_blocks."),
    Placement.ALL: ("",),
}


PROJECTIONS = ("q", "k", "v", "out")  # the cross-attention projections a key of rank > 0 changes


class ProjectionChanges(nn.Module):
    """Rank-``r`` changes of one cross-attention layer's projections: ``x -> x @ down @ up`` is added to each.
    ``up`` starts at zero, so a new key changes nothing until it is trained."""

    def __init__(self, shapes: dict[str, tuple[int, int]], rank: int, generator: torch.Generator | None = None):
        super().__init__()
        for projection in PROJECTIONS:
            rows, columns = shapes[projection]
            down = torch.randn(columns, rank, generator=generator) / columns**0.5
            self.register_parameter(f"{projection}_down", nn.Parameter(down))
            self.register_parameter(f"{projection}_up", nn.Parameter(torch.zeros(rank, rows)))

    def forward(self, projection: str, x: torch.Tensor) -> torch.Tensor:
        down, up = getattr(self, f"{projection}_down"), getattr(self, f"{projection}_up")
        return (x @ down.to(x.dtype)) @ up.to(x.dtype)


class Key(nn.Module):
    """The learnable tokens of one key: ``p_k`` (for the attention keys) and ``p_v`` (for the values), and,
    for a key of rank > 0, its projection changes by layer (``changes``; empty for rank 0)."""

    def __init__(
        self,
        m: int,
        dim: int,
        init: torch.Tensor | None = None,
        *,
        layers: dict[str, dict[str, tuple[int, int]]] | None = None,
        rank: int = 0,
        generator: torch.Generator | None = None,
    ):
        """``layers``: each reached layer's projection shapes (:func:`projection_shapes`), needed when ``rank``."""
        super().__init__()
        if m < 1 or dim < 1:
            raise ValueError(f"a key needs m >= 1 tokens of width >= 1, got m={m}, dim={dim}.")
        if init is None:
            init = torch.zeros(m, dim)
        if tuple(init.shape) != (m, dim):
            raise ValueError(f"the key's initial tokens have shape {tuple(init.shape)}; expected ({m}, {dim}).")
        self.p_k = nn.Parameter(init.detach().clone().float())
        self.p_v = nn.Parameter(init.detach().clone().float())
        self.changes = nn.ModuleDict(
            {_slot(layer): ProjectionChanges(shapes, rank, generator) for layer, shapes in (layers or {}).items()}
            if rank
            else {}
        )

    @property
    def m(self) -> int:
        return self.p_k.shape[0]

    @property
    def dim(self) -> int:
        return self.p_k.shape[1]

    @property
    def rank(self) -> int:
        return next(iter(self.changes.values())).q_up.shape[0] if self.changes else 0

    def tokens(self) -> list[nn.Parameter]:
        return [self.p_k, self.p_v]

    def change(self, layer: str) -> ProjectionChanges | None:
        """This key's projection changes in ``layer`` (a processor name), if it has any there."""
        return self.changes[_slot(layer)] if _slot(layer) in self.changes else None

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> Key:
        """The key whose ``state_dict`` these are; a ValueError names what does not fit."""
        layers: dict[str, dict[str, tuple[int, int]]] = {}
        ranks = set()
        for name, tensor in tensors.items():
            if name.startswith("changes.") and name.endswith("_up"):
                slot, projection = name.removeprefix("changes.").removesuffix("_up").rsplit(".", 1)
                down = tensors.get(f"changes.{slot}.{projection}_down")
                if down is None or tensor.ndim != 2 or down.ndim != 2:
                    raise ValueError(f"a projection change of the key is incomplete: {name}")
                layers.setdefault(_name(slot), {})[projection] = (tensor.shape[1], down.shape[0])
                ranks.add(tensor.shape[0])
        if len(ranks) > 1 or any(set(shapes) != set(PROJECTIONS) for shapes in layers.values()):
            raise ValueError("the key's projection changes do not fit together")
        key = cls(*tensors["p_k"].shape, layers=layers, rank=ranks.pop() if ranks else 0)
        key.load_state_dict(tensors)  # raises on a missing or unexpected tensor
        return key


def projection_shapes(unet: nn.Module, placement: Placement | str) -> dict[str, dict[str, tuple[int, int]]]:
    """The (out, in) shapes of the projections of each cross-attention layer the placement reaches."""
    modules = dict(unet.named_modules())
    shapes = {}
    for layer in placement_layers(unet, placement):
        attn = modules[layer.removesuffix(".processor")]
        linear = {"q": attn.to_q, "k": attn.to_k, "v": attn.to_v, "out": attn.to_out[0]}
        shapes[layer] = {name: tuple(module.weight.shape) for name, module in linear.items()}
    return shapes


def is_key_parameter(name: str) -> bool:
    """Whether a UNet ``state_dict`` / ``named_parameters`` name belongs to an attached key (it lives under an
    attention processor), rather than to the UNet's own weights. The one test used everywhere."""
    return ".processor." in name


def placement_layers(unet: nn.Module, placement: Placement | str) -> list[str]:
    """Names of the cross-attention processors (``...attn2.processor``) that a key with this placement reaches."""
    prefixes = _BLOCK_PREFIXES[Placement(placement)]
    return [name for name in unet.attn_processors if name.endswith(_CROSS_ATTENTION) and name.startswith(prefixes)]


def _module_name(key_name: str) -> str:
    """Module names may not contain dots; key names may."""
    return key_name.replace(".", "_")


class KeyedAttnProcessor(nn.Module):
    """Wraps a layer's original diffusers processor; adds the named keys' tokens when asked to.

    Installed on every attention layer of the UNet so that the ``keys`` switch is accepted everywhere;
    only the cross-attention layers of the placement hold keys. The key modules are children of this
    processor, so they appear in ``unet.state_dict()`` under ``...processor.keys.<name>``.
    """

    def __init__(self, original: object, keys: dict[str, Key], attached: Sequence[str], layer: str = ""):
        super().__init__()
        self.original = original
        self.keys = nn.ModuleDict({_module_name(name): key for name, key in keys.items()})
        self.attached = tuple(attached)
        self.layer = layer  # this processor's name in the UNet: where a key's projection changes are looked up

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        keys: Sequence[str] | str | None = None,
    ) -> torch.Tensor:
        active = self._active_keys(keys)
        if not active or encoder_hidden_states is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        changes = [change for key in active if (change := key.change(self.layer)) is not None]
        return _keyed_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb, active, changes)

    def _active_keys(self, names: Sequence[str] | str | None) -> list[Key]:
        if not names:
            return []
        names = [names] if isinstance(names, str) else list(names)
        unknown = [name for name in names if name not in self.attached]
        if unknown:
            raise ValueError(
                f"no key named {', '.join(map(repr, unknown))} is attached; attached keys: "
                f"{', '.join(map(repr, self.attached)) or 'none'}."
            )
        return [self.keys[_module_name(name)] for name in names if _module_name(name) in self.keys]


def _keyed_attention(
    attn: nn.Module,
    hidden_states: torch.Tensor,
    context: torch.Tensor,
    attention_mask: torch.Tensor | None,
    temb: torch.Tensor | None,
    keys: list[Key],
    changes: list[ProjectionChanges],
) -> torch.Tensor:
    """Scaled dot-product attention over ``[c; p_k]`` keys and ``[c; p_v]`` values, the keys' projection
    ``changes`` added to the projections.

    Mirrors diffusers' ``AttnProcessor2_0.__call__`` (``diffusers/models/attention_processor.py``) step for
    step (spatial norm, group norm, cross norm, mask preparation, q/k norms, output projection, residual,
    rescale); the changes are that the key and value projections read the context extended by the keys'
    tokens, and the projection changes. Keep it in step with that processor when diffusers changes it.
    """

    def project(name: str, linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return sum((change(name, x) for change in changes), linear(x))

    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch_size, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
    batch_size = context.shape[0]
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

    query = project("q", attn.to_q, hidden_states)
    key_context, value_context = _extend_context(context, keys)
    if attn.norm_cross:
        key_context = attn.norm_encoder_hidden_states(key_context)
        value_context = attn.norm_encoder_hidden_states(value_context)
    key = project("k", attn.to_k, key_context)
    value = project("v", attn.to_v, value_context)

    if attention_mask is not None:
        extra = key_context.shape[1] - attention_mask.shape[-1]
        attention_mask = F.pad(attention_mask, (0, extra), value=0.0)
        attention_mask = attn.prepare_attention_mask(attention_mask, key_context.shape[1], batch_size)
        attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)

    hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0)
    hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
    hidden_states = attn.to_out[1](project("out", attn.to_out[0], hidden_states))

    if input_ndim == 4:
        hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


def _extend_context(context: torch.Tensor, keys: list[Key]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[c; p_k...]`` and ``[c; p_v...]``, the key broadcast over the batch (both guidance branches)."""
    batch = context.shape[0]

    def tokens(tensors: list[torch.Tensor]) -> torch.Tensor:
        expanded = [t.to(device=context.device, dtype=context.dtype).expand(batch, -1, -1) for t in tensors]
        return torch.cat([context, *expanded], dim=1)

    return tokens([key.p_k for key in keys]), tokens([key.p_v for key in keys])


def attach_keys(unet: nn.Module, keys: dict, placement: Placement | str | None) -> None:
    """Install :class:`KeyedAttnProcessor` on every attention layer; the placement's layers hold the prompt
    keys (:class:`Key`). Delta keys (``delta_key.DeltaKey``) are installed on the UNet itself and need no
    placement. Every key, of either kind, is switched on per call by name."""
    from .delta_key import DeltaKey, install

    if attached_keys(unet):
        raise ValueError(
            f"keys are already attached ({', '.join(attached_keys(unet))}); call detach_keys(unet) first."
        )
    prompt_keys = {n: k for n, k in keys.items() if not isinstance(k, DeltaKey)}
    _check_keys(unet, prompt_keys)
    reached = set(placement_layers(unet, placement)) if prompt_keys else set()
    if prompt_keys and not reached:
        raise ValueError(
            f"the placement '{Placement(placement).value}' reaches no cross-attention layer of this UNet."
        )
    _check_changes(unet, prompt_keys, placement)
    device = next(unet.parameters()).device
    for key in prompt_keys.values():
        key.to(device)
    names = list(keys)
    processors = {
        name: KeyedAttnProcessor(original, prompt_keys if name in reached else {}, names, name)
        for name, original in unet.attn_processors.items()
    }
    unet.set_attn_processor(processors)
    delta_keys = {n: k for n, k in keys.items() if isinstance(k, DeltaKey)}
    if delta_keys:
        install(unet, delta_keys)


def _check_keys(unet: nn.Module, keys: dict[str, Key]) -> None:
    width = unet.config.cross_attention_dim
    for name, key in keys.items():
        if not name:
            raise ValueError("a key name must not be empty; name it after its concept.")
        if key.dim != width:
            raise ValueError(
                f"the key '{name}' has width {key.dim}, but this UNet's cross-attention width is {width}; "
                "make the key for this model."
            )
    module_names = [_module_name(name) for name in keys]
    if len(set(module_names)) != len(module_names):
        raise ValueError(f"key names {list(keys)} collide once dots are replaced; rename one of them.")


def _check_changes(unet: nn.Module, keys: dict[str, Key], placement: Placement | str) -> None:
    """A key's projection changes must fit the projections of exactly the layers its placement reaches."""
    ranked = {name: key for name, key in keys.items() if key.changes}
    if not ranked:
        return
    shapes = {_slot(layer): layer_shapes for layer, layer_shapes in projection_shapes(unet, placement).items()}
    for name, key in ranked.items():
        fits = set(key.changes) == set(shapes) and all(
            tuple(getattr(change, f"{projection}_up").shape[1:]) == shapes[slot][projection][:1]
            and tuple(getattr(change, f"{projection}_down").shape[:1]) == shapes[slot][projection][1:]
            for slot, change in key.changes.items()
            for projection in PROJECTIONS
        )
        if not fits:
            raise ValueError(
                f"the key '{name}' changes cross-attention layers that this UNet and placement do not have; "
                "make the key for this model."
            )


def attached_keys(unet: nn.Module) -> tuple[str, ...]:
    """Names of the keys attached to the UNet (empty when none are)."""
    return _attached_names(unet.attn_processors)


def detach_keys(unet: nn.Module) -> dict:
    """Restore every original processor (and the weights, for delta keys) exactly; return the keys that were
    attached."""
    from .delta_key import uninstall

    processors = unet.attn_processors
    if not any(isinstance(p, KeyedAttnProcessor) for p in processors.values()):
        return {}
    keys: dict = {}
    for processor in processors.values():
        if isinstance(processor, KeyedAttnProcessor):
            lookup = {_module_name(name): name for name in processor.attached}
            keys.update({lookup[module]: key for module, key in processor.keys.items()})
    keys.update(uninstall(unet))
    originals = {
        name: processor.original if isinstance(processor, KeyedAttnProcessor) else processor
        for name, processor in processors.items()
    }
    unet.set_attn_processor(originals)
    order = _attached_names(processors)
    return {name: keys[name] for name in order if name in keys}


def _attached_names(processors: dict) -> tuple[str, ...]:
    for processor in processors.values():
        if isinstance(processor, KeyedAttnProcessor):
            return processor.attached
    return ()


@contextmanager
def keys_attached(unet: nn.Module, keys: dict[str, Key], placement: Placement | str) -> Iterator[None]:
    """Attach ``keys`` for the duration of a ``with`` block, then restore the UNet exactly."""
    attach_keys(unet, keys, placement)
    try:
        yield
    finally:
        detach_keys(unet)
