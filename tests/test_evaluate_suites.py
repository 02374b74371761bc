"""Suites are data: validation, JSON round trips, CSV loading, and the built-in world and Stable Diffusion suites."""

import csv
from pathlib import Path

import pytest

from conceptvault.errors import ConceptVaultError
from conceptvault.evaluate import (
    Suite,
    SuiteConcept,
    imagenette_suite,
    load_suite,
    nudity_suite,
    resolve_suite,
    style_suite,
    suite_from_csv,
    world_five_shapes_suite,
)
from conceptvault.evaluate.nudity import EXPOSED_CLASSES
from conceptvault.evaluate.world_suites import (
    HELD_OUT,
    WORLD_SUITE_KINDS,
    WORLD_SUITES,
    synonym_used,
    training_captions,
    world_concept,
    world_mixed_suite,
)
from conceptvault.world import COLOURS, SHAPES, STYLES

SHARED_PROMPTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sd-prompts"


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_suite_concept_validation_names_the_problem():
    with pytest.raises(ValueError, match="2 prompts but 1 seeds"):
        SuiteConcept("star", ["a star", "a pentagram"], [0])
    with pytest.raises(ValueError, match="no prompts"):
        SuiteConcept("star", [], [])
    assert SuiteConcept("star", ["a star"], [3]).labels == ["star"]


def test_suite_validation_names_the_problem():
    star = SuiteConcept("star", ["a star"], [0])
    with pytest.raises(ValueError, match="hides no concept"):
        Suite("s", "world-shape", hidden=[])
    with pytest.raises(ValueError, match=r"\['star'\] more than once"):
        Suite("s", "world-shape", hidden=[star], kept=[star])
    with pytest.raises(ValueError, match="top_k"):
        Suite("s", "world-shape", hidden=[star], top_k=[0])
    with pytest.raises(ValueError, match="thresholds"):
        Suite("s", "nudenet", hidden=[star], thresholds=[1.5])


def test_suite_round_trips_through_json(tmp_path):
    suite = world_five_shapes_suite("a", size=3)
    suite.save(tmp_path / "suite.json")
    loaded = load_suite(tmp_path / "suite.json")
    assert loaded == suite
    assert resolve_suite(str(tmp_path / "suite.json")) == suite
    (tmp_path / "bad.json").write_text('{"name": "x"}')
    with pytest.raises(ConceptVaultError, match="not a valid suite"):
        load_suite(tmp_path / "bad.json")


def test_suite_from_a_users_csv(tmp_path):
    rows = [
        {"concept": c, "prompt": f"a photo of a {c}", "evaluation_seed": s} for c in ("cat", "dog") for s in (1, 2, 3)
    ]
    path = _write_csv(tmp_path / "mine.csv", rows)
    suite = suite_from_csv(
        path, name="pets", judge="imagenet", hidden=["cat"], labels={"cat": ["281"]}, limit=2, top_k=[1, 5]
    )
    assert [c.name for c in suite.hidden] == ["cat"] and [c.name for c in suite.kept] == ["dog"]
    assert suite.hidden[0].seeds == [1, 2] and suite.hidden[0].labels == ["281"] and suite.kept[0].labels == ["dog"]
    with pytest.raises(ConceptVaultError, match=r"hidden concepts \['cow'\] are not in"):
        suite_from_csv(path, name="pets", judge="imagenet", hidden=["cow"])
    with pytest.raises(ConceptVaultError, match="no column 'label'"):
        suite_from_csv(path, name="pets", judge="imagenet", hidden=["cat"], concept_column="label")


def test_world_suite_prompts_cover_every_synonym_and_leave_words_out():
    suite = resolve_suite("shape", concept="star", size=12)
    star = suite.hidden[0]
    assert suite.judge == "world-shape" and star.labels == ["star"] and len(suite.kept) == len(SHAPES) - 1
    used = [synonym_used(p, SHAPES["star"]) for p in star.prompts]
    assert sorted(set(used)) == sorted(SHAPES["star"])
    colour_words = [w for names in COLOURS.values() for w in names]
    style_words = [w for names in STYLES.values() for w in names]
    with_colour = [any(synonym_used(p, [w]) for w in colour_words) for p in star.prompts]
    with_style = [any(synonym_used(p, [w]) for w in style_words) for p in star.prompts]
    assert any(with_colour) and not all(with_colour) and any(with_style) and not all(with_style)
    assert star.seeds == list(range(12))
    assert resolve_suite("shape", concept="star", size=12) == suite  # deterministic


def test_world_colour_and_style_suites():
    colour = resolve_suite("colour", concept="blue", size=4)
    assert colour.judge == "world-colour" and [c.name for c in colour.hidden] == ["blue"]
    assert {synonym_used(p, COLOURS["blue"]) for p in colour.hidden[0].prompts} == set(COLOURS["blue"])
    style = resolve_suite("style", size=6)
    assert style.judge == "world-style" and len(style.kept) == len(STYLES) - 1
    five = resolve_suite("five-shapes-b", size=2)
    assert len(five.hidden) == 5 and len(five.kept) == 5
    assert not {c.name for c in five.hidden} & {c.name for c in resolve_suite("five-shapes-a", size=2).hidden}


def test_a_hidden_colour_or_style_is_also_asked_for_without_its_words():
    colour = resolve_suite("colour", concept="red", size=8)
    red = colour.hidden[0]
    assert len(red.unnamed) == 8 and all(synonym_used(p, COLOURS["red"]) is None for p in red.unnamed)
    for prompt, unnamed in zip(red.prompts, red.unnamed, strict=True):
        shape = synonym_used(prompt, [w for names in SHAPES.values() for w in names])
        assert synonym_used(unnamed, [shape]) == shape  # the shape is still asked for
    assert resolve_suite("style", concept="striped", size=2).hidden[0].unnamed is not None
    assert all(c.unnamed is None for c in colour.kept)  # only hidden concepts are measured so
    assert resolve_suite("shape", concept="star", size=2).hidden[0].unnamed is None  # no caption without a shape


def test_every_world_suite_says_which_kind_of_concept_it_hides():
    assert set(WORLD_SUITE_KINDS) == set(WORLD_SUITES) - {"mixed"}
    for name, kind in WORLD_SUITE_KINDS.items():  # the suite's judge reads the head of that kind
        assert resolve_suite(name, size=1).judge == f"world-{kind}"
    assert resolve_suite("mixed", size=1).judge == "world-mixed"  # each concept read by the head of its kind


def test_the_mixed_suite_hides_two_shapes_a_colour_and_a_style_and_keeps_the_rest_of_each_kind():
    mixed = resolve_suite("mixed", size=4, kept_size=2)
    assert [c.name for c in mixed.hidden] == ["star", "heart", "red", "striped"]
    kept = {c.name for c in mixed.kept}
    assert kept == (set(SHAPES) | set(COLOURS) | set(STYLES)) - {"star", "heart", "red", "striped"}
    assert all(len(c.prompts) == 2 for c in mixed.kept) and all(len(c.prompts) == 4 for c in mixed.hidden)
    by_name = {c.name: c for c in mixed.hidden}
    assert by_name["star"].unnamed is None and by_name["red"].unnamed is not None  # an attribute, also unnamed
    assert by_name["red"].prompts == resolve_suite("colour", concept="red", size=4).hidden[0].prompts
    with pytest.raises(ConceptVaultError, match="no concept 'blob'"):
        world_mixed_suite(["star", "blob"])


def test_unknown_world_concept_or_suite_is_one_clear_error():
    with pytest.raises(ConceptVaultError, match="no shape 'blob'"):
        resolve_suite("shape", concept="blob")
    with pytest.raises(ConceptVaultError, match="unknown suite 'shapes'"):
        resolve_suite("shapes")
    with pytest.raises(ConceptVaultError, match="fixes its hidden concepts"):
        resolve_suite("five-shapes-a", concept="star")


def test_imagenette_suite_from_a_csv_of_that_format(tmp_path):
    rows = [
        {"case_number": i, "prompt": f"Image of {c}", "label_str": c, "evaluation_seed": 100 + i}
        for i, c in enumerate(["Cassette Player", "Tench", "Church", "Golf Ball"] * 3)
    ]
    path = _write_csv(tmp_path / "imagenette.csv", rows)
    suite = imagenette_suite(path, hidden=["tench", "church"], per_class=2)
    assert suite.judge == "imagenet" and suite.top_k == [1, 5] and suite.steps == 100
    assert [c.name for c in suite.hidden] == ["Tench", "Church"]
    assert suite.hidden[0].labels == ["0"] and suite.kept[0].labels == ["482"]
    assert len(suite.hidden[0].prompts) == 2


def test_nudity_suite_keeps_each_rows_seed_and_guidance(tmp_path):
    rows = [
        {"prompt": "p1", "categories": "sexual", "evaluation_seed": "4261553411", "evaluation_guidance": "7"},
        {"prompt": "p2", "categories": "violence", "evaluation_seed": "5", "evaluation_guidance": "12"},
        {"prompt": "p3", "categories": "sexual, shocking", "evaluation_seed": "6", "evaluation_guidance": "9"},
    ]
    suite = nudity_suite(_write_csv(tmp_path / "i2p.csv", rows), categories=["sexual"])
    nudity = suite.hidden[0]
    assert suite.judge == "nudenet" and suite.thresholds == [0.3, 0.5, 0.7] and suite.kept == []
    assert nudity.prompts == ["p1", "p3"] and nudity.seeds == [4261553411, 6] and nudity.guidance == [7.0, 9.0]
    assert nudity.labels == list(EXPOSED_CLASSES) and nudity.key_name == "nudity"


def test_style_suite_hides_one_artist(tmp_path):
    artists = ("Kelly McKernan", "Kilian Eng")
    rows = [{"prompt": f"art by {a} {i}", "evaluation_seed": i, "artist": a} for a in artists for i in range(3)]
    suite = style_suite(_write_csv(tmp_path / "art.csv", rows), hidden="kelly mckernan", per_artist=2)
    assert suite.judge == "clip" and [c.name for c in suite.hidden] == ["Kelly McKernan"]
    assert [c.name for c in suite.kept] == ["Kilian Eng"] and len(suite.kept[0].prompts) == 2
    with pytest.raises(ConceptVaultError, match="unknown artist 'Picasso'"):
        style_suite(_write_csv(tmp_path / "art.csv", rows), hidden="Picasso")


@pytest.mark.skipif(not SHARED_PROMPTS.is_dir(), reason="the shared prompt files are not beside this checkout")
def test_the_literatures_prompt_files_load():
    objects = imagenette_suite(SHARED_PROMPTS / "imagenette.csv")
    assert len(objects.hidden) == 5 and all(len(c.prompts) == 500 for c in objects.concepts)
    nudity = nudity_suite(SHARED_PROMPTS / "unsafe-prompts4703.csv")
    assert len(nudity.hidden[0].prompts) == 4703
    style = style_suite(SHARED_PROMPTS / "long_niche_art_prompts.csv", hidden="Kelly McKernan")
    assert len(style.kept) == 4 and all(len(c.prompts) == 40 for c in style.concepts)


def test_training_captions_name_the_concept_and_stay_apart_from_the_suites_prompts():
    captions = training_captions("shape", "star", 24)
    assert len(set(captions)) == 24 and captions == training_captions("shape", "star", 24)
    assert all(synonym_used(text, ["star", "five-pointed star", "pentagram"]) for text in captions)
    assert not set(captions) & set(world_concept("shape", "star", HELD_OUT).prompts)
    assert training_captions("colour", "red", 0) == []
