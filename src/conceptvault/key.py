"""The key: learnable key/value tokens that enter the UNet's cross-attention through a processor.

A key for a concept is a pair ``p_k, p_v`` of ``m x d`` tensors. In every cross-attention layer of
its placement the text states ``c`` are extended: ``K = to_k([c; p_k])``, ``V = to_v([c; p_v])``.
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


class Key(nn.Module):
    """The learnable tokens of one key: ``p_k`` (for the attention keys) and ``p_v`` (for the values)."""

    def __init__(self, m: int, dim: int, init: torch.Tensor | None = None):
        super().__init__()
        if m < 1 or dim < 1:
            raise ValueError(f"a key needs m >= 1 tokens of width >= 1, got m={m}, dim={dim}.")
        if init is None:
            init = torch.zeros(m, dim)
        if tuple(init.shape) != (m, dim):
            raise ValueError(f"the key's initial tokens have shape {tuple(init.shape)}; expected ({m}, {dim}).")
        self.p_k = nn.Parameter(init.detach().clone().float())
        self.p_v = nn.Parameter(init.detach().clone().float())

    @property
    def m(self) -> int:
        return self.p_k.shape[0]

    @property
    def dim(self) -> int:
        return self.p_k.shape[1]


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

    def __init__(self, original: object, keys: dict[str, Key], attached: Sequence[str]):
        super().__init__()
        self.original = original
        self.keys = nn.ModuleDict({_module_name(name): key for name, key in keys.items()})
        self.attached = tuple(attached)

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
        return _keyed_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb, active)

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
) -> torch.Tensor:
    """Scaled dot-product attention over ``[c; p_k]`` keys and ``[c; p_v]`` values.

    Mirrors diffusers' ``AttnProcessor2_0.__call__`` (``diffusers/models/attention_processor.py``) step for
    step (spatial norm, group norm, cross norm, mask preparation, q/k norms, output projection, residual,
    rescale); the one change is that the key and value projections read the context extended by the keys'
    tokens. Keep it in step with that processor when diffusers changes it.
    """
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

    query = attn.to_q(hidden_states)
    key_context, value_context = _extend_context(context, keys)
    if attn.norm_cross:
        key_context = attn.norm_encoder_hidden_states(key_context)
        value_context = attn.norm_encoder_hidden_states(value_context)
    key = attn.to_k(key_context)
    value = attn.to_v(value_context)

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
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))

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
    device = next(unet.parameters()).device
    for key in prompt_keys.values():
        key.to(device)
    names = list(keys)
    processors = {
        name: KeyedAttnProcessor(original, prompt_keys if name in reached else {}, names)
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
