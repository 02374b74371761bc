"""The erasure baselines: ESD (-x, -u) and UCE, as vaults without keys."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image

import toy_judges  # noqa: F401  (registers the test-brightness judge)
from conceptvault.backbone import encode_prompts, load_pipeline
from conceptvault.cli import main
from conceptvault.concepts import Concept
from conceptvault.defaults import family_config, model_family
from conceptvault.errors import ConceptVaultError
from conceptvault.evaluate import Suite, SuiteConcept
from conceptvault.latents import Sampler
from conceptvault.methods.esd import EsdConfig, erase_esd
from conceptvault.methods.uce import UceConfig, concept_token_states, erase_uce
from conceptvault.objective import Objective
from conceptvault.records import read_record
from conceptvault.vault import Vault, save_vault

QUICK_ESD = EsdConfig(iterations=6, lr=1e-3, sampler_steps=3, batch_size=2)


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def test_uce_sends_the_concept_to_its_anchor_and_keeps_the_preserved(tiny_path):
    pipe = load_pipeline(str(tiny_path), device="cpu")
    layer = pipe.unet.mid_block.attentions[0].transformer_blocks[0].attn2
    before_k, before_v = layer.to_k.weight.detach().clone(), layer.to_v.weight.detach().clone()
    star, star_last = concept_token_states(pipe, "star")
    anchor, anchor_last = concept_token_states(pipe, "a shape")
    kept = encode_prompts(pipe, ["a circle"])[0].double()
    result = erase_uce(pipe, [Concept("star", anchor="a shape")], UceConfig(lamb=1e-4), preserve=["a circle"])

    length = 77 - max(star_last, anchor_last)
    source, target = star[star_last : star_last + length].float(), anchor[anchor_last : anchor_last + length].float()
    before = (source @ before_k.T - target @ before_k.T).norm(dim=1)
    after = (source @ layer.to_k.weight.T - target @ before_k.T).norm(dim=1)
    assert after[0] < 1e-2 * before[0]  # the concept's own token now projects as the anchor's
    assert after.mean() < 0.15 * before.mean()  # the end-of-text states too, up to the preserved prompt's pull
    moved = (kept.float() @ layer.to_v.weight.T - kept.float() @ before_v.T).norm(dim=1)
    assert moved.mean() < 0.03 * (kept.float() @ before_v.T).norm(dim=1).mean()
    assert not torch.allclose(layer.to_k.weight, before_k)
    assert all(name.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for name in result.public)
    assert result.keys == {} and result.method == "uce"


def test_esd_lowers_its_loss_on_fixed_latents(sd1_path):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    with torch.no_grad():  # a random tiny UNet barely listens to prompts; make the concept matter
        for name, parameter in pipe.unet.named_parameters():
            if "attn2.to_k.weight" in name or "attn2.to_out.0.weight" in name:
                parameter.mul_(30)
    frozen = load_pipeline(str(sd1_path), device="cpu").unet
    frozen.load_state_dict(pipe.unet.state_dict())
    states = encode_prompts(pipe, ["star", ""])
    sampler = Sampler.for_pipeline(pipe, 4, 3.0, states[1:])
    z = sampler.noise(4, torch.Generator().manual_seed(0), like=states)
    t = sampler.timesteps[torch.tensor([0, 1, 2, 3])]
    objective = Objective(pipe.unet, frozen, pipe.scheduler.config, QUICK_ESD)
    with torch.no_grad():
        before = float(objective.hide(z, t, states[:1], states[1:]))
    erase_esd(
        pipe, [Concept("star")], EsdConfig(iterations=20, lr=3e-3, sampler_steps=4, batch_size=2), progress=False
    )
    with torch.no_grad():
        after = float(objective.hide(z, t, states[:1], states[1:]))
    assert after < 0.7 * before


@pytest.mark.parametrize("train", ["xattn", "noxattn"])
def test_esd_trains_only_its_layers(sd1_path, train):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    result = erase_esd(pipe, [Concept("star")], EsdConfig(iterations=2, sampler_steps=2, train=train), progress=False)
    assert result.public and all((".attn2." in name) == (train == "xattn") for name in result.public)


def test_an_erasure_vault_has_no_keys(sd1_path, tmp_path):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    save_vault(tmp_path / "v", pipe, erase_esd(pipe, [Concept("star")], QUICK_ESD, progress=False))
    vault = Vault.load(tmp_path / "v")
    assert vault.keys == {} and vault.method.name == "esd" and vault.manifest.placement is None
    assert not (tmp_path / "v" / "keys").exists()
    with pytest.raises(ConceptVaultError, match="made by esd, which erases its concepts: it has no keys") as error:
        Vault.load(tmp_path / "v", keys=["star"])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("method", ["esd-x", "esd-u", "uce"])
def test_erase_inspect_generate_export_evaluate_end_to_end(tiny_path, tmp_path, capsys, method):
    vault = tmp_path / "vault"
    code, out, err = run(
        capsys,
        "erase",
        tiny_path,
        "--concept",
        "star|pentagram",
        "--method",
        method,
        "--out",
        vault,
        "--preserve",
        "a circle",
        *(["--iterations", "2"] if method != "uce" else []),  # a closed form has no iterations: refused
    )
    assert code == 0, err
    code, out, err = run(capsys, "inspect", vault)
    assert code == 0 and method.split("-")[0] in out and "no key: erased" in out
    code, out, err = run(
        capsys, "generate", vault, "a star", "--seeds", "0", "--steps", "2", "--out", tmp_path / "g.png"
    )
    assert code == 0, err
    code, out, err = run(capsys, "generate", vault, "a star", "--key", "star", "--out", tmp_path / "g.png")
    assert code == 1 and "it has no keys" in err and err.count("\n") == 1
    code, out, err = run(capsys, "export", vault, "--out", tmp_path / "exported")
    assert code == 0, err


def test_compare_puts_hiding_and_erasure_side_by_side(sd1_path, tmp_path, capsys):
    hidden, erased = tmp_path / "hidden", tmp_path / "erased"
    quick = ["--model-updates", "2", "--key-updates", "0", "--sampler-steps", "2", "--m", "2"]
    assert run(capsys, "hide", sd1_path, "--concept", "star", "--out", hidden, *quick)[0] == 0
    assert run(capsys, "erase", sd1_path, "--concept", "star", "--method", "uce", "--out", erased)[0] == 0
    suite = tmp_path / "suite.json"
    Suite(
        name="tiny",
        judge="test-brightness",
        hidden=[SuiteConcept("star", ["a star", "a pentagram"], [0, 1], labels=["bright"])],
        kept=[SuiteConcept("circle", ["a circle"], [5], labels=["dark"])],
        steps=2,
        guidance=3.0,
    ).save(suite)

    record = tmp_path / "hiding-vs-erasure.json"
    code, out, err = run(
        capsys, "compare", hidden, erased, "--suite", suite, "--out", tmp_path / "cmp", "--record", record
    )
    assert code == 0, err
    figures = read_record(record)["figures"]  # checked against the schema as it is read
    assert figures["hidden: RSR-1 (with key)"]["n"] == 2 and "erased: RSR-1 (with key)" not in figures
    assert figures["erased: ESR-1 (public)"]["n"] == 2 and figures["erased: time"]["unit"] == "s"
    data = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert set(data["vaults"]) == {"hidden", "erased"}
    assert data["vaults"]["erased"]["method"] == "uce" and "rsr" not in data["vaults"]["erased"]
    assert data["vaults"]["hidden"]["rsr"]["top-1"]["average"]["n"] == 2
    originals = sorted((tmp_path / "cmp" / "original").glob("*/*.png"))
    assert len(originals) == 3  # made once, shared by both vaults
    assert not (tmp_path / "cmp" / "hidden" / "images" / "original").exists()
    html = (tmp_path / "cmp" / "comparison.html").read_text()
    assert html.count("<th>hidden</th>") == 2 and "hidden + key" in html and html.count("<th>erased</th>") == 2
    assert Image.open(tmp_path / "cmp" / "comparison.png").size[0] > 300


def test_esd_interrupted_and_resumed_equals_straight(tiny_path, tmp_path):
    config = EsdConfig(iterations=6, lr=1e-3, sampler_steps=3, batch_size=2, checkpoint_every=2)
    straight = erase_esd(load_pipeline(str(tiny_path), device="cpu"), [Concept("star")], config, progress=False)

    def stop_at_three(step: int, info: dict) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(ConceptVaultError, match="interrupted at step 3 of 6.*`resume`"):
        pipe = load_pipeline(str(tiny_path), device="cpu")
        erase_esd(pipe, [Concept("star")], config, checkpoint_dir=tmp_path, progress=False, on_step=stop_at_three)
    pipe = load_pipeline(str(tiny_path), device="cpu")
    resumed = erase_esd(pipe, [Concept("star")], config, checkpoint_dir=tmp_path, resume=True, progress=False)

    assert straight.public.keys() == resumed.public.keys()
    assert all(torch.equal(straight.public[n], resumed.public[n]) for n in straight.public)
    assert straight.stats["final"] == resumed.stats["final"] and resumed.stats["steps"] == 6
    with pytest.raises(ConceptVaultError, match="made with lr=0.001, not 0.01"):
        pipe = load_pipeline(str(tiny_path), device="cpu")
        erase_esd(pipe, [Concept("star")], replace(config, lr=1e-2), checkpoint_dir=tmp_path, resume=True)


def test_erase_resumes_from_the_command_line(tiny_path, tmp_path, capsys):
    vault = tmp_path / "vault"
    checkpoint = tmp_path / "vault.checkpoint"
    args = ["erase", tiny_path, "--concept", "star", "--method", "esd-x", "--out", vault, "--iterations", "2"]
    code, _, err = run(capsys, *args, "--resume")
    assert code == 1 and "no checkpoint to resume from" in err and not vault.exists()
    pipe = load_pipeline(str(tiny_path), device="cpu")
    config = family_config(model_family(pipe), 1, "esd-x", iterations=1)  # what the command line would run, shorter
    erase_esd(pipe, [Concept("star")], config, checkpoint_dir=checkpoint, progress=False)
    code, _, err = run(capsys, *args, "--resume")
    assert code == 0, err
    assert Vault.load(vault).manifest.stats["steps"] == 2 and not checkpoint.exists()
