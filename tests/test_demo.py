"""The demo's code path, shortened: hide a shape in the built-in model, evaluate, write the report."""

import json
from dataclasses import replace

import pytest

from conceptvault.checkpoint import CHECKPOINT_FILE
from conceptvault.concepts import Concept
from conceptvault.defaults import family_config
from conceptvault.demo import DemoPlan, make_world_vault, run_demo
from conceptvault.errors import ConceptVaultError
from conceptvault.registry import get_method
from conceptvault.world.profile import WORLD_CAPTIONS, builtin_defaults, world_concepts


def test_demo_hides_evaluates_and_reports(tmp_path):
    config = family_config(
        "small", model_updates=2, key_updates=2, sampler_steps=4, cache_trajectories=1, batch_size=1
    )
    plan = DemoPlan(shape="heart", hidden_images=2, kept_images=1, config=config)
    evaluation, files = run_demo(tmp_path, plan, progress=False)

    figures = json.loads(files.json.read_text())
    for name in ("esr", "psr", "rsr", "key_psr"):
        cell = figures[name]["top-1"]["average"]
        assert 0.0 <= cell["value"] <= 1.0 and "original" in cell
    assert figures["esr"]["top-1"]["concepts"].keys() == {"heart"}
    assert figures["rsr"]["top-1"]["average"]["n"] == 2 and figures["psr"]["top-1"]["average"]["n"] == 9
    html = files.html.read_text()
    for label in ("ESR", "PSR", "RSR"):
        assert label in html
    assert (tmp_path / "vault" / "manifest.json").is_file()


def test_world_vault_of_an_unknown_method_is_one_clear_error(tmp_path):
    with pytest.raises(ConceptVaultError, match="unknown method 'mace'"):
        make_world_vault("mace", tmp_path / "v", ["star"])
    assert not (tmp_path / "v").exists()


def test_world_vault_that_exists_is_reused_as_it_is(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    assert make_world_vault("kpop", folder, ["star"]) == folder
    assert [p.name for p in folder.iterdir()] == ["manifest.json"]


def test_a_world_vault_interrupted_and_made_again_continues_from_its_checkpoint(tmp_path, monkeypatch):
    import conceptvault.demo as demo

    calls = []

    def run(pipe, concepts, config, **options):
        calls.append(options)
        if len(calls) == 1:  # interrupted, leaving a checkpoint as a real run does
            options["checkpoint_dir"].mkdir(parents=True)
            (options["checkpoint_dir"] / CHECKPOINT_FILE).write_text("{}")
            raise KeyboardInterrupt
        return "the hiding result"

    kpop = get_method("kpop")
    monkeypatch.setattr(demo, "get_method", lambda name: replace(kpop, run=run))
    monkeypatch.setattr(demo, "load_pipeline", lambda model: "the pipeline")
    monkeypatch.setattr(demo, "save_vault", lambda folder, pipe, result: folder.mkdir())
    folder = tmp_path / "v"
    with pytest.raises(KeyboardInterrupt):
        make_world_vault("kpop", folder, ["star"])
    assert not folder.exists()
    assert make_world_vault("kpop", folder, ["star"]) == folder and folder.is_dir()
    assert [c["resume"] for c in calls] == [False, True]
    assert calls[1]["checkpoint_dir"] == tmp_path / "v.checkpoint" and not (tmp_path / "v.checkpoint").exists()


def test_the_built_in_model_fills_in_names_preserve_prompts_and_captions_only_where_left_out():
    (star,), preserve = builtin_defaults([Concept("star")], [])
    assert star.prompts == ["star", "five-pointed star", "pentagram"]
    assert "a circle" in preserve and not any("star" in p or "pentagram" in p for p in preserve)
    assert "an arrow" in preserve and "a arrow" not in preserve
    sealed = WORLD_CAPTIONS["sealed"]
    (star,), captioned = builtin_defaults([Concept("star")], [], sealed)
    assert len(star.prompts) == 3 + sealed["concept"]
    assert len(captioned) == len(preserve) + 9 * sealed["preserve"]
    given = [Concept.parse("star|pentagram")]
    assert builtin_defaults(given, ["a box"], sealed) == (given, ["a box"])
    assert builtin_defaults([Concept("dog")], []) == ([Concept("dog")], [])  # not a world concept
    (anchored,), _ = builtin_defaults([Concept("star", anchor="a circle")], [])  # an explicit --anchor is kept
    assert anchored.prompts == ["star", "five-pointed star", "pentagram"] and anchored.anchor == "a circle"
    (red,), _ = builtin_defaults([Concept("red")], [], WORLD_CAPTIONS["kpop"])
    assert len(red.anchors) == 12 and red.anchors == world_concepts("colour", ["red"], 12)[0].anchors
    (red,), _ = builtin_defaults([Concept("red", anchor="a blue shape")], [], WORLD_CAPTIONS["kpop"])
    assert red.anchors == {} and red.anchor_of(red.prompts[-1]) == "a blue shape"  # an explicit --anchor wins
    (red,), _ = builtin_defaults([Concept("red", anchor="green")], [], WORLD_CAPTIONS["kpop"])  # a stand-in
    assert red.anchors["a red love heart"] == "a green love heart" and red.anchors["crimson"] == "green"
    assert len(red.anchors) == len(red.prompts) == 15 and red.anchor == "green"  # for UCE, one anchor
    (star,), _ = builtin_defaults([Concept("star", anchor="circle")], [])
    assert star.anchors == {"star": "circle", "five-pointed star": "circle", "pentagram": "circle"}


def test_hiding_concepts_of_several_kinds_keeps_the_rest_of_each_kind():
    (star, red), preserve = builtin_defaults([Concept("star"), Concept("red")], [])
    assert red.prompts == ["red", "crimson", "scarlet"] and star.prompts[0] == "star"
    assert "a circle" in preserve and "a blue" in preserve and "a green" in preserve
    assert not any(word in p for p in preserve for word in ("star", "pentagram", "red", "crimson", "scarlet"))
    assert not any("striped" in p for p in preserve)  # no style is hidden: the styles are not among the kept
    assert (
        builtin_defaults([Concept("star"), Concept("dog")], [])[1] == []
    )  # a concept the world lacks: say what to keep


def test_colours_and_styles_are_hidden_toward_their_captions_without_them():
    (red,) = world_concepts("colour", ["red"], 12)
    assert red.anchors["a red love heart"] == "a love heart" and "red" not in red.anchors
    assert len(red.anchors) == 12 and red.anchor_of("red") == ""
    words = {"red", "crimson", "scarlet"}
    assert all(not words & set(anchor.replace(",", " ").split()) for anchor in red.anchors.values())
    (striped,) = world_concepts("style", ["striped"], 12)
    assert len(striped.anchors) == 12 and all("strip" not in a and "banded" not in a for a in striped.anchors.values())
    (star,) = world_concepts("shape", ["star"], 12)
    assert star.anchors == {}  # a shape is the object itself: hidden toward the empty prompt
