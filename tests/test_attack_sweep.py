"""The fine-tuning sweep: every kind of trained weights runs, the best setting is the fastest to 50 %, an
interrupted sweep continues, and the attacked model is left exactly as it was."""

from __future__ import annotations

import json

import pytest
import torch

import toy_judges  # noqa: F401  (registers the test-brightness judge)
from conceptvault.attack_sweep import Setting, SettingSummary, SweepPlan, best_settings
from conceptvault.attacks import Attack, AttackConfig, FinetuneWeights, Recovery, run_attack
from conceptvault.backbone import load_pipeline, unet_fingerprint
from conceptvault.cli import main
from conceptvault.concepts import Concept
from conceptvault.evaluate import make_judge
from conceptvault.methods.kpop import HideConfig, hide
from conceptvault.records import read_record
from conceptvault.vault import save_vault
from test_attacks import pictures, toy_suite


def summary(model: str, name: str, steps: dict) -> SettingSummary:
    weights, lr = name.split("@")
    result = SettingSummary(model, Setting(weights, float(lr), 4), budget=100)
    result.steps = steps
    return result


def test_the_best_setting_is_the_one_with_the_fewest_steps_to_half():
    slow = summary("public", "xattn@1e-4", {0: 80.0, 1: 90.0, 2: 70.0})
    fast = summary("public", "unet@1e-3", {0: 20.0, 1: 30.0, 2: 25.0})
    partial = summary("public", "lora@1e-3", {0: 5.0, 1: None, 2: None})  # fast once, but not on two seeds
    never = summary("control", "xattn@1e-4", {0: None, 1: None, 2: None})
    control = summary("control", "unet@1e-3", {0: 60.0, 1: None, 2: 40.0})
    best = best_settings([slow, partial, fast, never, control])
    assert best["public"] is fast and best["control"] is control
    assert fast.mean == 25.0 and fast.interval[0] < 25.0 < fast.interval[1]
    assert control.mean == pytest.approx((60 + 100 + 40) / 3) and control.interval is None  # a lower bound only
    assert never.mean is None and never.rank() == (0, float("inf"))


def test_the_plan_refuses_settings_an_attack_would_refuse():
    with pytest.raises(ValueError, match="lr must be a finite number"):
        SweepPlan(lrs=(float("nan"),))
    with pytest.raises(ValueError, match="weights must be one of xattn, lora, unet"):
        SweepPlan(weights=("decoder",))
    assert SweepPlan(steps=10, measurements=2).measure_at() == (0, 5, 10)


@pytest.mark.parametrize("weights", list(FinetuneWeights))
def test_each_kind_of_fine_tuning_trains_and_leaves_the_model_as_it_was(weights, sd1_path):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    suite = toy_suite()
    before = unet_fingerprint(pipe.unet)
    names = [name for name, _ in pipe.unet.named_parameters()]
    flags = [p.requires_grad for p in pipe.unet.parameters()]
    recovery = Recovery(pipe, make_judge(suite), suite.hidden[0], 2, 3.0, "top-1", 2)
    config = AttackConfig(steps=2, images=3, batch_size=2, lr=1e-2, measure_at=(0, 2), weights=weights.value)
    trained = []
    result = run_attack(
        Attack.FINETUNE,
        pipe,
        recovery,
        config,
        images=pictures(3),
        on_step=lambda step, total: trained.append(step),
    )
    assert trained == [1, 2] and [p["steps"] for p in result.curve] == [0, 2]
    assert unet_fingerprint(pipe.unet) == before and [n for n, _ in pipe.unet.named_parameters()] == names
    assert [p.requires_grad for p in pipe.unet.parameters()] == flags


def test_the_sweep_from_the_command_line_writes_its_report_and_resumes(sd1_path, tmp_path, capsys):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    vault = tmp_path / "vault"
    config = HideConfig(model_updates=2, sampler_steps=2, m=3, checkpoint_every=0)
    save_vault(vault, pipe, hide(pipe, [Concept("star")], config, progress=False, measure=False))
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i, image in enumerate(pictures(4)):
        image.save(folder / f"{i}.png")
    suite = tmp_path / "suite.json"
    toy_suite().save(suite)
    args = [
        "attack", vault, "--suite", suite, "--out", tmp_path / "out", "--steps", "2", "--size", "2",
        "--images-from", folder, "--control", "original", "--attack", "key-inversion", "--sweep",
        "--sweep-lr", "1e-3,1e-2", "--sweep-images", "3", "--sweep-seeds", "0,1",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    assert exit_.value.code == 0, captured.err
    data = json.loads((tmp_path / "out" / "sweep" / "sweep.json").read_text())
    assert len(data["settings"]) == 2 * 3 * 2  # models x weights x rates
    assert {s["weights"] for s in data["settings"]} == {"xattn", "lora", "unet"}
    assert set(data["best"]) == {"public", "original"}
    for model, best in data["best"].items():
        mine = [s for s in data["settings"] if s["model"] == model]
        assert (-best["reached"], best["mean"] or 1e9) == min((-s["reached"], s["mean"] or 1e9) for s in mine)
    attacks = json.loads((tmp_path / "out" / "attacks.json").read_text())
    assert {r["attack"] for r in attacks["results"]} == {"key-inversion"}  # the sweep replaces one fine-tune
    assert (tmp_path / "out" / "sweep" / "sweep.png").is_file()
    runs = sorted((tmp_path / "out" / "sweep" / "runs").rglob("*.json"))
    assert len(runs) == 2 * 3 * 2 * 2  # settings x seeds

    # a second call reads the runs it finds instead of repeating them; another length is refused
    stamp = runs[0].stat().st_mtime_ns
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in [*args, "--record", tmp_path / "sweep-toy.json"]])
    assert exit_.value.code == 0 and runs[0].stat().st_mtime_ns == stamp
    assert "fine-tuning public" not in capsys.readouterr().out
    figures = read_record(tmp_path / "sweep-toy.json")["figures"]  # the attacks and the sweep in one record
    best = data["best"]["original"]
    assert figures["original: best setting"]["censored"] == (best["reached"] < 2)
    assert figures["original: best setting"]["n"] == 2 and "public: key-inversion" in figures
    assert len([name for name in figures if name.endswith("steps to 50 %")]) == 2  # key inversion on both models
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args[:7]] + ["3"] + [str(a) for a in args[8:]])
    assert exit_.value.code == 1 and "another length" in capsys.readouterr().err
    assert torch.isfinite(torch.tensor([s["mean"] or 0.0 for s in data["settings"]])).all()
