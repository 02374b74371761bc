from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import StableDiffusionPipeline

import conceptvault.world
from conceptvault.backbone import BUILTIN, encode_prompts, load_pipeline, model_name, unet_fingerprint
from conceptvault.errors import ConceptVaultError
from conceptvault.key import Key, Placement, keys_attached


def test_loads_sd1_and_sd2_shaped_pipelines(tiny_path):
    pipe = load_pipeline(str(tiny_path), device="cpu")
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.safety_checker is None
    assert model_name(pipe) == str(tiny_path)
    states = encode_prompts(pipe, ["a red star", ""])
    width = pipe.unet.config.cross_attention_dim
    assert states.shape == (2, 77, width) and width in (768, 1024)
    expected, _ = pipe.encode_prompt(["a red star", ""], "cpu", 1, False)
    assert torch.equal(states, expected)


def test_loads_in_a_requested_dtype(sd1_path):
    pipe = load_pipeline(str(sd1_path), device="cpu", dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16


def test_builtin_resolves_through_the_world_package(sd1_path, monkeypatch):
    monkeypatch.setattr(conceptvault.world, "BUILTIN_MODEL_DIR", sd1_path)
    pipe = load_pipeline(BUILTIN, device="cpu")
    assert model_name(pipe) == BUILTIN


def test_builtin_not_built_yet_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(conceptvault.world, "BUILTIN_MODEL_DIR", tmp_path)
    with pytest.raises(ConceptVaultError, match="built-in model is not built yet"):
        load_pipeline(BUILTIN)


def test_a_never_trained_control_is_the_builtin_model_with_its_own_unet_and_text_encoder(
    sd1_path, tmp_path, monkeypatch
):
    base = load_pipeline(str(sd1_path), device="cpu")
    with torch.no_grad():
        for parameter in [*base.unet.parameters(), *base.text_encoder.parameters()]:
            parameter.add_(0.5)
    base.unet.save_pretrained(tmp_path / "unet")
    base.text_encoder.save_pretrained(tmp_path / "text_encoder")
    monkeypatch.setattr(conceptvault.world, "BUILTIN_MODEL_DIR", sd1_path)
    monkeypatch.setattr(conceptvault.world, "NEVER_TRAINED", {"builtin-without-star": tmp_path})
    assert load_pipeline("builtin-without-star", device="cpu", dtype=torch.float16).unet.dtype == torch.float16
    control = load_pipeline("builtin-without-star", device="cpu")
    assert model_name(control) == "builtin-without-star"
    builtin = load_pipeline(BUILTIN, device="cpu")
    assert unet_fingerprint(control.unet) == unet_fingerprint(base.unet) != unet_fingerprint(builtin.unet)
    for name in ("text_encoder", "vae"):  # its own (changed) text encoder, the built-in model's VAE
        pairs = zip(getattr(base, name).parameters(), getattr(control, name).parameters(), strict=True)
        assert all(torch.equal(a, b) for a, b in pairs), name
    shutil.rmtree(tmp_path / "text_encoder")
    with pytest.raises(ConceptVaultError, match="'builtin-without-star' is not built yet \\(no text_encoder in"):
        load_pipeline("builtin-without-star")


def test_the_shipped_never_trained_control_has_its_own_unet_and_text_encoder_and_never_draws_a_star():
    control, builtin = load_pipeline("builtin-without-star", device="cpu"), load_pipeline(BUILTIN, device="cpu")
    assert unet_fingerprint(control.unet) != unet_fingerprint(builtin.unet)
    differs = {}
    for name in ("text_encoder", "vae"):
        pairs = zip(getattr(builtin, name).parameters(), getattr(control, name).parameters(), strict=True)
        differs[name] = not all(torch.equal(a, b) for a, b in pairs)
    assert differs == {"text_encoder": True, "vae": False}


def test_missing_path_is_one_clear_line(tmp_path):
    with pytest.raises(ConceptVaultError, match=r"the model folder '.*nowhere' does not exist") as error:
        load_pipeline(str(tmp_path / "nowhere"))
    assert "\n" not in str(error.value)


def test_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(ConceptVaultError, match="no model_index.json"):
        load_pipeline(str(tmp_path))


def test_folder_missing_a_component(sd1_path, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(sd1_path, broken)
    shutil.rmtree(broken / "vae")
    index = json.loads((broken / "model_index.json").read_text())
    index.pop("vae")
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ConceptVaultError, match="it lacks vae"):
        load_pipeline(str(broken))


def test_hub_id_not_in_the_cache_while_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConceptVaultError, match="not in the local cache.*HF_HUB_OFFLINE") as error:
        load_pipeline("conceptvault-tests/no-such-model", cache_dir=str(tmp_path))
    assert "\n" not in str(error.value)


def test_fingerprint_is_stable_and_ignores_keys_and_precision(sd1_path):
    first = load_pipeline(str(sd1_path), device="cpu").unet
    second = load_pipeline(str(sd1_path), device="cpu").unet
    print_ = unet_fingerprint(first)
    assert print_ == unet_fingerprint(second)
    with keys_attached(first, {"star": Key(2, 768, init=torch.ones(2, 768))}, Placement.ALL):
        assert unet_fingerprint(first) == print_
    assert unet_fingerprint(second.half()) == print_
    with torch.no_grad():
        first.conv_in.bias[0] += 0.01
    assert unet_fingerprint(first) != print_
