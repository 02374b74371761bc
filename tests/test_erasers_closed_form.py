"""The closed-form erasers beside UCE: RECE (UCE hardened against the embeddings that bring the concept back) and
suppression (the concept's directions projected out of the text states, folded into cross-attention)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import toy_judges  # noqa: F401  (registers the test-brightness judge)
from conceptvault.backbone import encode_prompts, load_pipeline, text_tokens
from conceptvault.cli import main
from conceptvault.concepts import Concept
from conceptvault.cross_attention_edit import aligned_states, concept_token_states
from conceptvault.errors import ConceptVaultError
from conceptvault.evaluate import Suite, SuiteConcept
from conceptvault.methods.rece import ReceConfig, adversarial_embeddings, erase_rece
from conceptvault.methods.suppress import SuppressConfig, concept_subspace, erase_suppress
from conceptvault.methods.uce import UceConfig, erase_uce
from conceptvault.registry import get_method
from conceptvault.vault import Vault

STAR = Concept("star", ["pentagram"], anchor="a shape")


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def projections(pipe) -> dict[str, torch.Tensor]:
    """Every cross-attention key and value weight, in float64, by state-dict name."""
    return {
        name: tensor.double().clone()
        for name, tensor in pipe.unet.state_dict().items()
        if name.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))
    }


def snapshot(pipe) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in pipe.unet.state_dict().items()}


def states(pipe, prompt: str) -> torch.Tensor:
    return text_tokens(pipe.unet, encode_prompts(pipe, [prompt]))[0].double()


def assert_only_key_and_value_changed(before: dict, pipe, result) -> None:
    after = pipe.unet.state_dict()
    changed = {name for name in after if not torch.equal(after[name], before[name])}
    assert changed == set(result.public) == set(projections(pipe))
    assert all(torch.equal(after[name], result.public[name]) for name in changed)


# -- RECE ----------------------------------------------------------------------------------------------------


def test_rece_without_rounds_is_uce(sd2_path):
    pipe = load_pipeline(str(sd2_path), device="cpu")
    before = snapshot(pipe)
    uce = erase_uce(pipe, [STAR], UceConfig(lamb=0.05), preserve=["a circle"])
    pipe.unet.load_state_dict(before)
    rece = erase_rece(pipe, [STAR], ReceConfig(lamb=0.05, rounds=0), preserve=["a circle"])
    assert uce.public.keys() == rece.public.keys()
    assert all(torch.equal(uce.public[name], rece.public[name]) for name in uce.public)
    assert rece.stats["adversarial_distance"] == [] and rece.method == "rece"


def test_rece_erases_the_embeddings_that_bring_the_concept_back(sd1_path):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    originals, before = projections(pipe), snapshot(pipe)
    erase_uce(pipe, [STAR], UceConfig(), preserve=["a circle"])
    uce = projections(pipe)
    pipe.unet.load_state_dict(before)
    result = erase_rece(pipe, [STAR], ReceConfig(rounds=3), preserve=["a circle"])

    concept = torch.cat([s for s, _ in aligned_states(pipe, STAR)])
    found, left = adversarial_embeddings(originals, uce, concept, ReceConfig().embedding_lamb)
    assert left < 0.01  # UCE's edit leaves an embedding that gives back the concept's keys and values

    def distance(weights: dict) -> float:  # of the found embeddings' keys and values from the concept's
        missed = sum(((found @ weights[n].T - concept @ originals[n].T) ** 2).sum(1) for n in weights)
        return float((missed.sqrt() / sum(((concept @ originals[n].T) ** 2).sum(1) for n in weights).sqrt()).mean())

    assert distance(uce) == pytest.approx(left)
    assert distance(projections(pipe)) > 10 * left  # RECE sent that embedding to the anchor instead
    rounds = result.stats["adversarial_distance"]
    assert len(rounds) == 3 and rounds[0] == pytest.approx(left, abs=1e-6) and rounds[-1] > 5 * rounds[0]

    layer = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    star, star_last = concept_token_states(pipe, "star")
    anchor, anchor_last = concept_token_states(pipe, "a shape")
    old, new = originals[layer], projections(pipe)[layer]
    target = anchor[anchor_last] @ old.T
    assert (star[star_last] @ new.T - target).norm() < 0.05 * (star[star_last] @ old.T - target).norm()
    kept = states(pipe, "a circle")
    assert (kept @ new.T - kept @ old.T).norm(dim=1).mean() < 0.1 * (kept @ old.T).norm(dim=1).mean()
    assert_only_key_and_value_changed(before, pipe, result)


# -- suppression ---------------------------------------------------------------------------------------------


def test_suppress_folds_the_projection_into_key_and_value(tiny_path):
    pipe = load_pipeline(str(tiny_path), device="cpu")
    originals, before = projections(pipe), snapshot(pipe)
    basis, held = concept_subspace(pipe, [STAR], ["a circle"], SuppressConfig())
    result = erase_suppress(pipe, [STAR], SuppressConfig(), preserve=["a circle"])
    edited = projections(pipe)
    assert held["rank"] == result.stats["rank"] == basis.shape[1] >= 1 and held["concept_energy_removed"] > 0.1

    star = states(pipe, "a star")
    projected = star - star @ basis @ basis.T
    for name, old in originals.items():  # the edited layer reads the concept as the old one reads it projected
        expected = projected @ old.T
        assert torch.allclose(star @ edited[name].T, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
        assert (edited[name] @ basis).norm() < 1e-5 * old.norm()  # blind to the concept's directions

    def change(name: str, rows: torch.Tensor) -> float:
        old = rows @ originals[name].T
        return float(((rows @ edited[name].T - old).norm(dim=1) / old.norm(dim=1)).mean())

    _, last = concept_token_states(pipe, "a pentagram")
    concept = states(pipe, "a pentagram")[last : last + 2]  # its last word and end of text
    for name in originals:
        assert change(name, concept) > 0.2
        assert change(name, states(pipe, "a circle")) < 0.02 and change(name, states(pipe, "")) < 0.02
    assert_only_key_and_value_changed(before, pipe, result)


def test_suppress_refuses_a_concept_the_protected_prompts_span(sd1_path):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    with pytest.raises(ConceptVaultError, match="within the protected prompts' span.*`protect_energy`") as error:
        erase_suppress(pipe, [Concept("star")], SuppressConfig(protect_energy=1.0), preserve=["star"])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "method, setting, message",
    [
        ("rece", "embedding_lamb=nan", "embedding_lamb must be a finite number"),
        ("rece", "rounds=-1", "rounds must not be negative"),
        ("suppress", "energy=inf", "energy must be a finite number"),
        ("suppress", "protect_energy=1.5", "protect_energy must be at most 1"),
    ],
)
def test_a_bad_setting_is_refused_in_one_line(sd1_path, tmp_path, capsys, method, setting, message):
    out = tmp_path / "v"
    args = ["erase", sd1_path, "--concept", "star", "--method", method, "--set", setting, "--out", out]
    code, _, err = run(capsys, *args)
    assert code == 1 and message in err and err.count("\n") == 1 and not out.exists()


# -- end to end ----------------------------------------------------------------------------------------------


def test_erase_inspect_compare_attack_end_to_end(sd1_path, tmp_path, capsys):
    vaults = {"rece": tmp_path / "rece", "suppress": tmp_path / "suppress"}
    for method, vault in vaults.items():
        assert not get_method(method).resumable and not get_method(method).has_keys
        code, _, err = run(capsys, "erase", sd1_path, "--concept", "star|pentagram", "--method", method,
                           "--preserve", "a circle", "--out", vault, "--set", "seed=1")  # fmt: skip
        assert code == 0, err
        loaded = Vault.load(vault)
        assert loaded.method.name == method and loaded.keys == {} and loaded.manifest.config["seed"] == 1
        code, out, err = run(capsys, "inspect", vault)
        assert code == 0 and method in out and "no key: erased" in out

    assert len(Vault.load(vaults["rece"]).manifest.stats["adversarial_distance"]) == ReceConfig().rounds
    assert Vault.load(vaults["suppress"]).manifest.stats["rank"] >= 1

    suite = tmp_path / "suite.json"
    Suite(
        name="tiny",
        judge="test-brightness",
        hidden=[SuiteConcept("star", ["a star"], [0], labels=["bright"])],
        kept=[SuiteConcept("circle", ["a circle"], [5], labels=["dark"])],
        steps=2,
        guidance=3.0,
    ).save(suite)
    code, _, err = run(capsys, "compare", *vaults.values(), "--suite", suite, "--out", tmp_path / "cmp")
    assert code == 0, err
    data = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert {name: v["method"] for name, v in data["vaults"].items()} == {"rece": "rece", "suppress": "suppress"}

    hidden = tmp_path / "hidden"  # an erasure vault has no keys: it is attacked as a hiding vault's control
    quick = ["--model-updates", "1", "--key-updates", "0", "--sampler-steps", "2", "--m", "2"]
    assert run(capsys, "hide", sd1_path, "--concept", "star", "--out", hidden, *quick)[0] == 0
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for seed in range(2):
        pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(pictures / f"{seed}.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a starr\nune étoile\n")
    controls = [option for vault in vaults.values() for option in ("--control", vault)]
    code, _, err = run(capsys, "attack", hidden, *controls, "--suite", suite, "--out", tmp_path / "attack",
                       "--attack", "prompt", "--size", "1",
                       "--images-from", pictures, "--prompts", prompts)  # fmt: skip
    assert code == 0, err
    results = json.loads((tmp_path / "attack" / "attacks.json").read_text())["results"]
    attacked = {(r["attack"], r["model"]) for r in results}
    assert {("prompt", f"{m} ({m})") for m in vaults} <= attacked
