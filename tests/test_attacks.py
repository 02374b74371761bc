"""Attacks on the public model: each runs end to end, never reads a key, and does what it says."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import toy_judges  # noqa: F401  (registers the test-brightness judge)
from conceptvault.attacks import (
    Attack,
    AttackConfig,
    KeySpec,
    Recovery,
    _KeyInversion,
    _random_key,
    denoising_loss,
    encode_images,
    run_attack,
)
from conceptvault.backbone import load_pipeline
from conceptvault.cli import main
from conceptvault.concepts import Concept
from conceptvault.evaluate import Suite, SuiteConcept, make_judge
from conceptvault.methods.kpop import HideConfig, hide
from conceptvault.vault import Vault, save_vault

TINY = AttackConfig(steps=2, images=4, batch_size=2, random_keys=2, measure_at=(0, 2))


def toy_suite() -> Suite:
    return Suite(
        name="toy",
        judge="test-brightness",
        hidden=[SuiteConcept("star", ["a star", "a pentagram"], [0, 1], labels=["bright"])],
        kept=[SuiteConcept("circle", ["a circle"], [5], labels=["dark"])],
        steps=2,
        guidance=3.0,
    )


@pytest.fixture(scope="module")
def vault_path(sd1_path, tmp_path_factory):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    config = HideConfig(model_updates=2, sampler_steps=2, m=3, checkpoint_every=0)
    path = tmp_path_factory.mktemp("attack") / "vault"
    save_vault(path, pipe, hide(pipe, [Concept("star")], config, progress=False, measure=False))
    return path


def pictures(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.mark.parametrize("attack", list(Attack))
def test_each_attack_runs_on_the_public_model_and_leaves_it_as_it_was(sd1_path, vault_path, attack):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    Vault.load(vault_path, keys=None).apply(pipe)
    before = {n: t.clone() for n, t in pipe.unet.state_dict().items()}
    suite = toy_suite()
    recovery = Recovery(pipe, make_judge(suite), suite.hidden[0], 2, 3.0, "top-1", 2)
    result = run_attack(
        attack,
        pipe,
        recovery,
        TINY,
        images=pictures(4),
        prompts=["a starr", "une étoile"],
        key_spec=KeySpec(3, "mid", (1.0, 2.0)),
        benign=list(zip(pictures(4), ["a circle", "a square", "a circle", "a ring"], strict=True)),
    )
    assert 0.0 <= result.recovery["value"] <= 1.0 and result.recovery["n"] > 0
    if attack.trains:
        assert [p["steps"] for p in result.curve] == [0, 2]
        assert result.budget["images"] == (4 if attack.learns_from_pictures else 0)
    after = pipe.unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[n], after[n]) for n in before)


def test_random_keys_match_the_real_key_norms(sd1_path):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    key = _random_key(KeySpec(4, "mid", (3.0, 5.0)), 768, torch.Generator().manual_seed(0), pipe)
    norms = float(key.p_k.detach().norm()), float(key.p_v.detach().norm())
    assert norms == pytest.approx((3.0, 5.0), rel=1e-5)


def test_key_inversion_lowers_its_own_loss_on_fixed_data(sd1_path):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    concept = SuiteConcept("star", ["a star"], [0], labels=["bright"])
    trainer = _KeyInversion(pipe, concept, AttackConfig(lr=5e-2), KeySpec(4, "all"))
    latents = encode_images(pipe, pictures(4))

    def loss() -> float:
        with torch.no_grad():
            return float(
                denoising_loss(
                    pipe, latents, trainer.states(["a star"] * 4), torch.Generator().manual_seed(1), trainer.options
                )
            )

    with trainer.attached():
        before = loss()
        _train(pipe, trainer, latents, 30)
        after = loss()
    assert after < before


def _train(pipe, trainer, latents, steps: int) -> None:
    """``steps`` steps of a trained attack on "a star" and the given latents, a seed per step."""
    for step in range(steps):
        value = denoising_loss(
            pipe,
            latents,
            trainer.states(["a star"] * len(latents)),
            torch.Generator().manual_seed(step),
            trainer.options,
        )
        trainer.optimiser.zero_grad()
        value.backward()
        trainer.optimiser.step()


def test_key_inversion_of_a_ranked_key_learns_projection_changes_of_that_rank(sd1_path):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    concept = SuiteConcept("star", ["a star"], [0], labels=["bright"])
    trainer = _KeyInversion(pipe, concept, AttackConfig(lr=5e-2), KeySpec(4, "all", rank=2, change_lr=1e-2))
    ups = [p for name, p in trainer.key.changes.named_parameters() if name.endswith("_up")]
    assert ups and all(p.shape[0] == 2 and not p.any() for p in ups)  # rank 2, starting as no change
    latents = encode_images(pipe, pictures(4))
    with trainer.attached():
        _train(pipe, trainer, latents, 2)
    assert any(p.any() for p in ups)  # the attacker's changes were learned
    assert [g["lr"] for g in trainer.optimiser.param_groups] == [5e-2, 1e-2]


def test_the_attack_command_never_reads_keys(sd1_path, vault_path, tmp_path, capsys):
    public_only = tmp_path / "public-only"
    shutil.copytree(vault_path, public_only)
    shutil.rmtree(public_only / "keys")
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i, image in enumerate(pictures(3)):
        image.save(folder / f"{i}.png")
    suite = tmp_path / "suite.json"
    toy_suite().save(suite)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a starr\nune étoile\n")
    args = [
        "attack",
        public_only,
        "--suite",
        suite,
        "--out",
        tmp_path / "out",
        "--steps",
        "2",
        "--images",
        "3",
        "--size",
        "2",
        "--images-from",
        folder,
        "--prompts",
        prompts,
        "--control",
        "original",
    ]
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    assert exit_.value.code == 0, captured.err
    data = json.loads((tmp_path / "out" / "attacks.json").read_text())
    assert data["rsr"] is None  # no keys at hand: authorised recovery not measured, attacks still run
    assert {(r["attack"], r["model"]) for r in data["results"]} == {
        (a.value, m) for a in Attack for m in ("public", "original")
    }
    assert (tmp_path / "out" / "attacks.png").is_file() and "steps to 50 %" in (
        tmp_path / "out" / "attacks.md"
    ).read_text()


def test_an_interrupted_attack_command_keeps_the_attacks_it_finished(
    sd1_path, vault_path, tmp_path, capsys, monkeypatch
):
    import conceptvault.attack_campaign as campaign

    finished = []

    def second_is_interrupted(*args, **kwargs):
        if finished:
            raise KeyboardInterrupt
        finished.append(run_attack(*args, **kwargs))
        return finished[-1]

    monkeypatch.setattr(campaign, "run_attack", second_is_interrupted)
    suite = tmp_path / "suite.json"
    toy_suite().save(suite)
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i, image in enumerate(pictures(2)):
        image.save(folder / f"{i}.png")
    out = tmp_path / "out"
    args = ["attack", vault_path, "--suite", suite, "--out", out, "--images-from", folder]
    args += ["--attack", "random-key", "--attack", "finetune"]
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in [*args, "--steps", "1", "--size", "2", "--images", "2"]])
    assert exit_.value.code == 1 and "interrupted; the attacks that finished are in" in capsys.readouterr().err
    data = json.loads((out / "attacks.json").read_text())
    assert [r["attack"] for r in data["results"]] == ["random-key"]


def test_every_attack_on_the_built_in_model_at_a_tiny_budget(tmp_path, capsys):
    vault = tmp_path / "vault"
    quick = ["--model-updates", "1", "--key-updates", "1", "--sampler-steps", "2", "--cache-trajectories", "1"]
    with pytest.raises(SystemExit) as exit_:
        main(["hide", "builtin", "--concept", "star", "--out", str(vault), *quick])
    assert exit_.value.code == 0
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "attack",
                str(vault),
                "--concept",
                "star",
                "--out",
                str(tmp_path / "out"),
                "--steps",
                "1",
                "--images",
                "2",
                "--size",
                "2",
            ]
        )
    captured = capsys.readouterr()
    assert exit_.value.code == 0, captured.err
    assert any(line.startswith("| attack | model") for line in captured.out.splitlines())  # a table, not one line
    data = json.loads((tmp_path / "out" / "attacks.json").read_text())
    assert data["rsr"]["n"] == 2 and data["original"]["n"] == 2
    prompt = next(r for r in data["results"] if r["attack"] == "prompt")
    assert "une étoile" in prompt["detail"] and "a shape with five points" in prompt["detail"]


def test_steps_to_half_recovery_interpolates_and_says_when_never_reached():
    from conceptvault.attacks import AttackResult

    def curve(*points):
        return [{"steps": s, "recovery": {"value": v, "n": 10, "ci": [0, 1]}} for s, v in points]

    rising = AttackResult("key-inversion", "public", curve((0, 0.0), (100, 0.3), (200, 0.7)))
    assert rising.steps_to(0.5) == pytest.approx(150.0)
    assert AttackResult("finetune", "m", curve((0, 0.6), (100, 0.9))).steps_to(0.5) == 0.0
    assert AttackResult("finetune", "m", curve((0, 0.1), (300, 0.4))).steps_to(0.5) is None
