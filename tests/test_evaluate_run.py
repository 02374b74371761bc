"""A suite end to end on a tiny pipeline and a vault from a very short hide: figures, reports, resume."""

import json
import re

import numpy as np
import pytest

import toy_judges  # noqa: F401  (registers the test-brightness judge)
from conceptvault.backbone import load_pipeline, unet_fingerprint
from conceptvault.concepts import Concept
from conceptvault.errors import ConceptVaultError
from conceptvault.evaluate import (
    Suite,
    SuiteConcept,
    figure_label,
    markdown_report,
    resolve_suite,
    rich_table,
    run_suite,
    write_report,
)
from conceptvault.key import attached_keys
from conceptvault.methods.kpop import HideConfig, hide
from conceptvault.vault import Vault, save_vault
from tiny_models import save_tiny_clip

STEPS = 2


def toy_suite(hidden: str = "star") -> Suite:
    return Suite(
        name="toy",
        judge="test-brightness",
        hidden=[SuiteConcept(hidden, ["a star", "a pentagram", "a red star"], [0, 1, 2], labels=["bright"])],
        kept=[SuiteConcept("circle", ["a circle", "a blue disc"], [5, 6], labels=["dark"])],
        steps=STEPS,
        guidance=3.0,
        description="a toy suite for tests",
    )


def fresh_pipeline(folder):
    return load_pipeline(str(folder), device="cpu")


def short_vault(model_folder, vault_folder, names):
    """A vault from a very short hide on the tiny pipeline, saved and loaded back with its keys."""
    pipe = fresh_pipeline(model_folder)
    concepts = [Concept(name) for name in names]
    config = HideConfig(model_updates=2, k=2, lr=1e-3, key_lr=1e-3, m=4, sampler_steps=2, checkpoint_every=0)
    result = hide(pipe, concepts, config, preserve=["a circle"], progress=False)
    save_vault(vault_folder / "vault", pipe, result)
    return Vault.load(vault_folder / "vault", keys="all")


@pytest.fixture(scope="module")
def vault(sd1_path, tmp_path_factory):
    return short_vault(sd1_path, tmp_path_factory.mktemp("vault"), ["star"])


def _images(out):
    return sorted(out.glob("images/*/*/*.png"))


def test_suite_runs_end_to_end_and_writes_every_report(sd1_path, vault, tmp_path):
    pipe = fresh_pipeline(sd1_path)
    before = unet_fingerprint(pipe.unet)
    result = run_suite(pipe, vault, toy_suite(), tmp_path, batch_size=4, progress=False)

    assert unet_fingerprint(pipe.unet) == before and not attached_keys(pipe.unet)  # the pipeline is left as given
    assert len(_images(tmp_path)) == 3 * 5 and result.meta["images"] == {"total": 15, "generated": 15, "reused": 0}
    assert set(result.figures) == {"esr", "psr", "rsr", "key_psr"}
    for figure in result.figures.values():
        cell = figure["top-1"]["average"]
        assert {"value", "n", "ci", "original"} <= set(cell) and {"value", "n", "ci"} <= set(cell["original"])
    assert result.cell("esr")["n"] == 3 and result.cell("psr")["n"] == 2
    assert result.cell("rsr", concept="star")["original"]["value"] == 1 - result.cell("esr")["original"]["value"]
    keyed = {r.keys for r in result.records if r.variant == "key"}
    assert keyed == {("star",)} and {r.keys for r in result.records if r.variant != "key"} == {()}

    files = write_report(result)
    data = json.loads(files.json.read_text())
    assert data["suite"] == "toy" and data["hidden"] == ["star"] and data["kept"] == ["circle"]
    assert data["esr"]["top-1"]["concepts"]["star"] == result.cell("esr", concept="star")
    html = files.html.read_text()
    markdown = files.markdown.read_text()
    for name, by_measure in result.figures.items():
        for measure in by_measure:
            assert figure_label(name, measure) in html and figure_label(name, measure) in markdown
            assert f"{name}[&quot;{measure}&quot;]" in html
    assert len(re.findall(r"<img [^>]*src='data:image/png;base64,", html)) == 15
    assert len(json.loads(files.images.read_text())) == 15
    assert markdown == markdown_report(result) and rich_table(result).row_count == 4


def test_unnamed_prompts_are_made_by_the_original_model_and_give_the_never_learned_esr(sd1_path, vault, tmp_path):
    suite = toy_suite()
    suite.hidden[0].unnamed = ["a shape", "a shape", "a red star"]  # the last had nothing to take out
    result = run_suite(fresh_pipeline(sd1_path), vault, suite, tmp_path, batch_size=4, progress=False)

    unnamed = [r for r in result.records if r.variant == "unnamed"]
    original = {r.index: r for r in result.records if r.variant == "original" and r.concept == "star"}
    assert [r.prompt for r in unnamed] == ["a shape", "a shape", "a red star"] and all(not r.keys for r in unnamed)
    assert unnamed[2].path == original[2].path  # the same prompt and seed: the same image, made once
    assert unnamed[0].path.parent == original[0].path.parent  # the original model's folder
    assert len(_images(tmp_path)) == 3 * 5 + 2 and result.meta["images"]["generated"] == 17
    hits = [r.hits["top-1"] for r in unnamed]
    assert result.cell("never_learned_esr")["value"] == pytest.approx(1 - sum(hits) / 3)
    assert result.cell("never_learned_esr")["n"] == 3
    assert "never-learned ESR-1" in markdown_report(result)
    html = write_report(result).html.read_text()  # the hidden concept's grid gains a column, the kept one not
    assert "original, words removed" in html and len(re.findall(r"<img ", html)) == 3 * 4 + 2 * 3
    with pytest.raises(ValueError, match="2 unnamed prompts for 3 prompts"):
        SuiteConcept("star", ["a", "b", "c"], [0, 1, 2], unnamed=["a", "b"])


def test_resume_reuses_images_and_makes_only_the_missing_ones(sd1_path, vault, tmp_path):
    pipe = fresh_pipeline(sd1_path)
    first = run_suite(pipe, vault, toy_suite(), tmp_path, batch_size=4, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in _images(tmp_path)}

    again = run_suite(pipe, vault, toy_suite(), tmp_path, batch_size=4, progress=False)
    assert again.meta["images"] == {"total": 15, "generated": 0, "reused": 15}
    assert {p: p.stat().st_mtime_ns for p in _images(tmp_path)} == stamps
    assert again.figures == first.figures

    lost = _images(tmp_path)[4]
    lost.unlink()
    third = run_suite(pipe, vault, toy_suite(), tmp_path, batch_size=4, progress=False)
    assert third.meta["images"]["generated"] == 1 and lost.is_file()
    assert third.figures == first.figures


def test_a_pipeline_evaluated_twice_gets_the_vault_applied_again(sd1_path, vault, tmp_path):
    pipe = fresh_pipeline(sd1_path)
    first = run_suite(pipe, vault, toy_suite(), tmp_path / "first", progress=False)
    second = run_suite(pipe, vault, toy_suite(), tmp_path / "second", progress=False)
    assert second.meta["images"]["generated"] == 15
    for one, two in zip(first.records, second.records, strict=False):
        assert one.path.read_bytes() == two.path.read_bytes(), one.path
    public = {r.index: r.path.read_bytes() for r in first.records if r.variant == "public" and r.concept == "star"}
    original = {r.index: r.path.read_bytes() for r in first.records if r.variant == "original" and r.concept == "star"}
    assert public != original  # the public weights did change the images


def test_an_interrupted_run_continues_where_it_stopped(sd1_path, vault, tmp_path, monkeypatch):
    import conceptvault.evaluate.run as run_module

    real = run_module.generate_images
    calls = []

    def interrupted_after_two_batches(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    pipe = fresh_pipeline(sd1_path)
    before = unet_fingerprint(pipe.unet)
    monkeypatch.setattr(run_module, "generate_images", interrupted_after_two_batches)
    with pytest.raises(ConceptVaultError, match="interrupted after 4 new images.*same output folder to continue"):
        run_suite(pipe, vault, toy_suite(), tmp_path, batch_size=2, progress=False)
    assert len(_images(tmp_path)) == 4
    assert unet_fingerprint(pipe.unet) == before and not attached_keys(pipe.unet)

    monkeypatch.setattr(run_module, "generate_images", real)
    result = run_suite(pipe, vault, toy_suite(), tmp_path, batch_size=2, progress=False)
    assert result.meta["images"] == {"total": 15, "generated": 11, "reused": 4}


def test_images_from_other_settings_are_never_mixed_in(sd1_path, vault, tmp_path):
    pipe = fresh_pipeline(sd1_path)
    run_suite(pipe, vault, toy_suite(), tmp_path, batch_size=8, progress=False, with_key=False)
    with pytest.raises(ConceptVaultError, match="different steps.*another output folder"):
        run_suite(pipe, vault, toy_suite(), tmp_path, steps=STEPS + 1, batch_size=8, progress=False)


def test_public_model_only_without_the_key(sd1_path, vault, tmp_path):
    result = run_suite(fresh_pipeline(sd1_path), vault, toy_suite(), tmp_path, progress=False, with_key=False)
    assert set(result.figures) == {"esr", "psr"} and result.meta["images"]["total"] == 10


def test_wrong_base_model_and_missing_key_are_one_clear_error(sd1_path, sd2_path, vault, tmp_path):
    with pytest.raises(ConceptVaultError, match="this vault was made for .* fingerprint"):
        run_suite(fresh_pipeline(sd2_path), vault, toy_suite(), tmp_path, progress=False)
    with pytest.raises(ConceptVaultError, match="no key for the suite's hidden concept 'heart'; its keys are star"):
        run_suite(fresh_pipeline(sd1_path), vault, toy_suite("heart"), tmp_path, progress=False)


def test_a_world_suite_runs_on_the_tiny_pipeline(sd1_path, vault, tmp_path):
    suite = resolve_suite("shape", concept="star", size=1)
    result = run_suite(fresh_pipeline(sd1_path), vault, suite, tmp_path, steps=STEPS, batch_size=10, progress=False)
    assert result.cell("psr")["n"] == 9 and result.cell("rsr")["n"] == 1
    assert "ESR-1" in write_report(result).html.read_text()


def test_a_score_suite_runs_end_to_end_with_clip(sd1_path, vault, tmp_path):
    clip = save_tiny_clip(tmp_path / "clip")
    suite = Suite(
        name="style",
        judge="clip",
        judge_model=str(clip),
        hidden=[SuiteConcept("star", ["a star in the style of Kinkade", "a pentagram"], [0, 1])],
        kept=[SuiteConcept("Kilian Eng", ["art by Kilian Eng"], [2])],
        steps=STEPS,
    )
    result = run_suite(fresh_pipeline(sd1_path), vault, suite, tmp_path / "out", progress=False)
    assert result.kind == "score" and result.measures == ["clip-score"]
    assert set(result.figures) == {"hidden_score", "kept_score", "key_score", "key_kept_score"}
    cell = result.cell("hidden_score")
    assert cell["n"] == 2 and 0 <= cell["value"] <= 100 and 0 <= cell["original"]["value"] <= 100
    html = write_report(result).html.read_text()
    assert "hidden score (clip-score)" in html and "key kept score (clip-score)" in html


def test_a_threshold_suite_runs_end_to_end_with_nudenet(sd1_path, vault, tmp_path):
    from conceptvault.evaluate.nudity import EXPOSED_CLASSES

    concept = SuiteConcept(
        "nudity", ["a person", "a statue"], [3, 4], labels=list(EXPOSED_CLASSES), key="star", guidance=[3.0, 5.0]
    )
    suite = Suite(name="nudity", judge="nudenet", hidden=[concept], thresholds=[0.3, 0.5, 0.7], steps=STEPS)
    result = run_suite(fresh_pipeline(sd1_path), vault, suite, tmp_path, progress=False)
    assert result.measures == ["threshold-0.3", "threshold-0.5", "threshold-0.7"]
    assert set(result.figures) == {"esr", "rsr"}  # nothing kept
    assert result.cell("esr", "threshold-0.5")["n"] == 2
    assert {r.guidance for r in result.records} == {3.0, 5.0}  # each prompt's own guidance
    assert "ESR@0.5" in write_report(result).markdown.read_text()


def test_fidelity_figures_on_hand_made_images(tmp_path):
    from PIL import Image

    from conceptvault.evaluate.run import ImageRecord, _fidelity
    from conceptvault.evaluate.store import ImageStore

    store = ImageStore(tmp_path)
    rng = np.random.default_rng(0)
    base = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(4)]
    changed = Image.fromarray(255 - np.asarray(base[1]))
    suite = toy_suite()

    def record(variant, concept, group, index, image, label):
        path = store.path(variant, concept, index, index, "p")
        store.save(path, image)
        return ImageRecord(variant, concept, group, index, "p", index, 3.0, (), path, label=label)

    records = [record("original", "star", "hidden", i, base[i], "bright") for i in range(2)]
    records += [record("key", "star", "hidden", i, base[i], "bright") for i in range(2)]  # identical
    records += [record("original", "circle", "kept", i, base[2 + i], "dark") for i in range(2)]
    records += [
        record("public", "circle", "kept", 0, base[2], "dark"),
        record("public", "circle", "kept", 1, changed, "bright"),
    ]
    fidelity = _fidelity(suite, records, store)

    same = fidelity["key_vs_original"]
    assert same["agreement"]["average"]["value"] == 1.0 and same["agreement"]["average"]["n"] == 2
    assert same["ssim"]["average"]["value"] == pytest.approx(1.0) and same["psnr"]["average"]["value"] == 100.0
    moved = fidelity["public_vs_original"]
    assert moved["agreement"]["average"]["value"] == 0.5
    assert moved["ssim"]["average"]["value"] < 0.9 and moved["psnr"]["average"]["value"] < 60
    assert moved["ssim"]["concepts"]["circle"]["n"] == 2
