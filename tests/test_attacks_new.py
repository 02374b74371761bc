"""Ring-A-Bell, UnlearnDiff and benign fine-tuning: each runs through the command on the public model alone,
writes its curve, leaves the model as it was, never reads a key, and lowers its own objective."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import toy_judges  # noqa: F401  (registers the test-brightness judge)
from conceptvault import attack_campaign, attacks_prompt_search
from conceptvault.attacks import Attack, AttackConfig, Recovery, _Finetune, denoising_loss, encode_images, run_attack
from conceptvault.attacks_prompt_search import (
    RingABellSearch,
    UnlearnDiffPrefix,
    concept_pairs,
    concept_words,
    text_states,
    word_tokens,
)
from conceptvault.backbone import encode_prompts, load_pipeline
from conceptvault.cli import main
from conceptvault.concepts import Concept
from conceptvault.evaluate import Suite, SuiteConcept, make_judge
from conceptvault.methods.kpop import HideConfig, hide
from conceptvault.methods.uce import UceConfig, erase_uce
from conceptvault.profiles import profile_for
from conceptvault.vault import save_vault

NEW = [Attack.RING_A_BELL, Attack.UNLEARNDIFF, Attack.BENIGN_FINETUNE]


def toy_suite() -> Suite:
    return Suite(
        name="toy",
        judge="test-brightness",
        hidden=[SuiteConcept("star", ["a star", "a red star, striped"], [0, 1], labels=["bright"])],
        kept=[SuiteConcept("circle", ["a circle", "a blue circle"], [5, 6], labels=["dark"])],
        steps=2,
        guidance=3.0,
    )


def pictures(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.fixture(scope="module")
def public_only(sd1_path, tmp_path_factory):
    """A hiding vault without its keys folder: the attacker's copy."""
    pipe = load_pipeline(str(sd1_path), device="cpu")
    config = HideConfig(model_updates=2, sampler_steps=2, m=3, checkpoint_every=0)
    path = tmp_path_factory.mktemp("attack-new") / "vault"
    save_vault(path, pipe, hide(pipe, [Concept("star")], config, progress=False, measure=False))
    shutil.rmtree(path / "keys")
    return path


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def picture_folder(folder, count: int, captions: list[str] | None = None, seed: int = 0):
    folder.mkdir()
    for i, image in enumerate(pictures(count, seed)):
        image.save(folder / f"{i}.png")
        if captions:
            (folder / f"{i}.txt").write_text(captions[i % len(captions)] + "\n")
    return folder


def model_state(pipe) -> dict[str, torch.Tensor]:
    state = {f"unet.{n}": t.clone() for n, t in pipe.unet.state_dict().items()}
    return state | {f"text.{n}": t.clone() for n, t in pipe.text_encoder.state_dict().items()}


@pytest.fixture(scope="module")
def pipe(sd1_path):
    """One tiny pipeline for the unit tests (each leaves it as it was)."""
    return load_pipeline(str(sd1_path), device="cpu")


def test_each_new_attack_runs_through_the_command_on_the_public_model_alone(
    public_only, tmp_path, capsys, monkeypatch
):
    unchanged = []

    def leaves_the_model_as_it_was(attack, pipe, *args, **kwargs):
        before = model_state(pipe)
        result = run_attack(attack, pipe, *args, **kwargs)
        after = model_state(pipe)
        unchanged.append(after.keys() == before.keys() and all(torch.equal(before[n], after[n]) for n in before))
        return result

    monkeypatch.setattr(attack_campaign, "run_attack", leaves_the_model_as_it_was)
    monkeypatch.setattr(attacks_prompt_search, "RING_A_BELL_CANDIDATES", 4)  # a tiny search on a busy CPU
    suite = tmp_path / "suite.json"
    toy_suite().save(suite)
    out = tmp_path / "out"
    args = ["attack", public_only, "--suite", suite, "--out", out, *(f"--attack={a.value}" for a in NEW)]
    args += ["--steps", "2", "--images", "2", "--size", "2", "--tokens", "3"]
    args += ["--images-from", picture_folder(tmp_path / "star", 2)]
    args += ["--benign-from", picture_folder(tmp_path / "kept", 2, ["a circle", "a blue circle"], seed=1)]
    code, printed, err = run(capsys, *args)
    assert code == 0, err
    data = json.loads((out / "attacks.json").read_text())
    assert data["rsr"] is None  # no key at hand, none read: the attacks ran on the public model alone
    results = {r["attack"]: r for r in data["results"]}
    assert list(results) == [a.value for a in NEW] and {r["model"] for r in data["results"]} == {"public"}
    assert unchanged == [True, True, True]
    table = (out / "attacks.md").read_text()
    assert (out / "attacks.png").is_file() and all(f"| {a.value} | public |" in table for a in NEW)
    for result in results.values():  # a recovery curve: measured before the first step and after the last
        steps = [p["steps"] for p in result["curve"]]
        assert steps[0] == 0 and steps[-1] == 2 and all(p["recovery"]["n"] == 2 for p in result["curve"])
    ring, prefix, benign = (results[a.value] for a in NEW)
    assert ring["budget"]["images"] == 0 and all(len(f["prompt"].split()) == 3 for f in ring["detail"]["found"])
    assert prefix["budget"]["images"] == 2 and len(prefix["detail"]["prefix"].split()) == 3
    assert benign["budget"]["images"] == 2 and benign["detail"]["captions"] == ["a circle", "a blue circle"]


def test_ring_a_bell_search_comes_closer_to_its_targets_with_words_that_never_name_the_concept(pipe):
    concept = SuiteConcept("star", ["a star", "a pentagram, striped"], [0, 1], labels=["bright"])
    pairs = concept_pairs(concept, ["pentagram"])
    assert pairs == [("a star", "a"), ("a pentagram, striped", "a, striped")]
    exclude = concept_words(concept, ["pentagram"])
    search = RingABellSearch(pipe, pairs, tokens=4, exclude=exclude, seed=0, candidates=8)
    before = search.distance.clone()
    for _ in range(4):
        previous = search.distance.clone()
        search.step()
        assert (search.distance <= previous).all()  # greedy: a swap is kept only where it comes closer
    assert (search.distance < before).all()
    found = search.prompts()
    assert torch.allclose(search.distances(search.choice, search.target), search.distance)  # the text is the search
    banned = {i for w in exclude for i in pipe.tokenizer(w).input_ids[1:-1]}
    for prompt, row in zip(found, search.choice, strict=True):
        assert pipe.tokenizer(prompt).input_ids[1:-1] == search.vocabulary[row].tolist()  # plain text, read back
        assert not banned & set(search.vocabulary[row].tolist())


def test_the_text_states_the_searches_use_are_the_pipeline_s_own(pipe):
    prompts = ["a star in the sky", ""]
    assert torch.allclose(text_states(pipe, prompts), encode_prompts(pipe, prompts), atol=1e-6)
    words = word_tokens(pipe.tokenizer)
    assert len(words) > 10_000 and pipe.tokenizer.convert_tokens_to_ids("star</w>") in words.tolist()


def test_unlearndiff_lowers_the_denoising_loss_of_its_prefix_on_fixed_data(pipe):
    trainer = UnlearnDiffPrefix(pipe, lr=5e-2, tokens=5, seed=0)
    latents = encode_images(pipe, pictures(4))
    trainable = [p.requires_grad for p in pipe.text_encoder.parameters()]

    def loss() -> float:
        with torch.no_grad():
            return float(
                denoising_loss(pipe, latents, trainer.states(["a star"] * 4), torch.Generator().manual_seed(1))
            )

    with trainer.attached():
        before, prefix = loss(), trainer.prefix()
        for _ in range(8):
            value = denoising_loss(pipe, latents, trainer.states(["a star"] * 4), torch.Generator().manual_seed(1))
            trainer.optimiser.zero_grad()
            value.backward()
            trainer.optimiser.step()
        after = loss()
    assert after < before and trainer.prefix() != prefix
    assert [p.requires_grad for p in pipe.text_encoder.parameters()] == trainable  # as it was afterwards
    (measured,) = trainer.prompts(["a star"])
    assert measured == f"{trainer.prefix()} a star" and len(pipe.tokenizer(measured).input_ids) == 5 + 2 + 2


def test_benign_finetune_trains_on_the_kept_captions_only_and_lowers_their_loss(pipe, monkeypatch):
    suite = toy_suite()
    benign = list(zip(pictures(4, seed=1), ["a circle", "a blue circle", "a circle", "a green square"], strict=True))
    seen = []
    states = _Finetune.states
    monkeypatch.setattr(_Finetune, "states", lambda self, prompts: seen.extend(prompts) or states(self, prompts))
    recovery = Recovery(pipe, make_judge(suite), suite.hidden[0], 2, 3.0, "top-1", 2)
    config = AttackConfig(steps=3, images=4, batch_size=2, measure_at=(0, 3))
    result = run_attack(Attack.BENIGN_FINETUNE, pipe, recovery, config, benign=benign)
    assert seen and set(seen) <= {c for _, c in benign}  # never the hidden concept's prompts
    assert [p["steps"] for p in result.curve] == [0, 3] and result.budget["images"] == 4

    trainer = _Finetune(pipe, suite.hidden[0], AttackConfig(lr=1e-3), None)
    latents = encode_images(pipe, [p for p, _ in benign])
    captions = [c for _, c in benign]

    def loss() -> float:
        with torch.no_grad():
            return float(denoising_loss(pipe, latents, trainer.states(captions), torch.Generator().manual_seed(1)))

    with trainer.attached():
        before = loss()
        for _ in range(10):
            value = denoising_loss(pipe, latents, trainer.states(captions), torch.Generator().manual_seed(1))
            trainer.optimiser.zero_grad()
            value.backward()
            trainer.optimiser.step()
        after = loss()
    assert after < before


def test_the_built_in_world_gives_captioned_pictures_of_kept_shapes_and_every_name_of_the_hidden_one():
    profile = profile_for("builtin")
    assert profile.concept_words("world-shape", "star") == ["star", "five-pointed star", "pentagram"]
    kept = ["circle", "heart"]
    pairs = profile.captioned_pictures("world-shape", kept, 6)
    assert len(pairs) == 6 and all(isinstance(p, Image.Image) for p, _ in pairs)
    for index, (_, caption) in enumerate(pairs):  # each caption names its own kept shape, none the star
        assert any(w in caption for w in profile.concept_words("world-shape", kept[index % 2]))
        assert not any(w in caption for w in profile.concept_words("world-shape", "star"))
    assert profile.captioned_pictures("world-shape", ["not-a-shape"], 2) is None
    sd = profile_for("some/model")
    assert sd.captioned_pictures("clip", kept, 2) is None and sd.concept_words("clip", "star") == ["star"]


def test_benign_finetune_refuses_a_missing_or_empty_folder_and_captions_that_name_the_concept(
    public_only, tmp_path, capsys
):
    suite = tmp_path / "suite.json"
    toy_suite().save(suite)
    star = picture_folder(tmp_path / "star", 2)
    base = ["attack", public_only, "--suite", suite, "--out", tmp_path / "out", "--images-from", star]
    base += ["--attack", "benign-finetune", "--steps", "1", "--images", "2", "--size", "2"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "uncaptioned.png").write_bytes((star / "0.png").read_bytes())
    naming = picture_folder(tmp_path / "naming", 2, ["a circle", "a big STAR"])
    for folder, says in [
        (tmp_path / "missing", "does not exist"),
        (empty, "no captioned pictures"),
        (naming, "names the hidden concept"),
    ]:
        code, _, err = run(capsys, *base, "--benign-from", folder)
        assert code == 1 and says in err and "--benign-from" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(("option", "value"), [("--strength", "nan"), ("--strength", "0"), ("--tokens", "0")])
def test_a_searched_prompt_setting_out_of_range_is_refused_in_one_line(public_only, tmp_path, capsys, option, value):
    code, _, err = run(capsys, "attack", public_only, "--out", tmp_path / "out", option, value)
    assert code == 1 and option in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(ValueError, match="strength"):
        AttackConfig(strength=float("inf"))


def test_an_erased_vault_is_attacked_directly_with_no_key_behind_it(sd1_path, tmp_path, capsys):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    erased = tmp_path / "erased"
    save_vault(erased, pipe, erase_uce(pipe, [Concept("star")], UceConfig()))
    suite = tmp_path / "suite.json"
    toy_suite().save(suite)
    out = tmp_path / "out"
    pictures_of_stars = picture_folder(tmp_path / "star", 2)
    (tmp_path / "prompts.txt").write_text("a pentagram\na five-pointed star\n")
    args = ["attack", erased, "--suite", suite, "--out", out, "--attack", "prompt", "--images-from", pictures_of_stars]
    args += ["--prompts", tmp_path / "prompts.txt"]
    code, printed, err = run(capsys, *args)
    assert code == 0, err
    data = json.loads((out / "attacks.json").read_text())
    assert data["rsr"] is None and [r["attack"] for r in data["results"]] == ["prompt"]
    assert data["results"][0]["curve"][-1]["recovery"]["n"] > 0
