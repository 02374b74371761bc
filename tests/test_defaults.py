"""Default settings per model family: each family gets its own, an explicit flag wins, the manifest says which."""

from __future__ import annotations

import dataclasses
import json

import pytest

from conceptvault import registry
from conceptvault.backbone import load_pipeline
from conceptvault.cli import main
from conceptvault.defaults import Family, family_config, model_family
from conceptvault.errors import ConceptVaultError
from conceptvault.methods.kpop import HideConfig
from conceptvault.registry import get_method
from conceptvault.world.profile import WORLD_CAPTIONS

SMALL_KPOP = get_method("kpop").family_defaults["small"]


def _replace_kpop_run(monkeypatch, run) -> None:
    """The command line runs ``run`` where it would hide with kpop (the registry's entry, for this test only)."""
    monkeypatch.setitem(registry._METHODS, "kpop", dataclasses.replace(get_method("kpop"), run=run))


def test_families_by_cross_attention_width(sd1_path, sd2_path, sdxl_path):
    assert model_family(load_pipeline(str(sd1_path), device="cpu")) is Family.SD1
    assert model_family(load_pipeline(str(sd2_path), device="cpu")) is Family.SD2
    assert model_family(load_pipeline("builtin", device="cpu")) is Family.SMALL
    assert model_family(load_pipeline(str(sdxl_path), device="cpu")) is Family.SMALL  # the tiny XL is 64 wide


def test_each_family_has_its_defaults_and_explicit_settings_win():
    small, sd1 = family_config(Family.SMALL), family_config(Family.SD1)
    assert sd1 == HideConfig()  # Stable Diffusion: the method paper's settings
    assert small.lr == SMALL_KPOP["lr"] != sd1.lr
    assert family_config(Family.SMALL, lr=0.5).lr == 0.5
    assert small.key_rank == 8 and sd1.key_rank == 0  # ranked keys on small models, tokens only on SD
    assert family_config(Family.SMALL, key_rank=0).key_rank == 0


def test_small_models_give_each_concept_its_own_updates():
    one, five = family_config(Family.SMALL), family_config(Family.SMALL, concepts=5)
    assert (five.model_updates, five.key_updates) == (5 * one.model_updates, 5 * one.key_updates)
    assert five.lr == one.lr and five.m == one.m  # only the update counts scale
    assert family_config(Family.SMALL, concepts=5, model_updates=7).model_updates == 7  # explicit wins
    assert family_config(Family.SD1, concepts=5) == HideConfig()  # Stable Diffusion: the paper's, unscaled


def test_the_command_line_scales_the_updates_by_the_concepts_hidden(tmp_path, capsys, monkeypatch):
    used = []

    def record_and_stop(pipe, concepts, config, **options):
        used.append((len(concepts), config))
        raise ConceptVaultError("stopped before training")

    _replace_kpop_run(monkeypatch, record_and_stop)
    for given in ([], ["--model-updates", "7"]):
        with pytest.raises(SystemExit):
            main(["hide", "builtin", "--concept", "star", "--concept", "heart", "--out", str(tmp_path / "v"), *given])
        assert "stopped before training" in capsys.readouterr().err
    (concepts, scaled), (_, explicit) = used
    assert concepts == 2 and scaled.model_updates == 2 * SMALL_KPOP["model_updates"]
    assert scaled.key_updates == 2 * SMALL_KPOP["key_updates"]
    assert explicit.model_updates == 7
    assert not (tmp_path / "v").exists()  # nothing half-written


def test_preserve_captions_sets_the_world_captions_of_each_kept_concept(sd1_path, tmp_path, capsys, monkeypatch):
    kept = []

    def record_and_stop(pipe, concepts, config, preserve, **options):
        kept.append(preserve)
        raise ConceptVaultError("stopped before training")

    _replace_kpop_run(monkeypatch, record_and_stop)
    for given in ([], ["--preserve-captions", "12"]):
        with pytest.raises(SystemExit):
            main(["hide", "builtin", "--concept", "red", "--out", str(tmp_path / "v"), *given])
        assert "stopped before training" in capsys.readouterr().err
    default, twelve = kept
    per_colour = WORLD_CAPTIONS["kpop"]["preserve"]
    assert len(twelve) - len(default) == 5 * (12 - per_colour)  # five kept colours
    assert sum("orange" in p or "amber" in p for p in twelve) > sum("orange" in p or "amber" in p for p in default)
    for model, extra in ((str(sd1_path), []), ("builtin", ["--preserve", "a circle"])):
        with pytest.raises(SystemExit):
            main(["hide", model, "--concept", "red", "--out", str(tmp_path / "v"), "--preserve-captions", "2", *extra])
        assert "--preserve-captions fills in the built-in model's kept concepts" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("model", ["sd1", "builtin"])
def test_the_manifest_records_the_family_and_every_setting_used(sd1_path, tmp_path, capsys, model):
    source = str(sd1_path) if model == "sd1" else "builtin"
    quick = ["--model-updates", "1", "--key-updates", "1", "--sampler-steps", "2", "--cache-trajectories", "1"]
    with pytest.raises(SystemExit) as exit_:
        main(["hide", source, "--concept", "star", "--out", str(tmp_path / "v"), "--key-lr", "0.02", *quick])
    assert exit_.value.code == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "v" / "manifest.json").read_text())
    family = Family.SD1 if model == "sd1" else Family.SMALL
    assert manifest["family"] == family.value
    given = dict(model_updates=1, key_updates=1, sampler_steps=2, cache_trajectories=1, key_lr=0.02)
    expected = family_config(family, **given)
    assert manifest["config"] == expected.to_dict()
    # the built-in model also fills in the world's other names of the star, world captions, and the shapes to keep
    builtin = model == "builtin"
    names = ["star", "five-pointed star", "pentagram"] if builtin else ["star"]
    prompts = manifest["concepts"][0]["prompts"]
    assert prompts[:3] == names and len(prompts) == len(names) + builtin * WORLD_CAPTIONS["kpop"]["concept"]
    assert ("a circle" in manifest["preserve"]) is builtin
    assert not any("star" in prompt for prompt in manifest["preserve"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["inspect", str(tmp_path / "v")])
    shown = capsys.readouterr().out
    assert "model family" in shown and family.value in shown and "key_lr" in shown


def test_the_help_says_where_a_setting_left_out_comes_from(capsys):
    with pytest.raises(SystemExit):
        main(["hide", "--help"])
    shown = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "[default: per model family]" in shown
    assert "times the concepts hidden on small models]" in shown
