from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models import attention_processor
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from conceptvault.key import (
    Key,
    KeyedAttnProcessor,
    Placement,
    attach_keys,
    attached_keys,
    detach_keys,
    keys_attached,
    placement_layers,
    projection_shapes,
)


def load(path) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unet_inputs(unet, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 4, 16, 16, generator=g)
    t = torch.tensor([500] * batch)
    states = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    return z, t, states


def random_key(unet, m: int = 3, seed: int = 1) -> Key:
    g = torch.Generator().manual_seed(seed)
    key = Key(m, unet.config.cross_attention_dim, init=torch.randn(m, unet.config.cross_attention_dim, generator=g))
    with torch.no_grad():
        key.p_v.mul_(-1.0)  # keys and values get different tokens
    return key


def cross_attention_modules(unet) -> dict[str, Attention]:
    return {name: module for name, module in unet.named_modules() if isinstance(module, Attention)}


def test_placements_reach_the_expected_layers(sd1_path):
    unet = load(sd1_path).unet
    mid = placement_layers(unet, Placement.MID)
    mid_up = placement_layers(unet, "mid+up")
    every = placement_layers(unet, Placement.ALL)
    assert mid == ["mid_block.attentions.0.transformer_blocks.0.attn2.processor"]
    assert len(mid_up) == 5 and set(mid) < set(mid_up)
    assert len(every) == 7 and set(mid_up) < set(every)
    assert all(name.endswith("attn2.processor") for name in every)


@torch.no_grad()
def test_without_a_key_the_output_is_diffusers_own(tiny_path):
    unet = load(tiny_path).unet
    z, t, states = unet_inputs(unet)
    plain = unet(z, t, states).sample
    with keys_attached(unet, {"star": random_key(unet)}, Placement.ALL):
        assert all(isinstance(p, KeyedAttnProcessor) for p in unet.attn_processors.values())
        wrapped = unet(z, t, states).sample
        empty = unet(z, t, states, cross_attention_kwargs={"keys": []}).sample
        keyed = unet(z, t, states, cross_attention_kwargs={"keys": ["star"]}).sample
    assert torch.equal(plain, wrapped) and torch.equal(plain, empty)
    assert not torch.allclose(plain, keyed)


@torch.no_grad()
def test_pipeline_output_is_unchanged_by_attaching(tiny_path):
    pipe = load(tiny_path)

    def run(**kwargs):
        g = torch.Generator().manual_seed(0)
        return pipe("a red star", num_inference_steps=2, generator=g, output_type="np", **kwargs).images

    plain = run()
    attach_keys(pipe.unet, {"star": random_key(pipe.unet)}, Placement.MID)
    assert (run() == plain).all()
    assert not (run(cross_attention_kwargs={"keys": ["star"]}) == plain).all()


@torch.no_grad()
def test_keyed_attention_equals_appending_tokens_when_keys_and_values_match(tiny_path):
    """With p_k == p_v the key is the same as extra context tokens, computed by diffusers' own processor."""
    unet = load(tiny_path).unet
    tokens = torch.randn(4, unet.config.cross_attention_dim)
    attn = cross_attention_modules(unet)["mid_block.attentions.0.transformer_blocks.0.attn2"]
    hidden = torch.randn(2, 64, attn.to_q.in_features)
    context = torch.randn(2, 77, unet.config.cross_attention_dim)
    processor = KeyedAttnProcessor(AttnProcessor2_0(), {"star": Key(4, tokens.shape[1], init=tokens)}, ["star"])
    keyed = processor(attn, hidden, context, keys=["star"])
    appended = AttnProcessor2_0()(attn, hidden, torch.cat([context, tokens.expand(2, -1, -1)], dim=1))
    torch.testing.assert_close(keyed, appended, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("placement", list(Placement))
@torch.no_grad()
def test_a_key_changes_only_the_cross_attention_layers_of_its_placement(tiny_path, placement):
    unet = load(tiny_path).unet
    z, t, states = unet_inputs(unet)
    calls: dict[str, tuple] = {}

    def recorder(name):
        def hook(module, args, kwargs):
            calls[name] = (args, kwargs)

        return hook

    attach_keys(unet, {"star": random_key(unet)}, placement)
    modules = cross_attention_modules(unet)
    handles = [module.register_forward_pre_hook(recorder(name), with_kwargs=True) for name, module in modules.items()]
    unet(z, t, states)
    for handle in handles:
        handle.remove()

    changed = set()
    for name, (args, kwargs) in calls.items():
        kwargs = {k: v for k, v in kwargs.items() if k != "cross_attention_kwargs"}
        without = modules[name](*args, **kwargs)
        with_key = modules[name](*args, **kwargs, keys=["star"])
        if not torch.equal(without, with_key):
            changed.add(name + ".processor")
    assert len(calls) == 14
    assert changed == set(placement_layers(unet, placement))


@torch.no_grad()
def test_with_guidance_the_key_reaches_both_branches(sd1_path):
    pipe = load(sd1_path)
    attach_keys(pipe.unet, {"star": random_key(pipe.unet)}, Placement.MID)
    attn = cross_attention_modules(pipe.unet)["mid_block.attentions.0.transformer_blocks.0.attn2"]
    seen = []
    handle = attn.register_forward_hook(
        lambda m, args, kwargs, out: seen.append((args, kwargs, out)), with_kwargs=True
    )
    pipe(
        "a star",
        num_inference_steps=1,
        guidance_scale=7.5,
        output_type="latent",
        cross_attention_kwargs={"keys": ["star"]},
        generator=torch.Generator().manual_seed(0),
    )
    handle.remove()
    ((args, kwargs, keyed),) = seen
    kwargs = {k: v for k, v in kwargs.items() if k != "keys"}
    plain = attn(*args, **kwargs)
    assert keyed.shape[0] == 2  # unconditional and conditional branch in one batch
    for branch in range(2):
        assert not torch.allclose(keyed[branch], plain[branch])


def test_detach_restores_the_unet_exactly(tiny_path):
    unet = load(tiny_path).unet
    types_before = {name: type(p) for name, p in unet.attn_processors.items()}
    state_before = {name: tensor.clone() for name, tensor in unet.state_dict().items()}
    key = random_key(unet)

    attach_keys(unet, {"star": key, "St. Heart": random_key(unet, seed=2)}, Placement.MID_UP)
    assert attached_keys(unet) == ("star", "St. Heart")
    assert any(".processor.keys.star.p_k" in name for name in unet.state_dict())
    returned = detach_keys(unet)

    assert returned["star"] is key and set(returned) == {"star", "St. Heart"}
    assert {name: type(p) for name, p in unet.attn_processors.items()} == types_before
    state_after = unet.state_dict()
    assert list(state_after) == list(state_before)
    assert all(torch.equal(state_after[name], tensor) for name, tensor in state_before.items())
    assert detach_keys(unet) == {}


def test_key_errors_name_the_bad_value(sd1_path):
    unet = load(sd1_path).unet
    z, t, states = unet_inputs(unet, batch=1)
    attach_keys(unet, {"star": random_key(unet)}, Placement.MID)
    with pytest.raises(ValueError, match=r"no key named 'heart'.*attached keys: 'star'"):
        unet(z, t, states, cross_attention_kwargs={"keys": ["heart"]})
    with pytest.raises(ValueError, match="already attached"):
        attach_keys(unet, {"heart": random_key(unet)}, Placement.MID)
    detach_keys(unet)
    with pytest.raises(ValueError, match="width 1024.*768"):
        attach_keys(unet, {"star": Key(2, 1024)}, Placement.MID)
    with pytest.raises(ValueError, match=r"shape \(3, 8\); expected \(2, 8\)"):
        Key(2, 8, init=torch.zeros(3, 8))


@torch.no_grad()
def test_the_keys_switch_raises_no_diffusers_warning(sd1_path, monkeypatch):
    unet = load(sd1_path).unet
    warnings: list[str] = []
    monkeypatch.setattr(attention_processor.logger, "warning", lambda message, *a, **k: warnings.append(message))
    z, t, states = unet_inputs(unet, batch=1)
    attach_keys(unet, {"star": random_key(unet)}, Placement.MID)
    unet(z, t, states, cross_attention_kwargs={"keys": ["star"]})
    assert warnings == []


def test_key_gradients_reach_both_token_sets(sd1_path):
    unet = load(sd1_path).unet
    key = random_key(unet)
    z, t, states = unet_inputs(unet, batch=1)
    with keys_attached(unet, {"star": key}, Placement.MID):
        unet(z, t, states, cross_attention_kwargs={"keys": "star"}).sample.square().mean().backward()
    assert key.p_k.grad.abs().sum() > 0 and key.p_v.grad.abs().sum() > 0


def ranked_key(unet, placement=Placement.ALL, rank: int = 2, seed: int = 1) -> Key:
    """A key with projection changes, its ``up`` factors made non-zero as training would."""
    g = torch.Generator().manual_seed(seed)
    width = unet.config.cross_attention_dim
    key = Key(3, width, init=torch.randn(3, width, generator=g), layers=projection_shapes(unet, placement), rank=rank)
    with torch.no_grad():
        for name, parameter in key.changes.named_parameters():
            if name.endswith("_up"):
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=g))
    return key


@torch.no_grad()
def test_a_ranked_key_changes_the_projections_only_while_it_is_on(tiny_path):
    unet = load(tiny_path).unet
    z, t, states = unet_inputs(unet)
    plain = unet(z, t, states).sample
    key = ranked_key(unet)
    tokens_only = Key(key.m, key.dim, init=key.p_k)
    tokens_only.p_v.copy_(key.p_v)
    with keys_attached(unet, {"tokens": tokens_only}, Placement.ALL):
        with_tokens = unet(z, t, states, cross_attention_kwargs={"keys": ["tokens"]}).sample
    with keys_attached(unet, {"star": key}, Placement.ALL):
        torch.testing.assert_close(unet(z, t, states).sample, plain)  # attached, off: the model as it was
        with_changes = unet(z, t, states, cross_attention_kwargs={"keys": ["star"]}).sample
        for name, parameter in key.changes.named_parameters():  # changes of zero, as a new key's: tokens alone
            if name.endswith("_up"):
                parameter.zero_()
        torch.testing.assert_close(unet(z, t, states, cross_attention_kwargs={"keys": ["star"]}).sample, with_tokens)
    assert key.rank == 2 and len(key.changes) == len(placement_layers(unet, Placement.ALL))
    assert (with_changes - with_tokens).abs().max() > 1e-3


def test_a_ranked_key_refuses_a_unet_or_placement_it_was_not_made_for(tiny_path):
    unet = load(tiny_path).unet
    key = ranked_key(unet, Placement.MID)
    with pytest.raises(ValueError, match="changes cross-attention layers that this UNet and placement do not have"):
        attach_keys(unet, {"star": key}, Placement.ALL)
    assert not attached_keys(unet)
    attach_keys(unet, {"star": key}, Placement.MID)
    assert attached_keys(unet) == ("star",)


def test_a_ranked_key_is_rebuilt_from_its_tensors(tiny_path):
    unet = load(tiny_path).unet
    key = ranked_key(unet)
    rebuilt = Key.from_tensors(key.state_dict())
    assert rebuilt.rank == key.rank and set(rebuilt.state_dict()) == set(key.state_dict())
    assert all(torch.equal(rebuilt.state_dict()[n], t) for n, t in key.state_dict().items())
    broken = {n: t for n, t in key.state_dict().items() if not n.endswith("q_down")}
    with pytest.raises(ValueError, match="incomplete"):
        Key.from_tensors(broken)
