"""Sealed hiding: the public weights lose the concept, the key is the weight change that brings it back."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline

from conceptvault.backbone import encode_prompts, load_pipeline
from conceptvault.cli import main
from conceptvault.concepts import Concept
from conceptvault.delta_key import DeltaKey, key_size
from conceptvault.key import attached_keys
from conceptvault.learned_token import name_the_token
from conceptvault.methods.sealed import SealConfig, bare_names, seal
from conceptvault.records import read_record, shipped_judge_fingerprint
from conceptvault.vault import Vault, save_vault

QUICK = SealConfig(
    model_updates=3,
    lr=1e-3,
    sampler_steps=2,
    adversary_steps=1,
    adversary_m=2,
    cache_trajectories=1,
    checkpoint_every=0,
)


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def predict(pipe, keys=None) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    z, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([100, 700])
    states = encode_prompts(pipe, ["star", "a circle"])
    with torch.no_grad():
        return pipe.unet(z, t, states, cross_attention_kwargs={"keys": keys} if keys else None).sample


def test_public_plus_key_is_the_original_and_removing_it_restores_the_public_model(tiny_path):
    original = predict(load_pipeline(str(tiny_path), device="cpu"))
    pipe = load_pipeline(str(tiny_path), device="cpu")
    result = seal(pipe, [Concept("star")], QUICK, preserve=["a circle"], progress=False)
    assert isinstance(result.keys["star"], DeltaKey) and attached_keys(pipe.unet) == ("star",)
    public_before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    public = predict(pipe)
    assert not torch.allclose(public, original, atol=1e-4)  # the public model changed
    assert torch.allclose(predict(pipe, ["star"]), original, atol=1e-4)  # public + key = the original
    assert all(torch.equal(public_before[n], p) for n, p in pipe.unet.named_parameters())  # bit-identical again
    assert torch.equal(predict(pipe), public)


def test_a_perturbed_start_moves_the_public_weights_and_the_key_still_carries_the_original(tiny_path):
    original = load_pipeline(str(tiny_path), device="cpu")
    expected = predict(original)
    xattn = {"model_updates": 1, "train": "xattn"}

    def change(share: float) -> float:  # how far sealing moved the cross-attention, relative to its size
        pipe = load_pipeline(str(tiny_path), device="cpu")
        config = SealConfig(**{**QUICK.to_dict(), **xattn, "perturb": share})
        result = seal(pipe, [Concept("star")], config, preserve=["a circle"], progress=False)
        assert set(result.public) == {n for n, _ in pipe.unet.named_parameters() if ".attn2." in n}
        assert torch.allclose(predict(pipe, ["star"]), expected, atol=1e-4)  # public + key = the original
        before = {n: p.detach() for n, p in original.unet.named_parameters()}
        moved = sum((p - before[n]).norm() ** 2 for n, p in result.public.items())
        return float(moved.sqrt() / sum(before[n].norm() ** 2 for n in result.public).sqrt())

    assert change(0.5) > 0.3 > 3 * change(0.0)


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan")])
def test_a_perturbation_outside_zero_to_one_is_refused(share):
    with pytest.raises(ValueError, match="perturb"):
        SealConfig(perturb=share)


def test_a_low_rank_key_is_smaller(sd1_path):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    whole = seal(pipe, [Concept("star")], QUICK, progress=False).keys["star"]
    pipe = load_pipeline(str(sd1_path), device="cpu")
    low = seal(pipe, [Concept("star")], SealConfig(**{**QUICK.to_dict(), "key_rank": 1}), progress=False).keys["star"]
    assert low.size() < whole.size() / 3


@pytest.mark.parametrize("rank", [0, 2])
def test_the_key_size_counted_from_shapes_is_the_size_of_the_key(rank):
    shapes = {"conv": (8, 4, 3, 3), "linear": (16, 12), "thin": (3, 40), "bias": (8,)}
    public = {name: torch.zeros(shape) for name, shape in shapes.items()}
    original = {name: torch.randn(shape) for name, shape in shapes.items()}
    assert key_size(list(shapes.values()), rank) == DeltaKey.between(public, original, rank=rank).size()


def test_the_sealed_key_is_protected_and_round_trips(sd1_path, tmp_path):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    result = seal(pipe, [Concept("star")], QUICK, progress=False)
    save_vault(tmp_path / "v", pipe, result, passphrase="pw")
    raw = (tmp_path / "v" / "keys" / "star.key").read_bytes()
    some = next(iter(result.keys["star"].tensors().values())).numpy().tobytes()[:16]
    assert some not in raw
    vault = Vault.load(tmp_path / "v", keys="all", passphrase="pw")
    assert vault.method.name == "sealed" and vault.manifest.placement is None
    base = load_pipeline(str(sd1_path), device="cpu")
    vault.apply(base)
    for keys in (None, ["star"]):
        assert torch.allclose(predict(base, keys), predict(pipe, keys), atol=1e-6)


@pytest.mark.parametrize("model", ["tiny", "builtin"])
def test_sealed_hide_generate_evaluate_export_end_to_end(sd1_path, tmp_path, capsys, model):
    source = str(sd1_path) if model == "tiny" else "builtin"
    vault = tmp_path / "vault"
    quick = ["--model-updates", "2", "--sampler-steps", "2", "--cache-trajectories", "1", "--batch-size", "1"]
    code, out, err = run(
        capsys,
        "hide",
        source,
        "--method",
        "sealed",
        "--concept",
        "star",
        "--preserve",
        "a circle",
        "--out",
        vault,
        *quick,
    )
    assert code == 0, err
    for keys in ([], ["--key", "star"]):
        code, out, err = run(
            capsys, "generate", vault, "a star", "--seeds", "0", "--steps", "2", *keys, "--out", tmp_path / "g.png"
        )
        assert code == 0, err
    code, out, err = run(capsys, "export", vault, "--out", tmp_path / "exported")
    assert code == 0, err
    exported = StableDiffusionPipeline.from_pretrained(tmp_path / "exported")
    assert not any(".processor." in n or "whole." in n for n in exported.unet.state_dict())
    public = load_pipeline(source, device="cpu")
    Vault.load(vault, keys=None).apply(public)
    state = exported.unet.state_dict()
    assert all(torch.equal(state[n].float(), t.float()) for n, t in public.unet.state_dict().items())
    if model == "builtin":
        evaluated = tmp_path / "records" / "sealed-star.json"
        code, out, err = run(
            capsys,
            "evaluate",
            vault,
            "--concept",
            "star",
            "--size",
            "1",
            "--out",
            tmp_path / "e",
            "--record",
            evaluated,
        )
        assert code == 0, err
        record = read_record(evaluated)  # checked against the schema as it is read
        assert record["id"] == "sealed-star" and record["command"].startswith("conceptvault evaluate ")
        assert record["judge_fingerprint"] == shipped_judge_fingerprint() and record["settings"]["hide"]
        assert record["figures"]["ESR-1 (public)"]["n"] == 1
        # attacked with the prompt key its model family's hiding would have, as it has no prompt key of its own
        tiny = ["--steps", "1", "--images", "2", "--size", "2"]
        attacked = tmp_path / "records" / "sealed-star-attacks.json"
        code, out, err = run(
            capsys, "attack", vault, "--concept", "star", "--attack", "key-inversion", "--out", tmp_path / "a", *tiny,
            "--record", attacked,
        )  # fmt: skip
        assert code == 0, err
        data = json.loads((tmp_path / "a" / "attacks.json").read_text())
        assert [r["attack"] for r in data["results"]] == ["key-inversion"] and data["rsr"]["n"] == 2
        figures = read_record(attacked)["figures"]
        assert figures["public: key-inversion"]["n"] == 2 and figures["key holder (RSR)"]["n"] == 2
        assert figures["public: key-inversion, steps to 50 %"]["unit"] == "steps"
    code, out, err = run(
        capsys, "hide", source, "--method", "sealed", "--concept", "star", "--m", "4", "--out", tmp_path / "v2"
    )
    assert code == 1 and "--m is not a setting of sealed hiding" in err


def test_the_token_adversary_names_the_concept_inside_its_captions():
    prompts = ["star", "five-pointed star", "pentagram", "a red pentagram, solid", "a picture of a plain star"]
    names = bare_names(prompts)
    assert names == ["star", "pentagram"]
    rewritten = name_the_token(["five-pointed star", "a red pentagram, solid", "a circle"], names)
    assert rewritten == ["five-pointed sks", "a red sks, solid", "a circle, sks"]


def test_the_simulated_fine_tune_leaves_the_weights_as_they_were_and_gives_the_cross_attention_a_gradient(sd1_path):
    from conceptvault.methods.sealed.seal import _SealRun

    pipe = load_pipeline(str(sd1_path), device="cpu")
    config = SealConfig(**{**QUICK.to_dict(), "finetune_every": 1, "finetune_steps": 2, "finetune_lr": 1e-2})
    with torch.enable_grad():
        run = _SealRun(pipe, Concept("star"), ["a circle", ""], config)
        before = {name: w.detach().clone() for name, w in run.trained.items()}
        after = run._after_simulated_finetune()
    assert all(torch.equal(before[name], w) for name, w in run.trained.items())  # put back bit for bit
    names = {id(w): name for name, w in run.trained.items()}
    assert after["gradients"] and all(".attn2." in names[id(w)] for w in after["gradients"])
    assert any(g.abs().sum() > 0 for g in after["gradients"].values())
    assert torch.isfinite(after["L_finetuned"])


def test_sealing_against_a_simulated_fine_tune_still_gives_a_key_that_restores_the_original(sd1_path):
    original = predict(load_pipeline(str(sd1_path), device="cpu"))
    pipe = load_pipeline(str(sd1_path), device="cpu")
    config = SealConfig(**{**QUICK.to_dict(), "finetune_every": 1, "finetune_steps": 1})
    result = seal(pipe, [Concept("star")], config, preserve=["a circle"], progress=False)
    assert "L_finetuned" in result.stats["final"]
    assert torch.allclose(predict(pipe, ["star"]), original, atol=1e-4)


@pytest.mark.parametrize("setting", ["finetune_lr", "lambda_finetune"])
def test_a_simulated_fine_tune_setting_that_is_not_finite_is_refused(setting):
    with pytest.raises(ValueError, match=f"{setting}"):
        SealConfig(**{setting: float("nan")})


def test_reset_units_redraws_the_rows_that_answer_the_concept_more_than_the_kept_prompts():
    from conceptvault.methods.sealed.seal import reset_units

    torch.manual_seed(0)
    concept, kept = torch.zeros(3, 4), torch.zeros(3, 4)
    concept[:, 0], kept[:, 1] = 1.0, 1.0  # the concept lies along the first input direction, the kept along the second
    weight = torch.nn.Parameter(torch.eye(4) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1))
    weight.data[2, 0] = 5.0  # row 2 answers the concept most, row 0 next; row 1 answers the kept prompts
    other = torch.nn.Parameter(torch.eye(4))
    before = weight.detach().clone()
    trained = {"down.attn2.to_k.weight": weight, "down.attn1.to_k.weight": other}
    chosen = reset_units(trained, concept, kept, share=0.5, seed=0)
    assert chosen == {"down.attn2.to_k.weight": [0, 2]}
    assert torch.equal(weight[[1, 3]], before[[1, 3]]) and not torch.equal(weight[[0, 2]], before[[0, 2]])
    assert torch.equal(other, torch.eye(4))  # self-attention is no cross-attention unit


def test_sealing_after_resetting_units_still_gives_a_key_that_restores_the_original(sd1_path):
    original = predict(load_pipeline(str(sd1_path), device="cpu"))
    pipe = load_pipeline(str(sd1_path), device="cpu")
    config = SealConfig(**{**QUICK.to_dict(), "reset_units": 0.25, "train": "xattn"})
    seal(pipe, [Concept("star")], config, preserve=["a circle"], progress=False)
    assert not torch.allclose(predict(pipe), original, atol=1e-4)
    assert torch.allclose(predict(pipe, ["star"]), original, atol=1e-4)
    with pytest.raises(ValueError, match="reset_units must be a share from 0 to 1"):
        SealConfig(reset_units=1.5)


def test_noise_in_the_public_weights_needs_the_whole_change_as_the_key():
    for name in ("perturb", "reset_units"):
        with pytest.raises(ValueError, match=f"{name} needs the whole change as the key"):
            SealConfig(**{name: 0.1, "key_rank": 64})
