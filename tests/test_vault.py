from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from conceptvault import vault as vault_module
from conceptvault.backbone import encode_prompts, load_pipeline
from conceptvault.concepts import Concept
from conceptvault.errors import ConceptVaultError
from conceptvault.key import attached_keys
from conceptvault.methods.kpop import HideConfig, hide
from conceptvault.vault import MANIFEST_FILE, PUBLIC_FILE, Vault, save_vault

CONCEPTS = [Concept.parse("star|five-pointed star"), Concept("heart", anchor="a shape")]
CONFIG = HideConfig(model_updates=2, sampler_steps=4, m=3, lr=1e-3, key_lr=1e-3, checkpoint_every=0)


@pytest.fixture(scope="module")
def hidden(sd1_path):
    """A pipeline after a short hide, with its result (module-wide: treat as read-only)."""
    pipe = load_pipeline(str(sd1_path), device="cpu")
    result = hide(pipe, CONCEPTS, CONFIG, preserve=["a circle"], progress=False)
    return pipe, result


@pytest.fixture
def saved(hidden, tmp_path):
    pipe, result = hidden
    path = tmp_path / "vault"
    save_vault(path, pipe, result)
    return path


def predictions(pipe, keys=None):
    g = torch.Generator().manual_seed(3)
    z, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([100, 700])
    states = encode_prompts(pipe, ["star", "a circle"])
    options = {"keys": keys} if keys else None
    with torch.no_grad():
        return pipe.unet(z, t, states, cross_attention_kwargs=options).sample


def test_layout_and_manifest(saved, hidden):
    _, result = hidden
    assert sorted(p.name for p in saved.iterdir()) == sorted([MANIFEST_FILE, "keys", PUBLIC_FILE])
    assert sorted(p.name for p in (saved / "keys").iterdir()) == ["heart.safetensors", "star.safetensors"]
    manifest = json.loads((saved / MANIFEST_FILE).read_text())
    assert manifest["format_version"] == 3 and manifest["method"] == "kpop"
    assert [e["action"] for e in manifest["history"]] == ["hide"] and manifest["history"][0]["concepts"]
    assert manifest["placement"] == "mid" and manifest["m"] == 3
    assert manifest["base_fingerprint"] == result.base_fingerprint
    assert manifest["config"] == CONFIG.to_dict() and manifest["preserve"] == ["a circle"]
    assert [c["name"] for c in manifest["concepts"]] == ["star", "heart"]
    assert manifest["concepts"][0]["prompts"] == ["star", "five-pointed star"]
    assert manifest["concepts"][1]["anchor"] == "a shape"
    assert manifest["stats"]["probe"]["after"]["L_hide"] > 0
    assert list(manifest) == sorted(manifest)


def test_round_trip_is_bit_exact(saved, hidden, sd1_path):
    pipe, result = hidden
    loaded = Vault.load(saved)
    assert loaded.public.keys() == result.public.keys()
    assert all(torch.equal(loaded.public[n], result.public[n]) for n in result.public)
    for name, key in result.keys.items():
        assert torch.equal(loaded.keys[name].p_k, key.p_k.cpu()) and torch.equal(loaded.keys[name].p_v, key.p_v.cpu())

    base = load_pipeline(str(sd1_path), device="cpu")
    loaded.apply(base)
    assert attached_keys(base.unet) == ("star", "heart")
    for keys in (None, ["star"], ["star", "heart"]):
        assert torch.equal(predictions(base, keys), predictions(pipe, keys))


def test_loading_chosen_keys_or_none(saved, sd1_path):
    assert Vault.load(saved, keys=None).keys == {}
    assert list(Vault.load(saved, keys=["heart"]).keys) == ["heart"]
    with pytest.raises(ConceptVaultError, match="no key named 'moon'; its concepts are 'star', 'heart'"):
        Vault.load(saved, keys=["moon"])
    (saved / "keys" / "heart.safetensors").unlink()
    assert list(Vault.load(saved).keys) == ["star"]
    with pytest.raises(ConceptVaultError, match="the key for 'heart' is not in"):
        Vault.load(saved, keys=["heart"])
    public_only = Vault.load(saved, keys=None)
    base = load_pipeline(str(sd1_path), device="cpu")
    public_only.apply(base)
    assert attached_keys(base.unet) == ()


def test_save_is_atomic_and_never_half_written(hidden, tmp_path, monkeypatch):
    pipe, result = hidden
    target = tmp_path / "vault"

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(vault_module, "write_key_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_vault(target, pipe, result)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    save_vault(target, pipe, result)
    assert [p.name for p in tmp_path.iterdir()] == ["vault"]
    with pytest.raises(ConceptVaultError, match="already exists"):
        save_vault(target, pipe, result)


def test_passphrase_protected_keys(hidden, tmp_path):
    pipe, result = hidden
    path = tmp_path / "vault"
    save_vault(path, pipe, result, passphrase="correct horse")
    assert sorted(p.name for p in (path / "keys").iterdir()) == ["heart.key", "star.key"]
    assert Vault.load(path, keys=None).public  # the public part needs no passphrase
    with pytest.raises(ConceptVaultError, match="protected by a passphrase"):
        Vault.load(path, keys=["star"])
    with pytest.raises(ConceptVaultError, match="passphrase is wrong"):
        Vault.load(path, keys=["star"], passphrase="wrong horse")
    loaded = Vault.load(path, keys=["star"], passphrase="correct horse")
    assert torch.equal(loaded.keys["star"].p_k, result.keys["star"].p_k.cpu())


def test_a_key_file_from_another_vault_is_refused(hidden, saved, tmp_path):
    pipe, result = hidden
    other_public = {name: tensor + 1e-3 for name, tensor in result.public.items()}
    other = tmp_path / "other"
    save_vault(other, pipe, dataclasses.replace(result, public=other_public))
    shutil.copy(other / "keys" / "star.safetensors", saved / "keys" / "star.safetensors")
    with pytest.raises(ConceptVaultError, match="belongs to another vault"):
        Vault.load(saved, keys=["star"])


def test_a_different_base_model_is_refused(saved, sd2_path, sd1_path):
    loaded = Vault.load(saved)
    with pytest.raises(
        ConceptVaultError,
        match=r"this vault was made for '.*' \(fingerprint [0-9a-f]{12}\), "
        r"but the model given has fingerprint [0-9a-f]{12}; load",
    ) as error:
        loaded.apply(load_pipeline(str(sd2_path), device="cpu"))
    assert "\n" not in str(error.value)
    tweaked = load_pipeline(str(sd1_path), device="cpu")
    with torch.no_grad():
        tweaked.unet.conv_out.bias[0] += 1e-3
    with pytest.raises(ConceptVaultError, match="this vault was made for"):
        loaded.apply(tweaked)


def test_damaged_vaults_are_one_line_errors(saved, tmp_path):
    with pytest.raises(ConceptVaultError, match="not a ConceptVault vault"):
        Vault.load(tmp_path / "nowhere")
    public = Vault.load(saved, keys=None).public
    name = sorted(public)[0]
    save_file(dict(public, **{name: public[name] + 1}), str(saved / PUBLIC_FILE))
    with pytest.raises(ConceptVaultError, match="does not match the vault's manifest"):
        Vault.load(saved)
    (saved / PUBLIC_FILE).write_bytes(b"\x00" * 12)
    with pytest.raises(ConceptVaultError, match="cannot be read"):
        Vault.load(saved)
    (saved / MANIFEST_FILE).write_text("{ not json")
    with pytest.raises(ConceptVaultError, match="damaged"):
        Vault.load(saved)


def test_unknown_manifest_fields_and_newer_formats_are_refused(saved):
    manifest = json.loads((saved / MANIFEST_FILE).read_text())
    (saved / MANIFEST_FILE).write_text(json.dumps(dict(manifest, future_field=1)))
    with pytest.raises(ConceptVaultError, match="does not know: 'future_field'"):
        Vault.load(saved)
    (saved / MANIFEST_FILE).write_text(json.dumps(dict(manifest, format_version=99)))
    with pytest.raises(ConceptVaultError, match="format version 99.*upgrade"):
        Vault.load(saved)


def test_a_version_1_manifest_still_loads_as_a_kpop_vault(saved):
    manifest = json.loads((saved / MANIFEST_FILE).read_text())
    del manifest["method"]
    (saved / MANIFEST_FILE).write_text(json.dumps(dict(manifest, format_version=1)))
    assert Vault.load(saved).method.name == "kpop"


def test_export_writes_a_plain_diffusers_pipeline(saved, hidden, sd1_path, tmp_path):
    pipe, _ = hidden
    loaded = Vault.load(saved)
    base = load_pipeline(str(sd1_path), device="cpu")
    out = tmp_path / "public-model"
    loaded.export(base, out)
    assert attached_keys(base.unet) == ("star", "heart")  # the keys come back after writing
    assert not list(tmp_path.glob("*.tmp-*"))
    with pytest.raises(ConceptVaultError, match="already exists"):
        loaded.export(base, out)

    plain = StableDiffusionPipeline.from_pretrained(out)
    assert not any(".processor." in name for name in plain.unet.state_dict())
    plain.set_progress_bar_config(disable=True)
    image = plain("a star", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, 32, 32, 3)
    assert torch.equal(predictions(plain), predictions(pipe))


def test_single_file_export_round_trips_through_from_single_file(tiny_path, tmp_path):
    pipe = load_pipeline(str(tiny_path), device="cpu")
    config = HideConfig(model_updates=1, sampler_steps=2, m=2, lr=1e-3, checkpoint_every=0)
    result = hide(pipe, [Concept("star")], config, progress=False, measure=False)
    save_vault(tmp_path / "v", pipe, result)
    vault = Vault.load(tmp_path / "v", keys=None)
    vault.export(load_pipeline(str(tiny_path), device="cpu"), tmp_path / "folder")
    vault.export(load_pipeline(str(tiny_path), device="cpu"), tmp_path / "model.safetensors", format="single-file")
    folder = StableDiffusionPipeline.from_pretrained(tmp_path / "folder")
    single = StableDiffusionPipeline.from_single_file(tmp_path / "model.safetensors", config=str(tmp_path / "folder"))
    for component in ("unet", "vae", "text_encoder"):
        a, b = getattr(folder, component).state_dict(), getattr(single, component).state_dict()
        assert a.keys() == b.keys(), component
        assert all(torch.allclose(a[n].float(), b[n].float(), atol=1e-3, rtol=1e-2) for n in a), component
    assert torch.allclose(predictions(single), predictions(folder), atol=1e-2)
