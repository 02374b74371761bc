"""Stable Diffusion XL: two text encoders, pooled text and size ids; hiding, vault, generate, evaluate, export."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionXLPipeline

import toy_judges  # noqa: F401  (registers the test-brightness judge)
from conceptvault.backbone import encode_prompts, load_pipeline, unet_predict
from conceptvault.cli import main
from conceptvault.concepts import Concept
from conceptvault.evaluate import Suite, SuiteConcept, run_suite
from conceptvault.key import Key, attach_keys, detach_keys
from conceptvault.methods.kpop import HideConfig, hide
from conceptvault.vault import Vault, save_vault


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def predict(pipe, keys=None):
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([100, 700])
    states = encode_prompts(pipe, ["a star", ""])
    with torch.no_grad():
        return unet_predict(pipe.unet, z, t, states, {"keys": keys} if keys else None)


def test_load_picks_the_xl_pipeline_and_packs_its_conditioning(sdxl_path):
    pipe = load_pipeline(str(sdxl_path), device="cpu")
    assert isinstance(pipe, StableDiffusionXLPipeline)
    states = encode_prompts(pipe, ["a star", ""])
    assert states.shape == (2, 78, 64)
    assert torch.count_nonzero(states[1, :77]) == 0  # the empty prompt is zeros, as the pipeline makes it
    assert states[0, 77, 32:38].tolist() == [32.0, 32.0, 0.0, 0.0, 32.0, 32.0]  # size ids after the pooled text


def test_the_key_processor_is_bit_identical_without_a_key(sdxl_path):
    pipe = load_pipeline(str(sdxl_path), device="cpu")
    plain = predict(pipe)
    key = Key(4, 64, init=torch.randn(4, 64, generator=torch.Generator().manual_seed(1)))
    attach_keys(pipe.unet, {"star": key}, "all")
    assert torch.equal(predict(pipe), plain)
    assert not torch.allclose(predict(pipe, ["star"]), plain)
    detach_keys(pipe.unet)
    assert torch.equal(predict(pipe), plain)


def test_hide_vault_generate_evaluate_export_on_xl(sdxl_path, tmp_path, capsys):
    pipe = load_pipeline(str(sdxl_path), device="cpu")
    config = HideConfig(
        model_updates=2, sampler_steps=3, m=3, lr=1e-3, key_lr=1e-3, placement="all", checkpoint_every=0
    )
    result = hide(pipe, [Concept("star")], config, preserve=["a circle"], progress=False)
    assert result.stats["probe"]["after"]["L_hide"] > 0
    save_vault(tmp_path / "v", pipe, result)
    vault = Vault.load(tmp_path / "v")
    base = load_pipeline(str(sdxl_path), device="cpu")
    with vault.applied(base):
        for keys in (None, ["star"]):
            assert torch.allclose(predict(base, keys), predict(pipe, keys), atol=1e-6)
    code, out, err = run(
        capsys,
        "generate",
        tmp_path / "v",
        "a star",
        "--key",
        "star",
        "--seeds",
        "0,1",
        "--steps",
        "2",
        "--out",
        tmp_path / "g.png",
    )
    assert code == 0, err
    suite = Suite(
        name="xl",
        judge="test-brightness",
        steps=2,
        guidance=5.0,
        hidden=[SuiteConcept("star", ["a star"], [0], labels=["bright"])],
        kept=[SuiteConcept("circle", ["a circle"], [1], labels=["dark"])],
    )
    evaluation = run_suite(load_pipeline(str(sdxl_path), device="cpu"), vault, suite, tmp_path / "e", progress=False)
    assert evaluation.cell("rsr")["n"] == 1 and "key_vs_original" in evaluation.fidelity
    code, out, err = run(capsys, "export", tmp_path / "v", "--out", tmp_path / "exported")
    assert code == 0, err
    exported = StableDiffusionXLPipeline.from_pretrained(tmp_path / "exported")
    assert torch.allclose(predict(exported), predict(pipe), atol=1e-6)
