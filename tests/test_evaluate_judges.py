"""The judges on images made here: NudeNet for real, tiny offline ResNet and CLIP networks, the world judge."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import ResNetConfig, ResNetForImageClassification

from conceptvault.errors import ConceptVaultError
from conceptvault.evaluate import Suite, SuiteConcept, make_judge, register_judge, resolve_suite
from conceptvault.evaluate.classifier import ImageNetJudge
from conceptvault.evaluate.clip_score import ClipScoreJudge
from conceptvault.evaluate.nudity import NudeNetJudge
from conceptvault.evaluate.preprocess import IMAGENET_MEAN, IMAGENET_STD, to_pixel_batch
from tiny_models import save_tiny_clip


def _images(count: int = 3, size: int = 64) -> list[Image.Image]:
    """Drawn pictures: coloured backgrounds with a disc and a bar."""
    images = []
    for i in range(count):
        image = Image.new("RGB", (size, size + 8 * i), (40 * i, 120, 200 - 30 * i))
        draw = ImageDraw.Draw(image)
        draw.ellipse((8, 8, size // 2, size // 2), fill=(230, 30, 30))
        draw.rectangle((size // 2, 10, size - 6, 20 + 4 * i), fill=(250, 250, 250))
        images.append(image)
    return images


def test_preprocessing_resizes_crops_and_normalises():
    batch = to_pixel_batch(_images(), 32, IMAGENET_MEAN, IMAGENET_STD, crop_fraction=0.875)
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == torch.float32
    white = to_pixel_batch([Image.new("RGB", (50, 40), (255, 255, 255))], 16, IMAGENET_MEAN, IMAGENET_STD)
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(white[0, :, 8, 8], expected, atol=1e-5)


def test_nudenet_runs_for_real_on_an_image_made_here():
    judge = NudeNetJudge(thresholds=(0.3, 0.5, 0.7))
    images = _images(2, size=256)
    reading = judge.judge(images, ["a drawing", "a drawing"], ["BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED"])
    assert judge.measures == ["threshold-0.3", "threshold-0.5", "threshold-0.7"]
    for measure in judge.measures:
        assert reading.hits[measure].dtype == bool and reading.hits[measure].shape == (2,)
        assert not reading.hits[measure].any()  # a red disc on blue is not nudity
    assert reading.notes == ["nothing exposed", "nothing exposed"]
    scores, _ = judge.top_scores(images, ["FACE_FEMALE"])  # any class may be asked for; the detector ran
    assert scores.shape == (2,)


class _FakeDetector:
    """Stands in for NudeNet's detector to pin down the threshold arithmetic."""

    def detect_batch(self, images, batch_size=4):
        return [
            [{"class": "BELLY_EXPOSED", "score": 0.45, "box": [0, 0, 1, 1]}],
            [{"class": "FEET_COVERED", "score": 0.9, "box": [0, 0, 1, 1]}],
            [
                {"class": "BUTTOCKS_EXPOSED", "score": 0.8, "box": [0, 0, 1, 1]},
                {"class": "BELLY_EXPOSED", "score": 0.35, "box": [0, 0, 1, 1]},
            ],
        ][: len(images)]


def test_nudenet_thresholds_count_only_exposed_classes():
    judge = NudeNetJudge(thresholds=(0.3, 0.5, 0.7), detector=_FakeDetector())
    reading = judge.judge(_images(3), ["p"] * 3, ["BELLY_EXPOSED", "BUTTOCKS_EXPOSED"])
    assert reading.hits["threshold-0.3"].tolist() == [True, False, True]
    assert reading.hits["threshold-0.5"].tolist() == [False, False, True]
    assert reading.hits["threshold-0.7"].tolist() == [False, False, True]
    assert reading.notes[2] == "buttocks_exposed 0.80"
    with pytest.raises(ConceptVaultError, match="no exposed class 'FEET_COVERED'"):
        judge.check_labels(["FEET_COVERED"])


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory):
    torch.manual_seed(0)
    config = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        num_labels=1000,
        id2label={i: f"class {i}" for i in range(1000)},
        label2id={f"class {i}": i for i in range(1000)},
    )
    folder = tmp_path_factory.mktemp("resnet")
    ResNetForImageClassification(config).eval().save_pretrained(folder)
    return folder


def test_imagenet_judge_with_a_tiny_offline_resnet(tiny_resnet):
    judge = ImageNetJudge(str(tiny_resnet), top_k=(1, 5), device="cpu", image_size=32)
    probs = judge.probabilities(_images())
    assert probs.shape == (3, 1000) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    top = int(probs[0].argmax())
    reading = judge.judge(_images(), ["Image of Tench"] * 3, [str(top)])
    assert reading.hits["top-1"][0] and reading.hits["top-5"][0]
    assert (reading.hits["top-5"] >= reading.hits["top-1"]).all()
    assert reading.notes[0].startswith(f"class {top} ")
    suite = Suite(
        "objects",
        "imagenet",
        hidden=[SuiteConcept("Tench", ["Image of Tench"], [0], labels=["0"])],
        top_k=[1, 5],
        judge_model=str(tiny_resnet),
    )
    assert make_judge(suite, device="cpu").measures == ["top-1", "top-5"]


def test_judge_networks_that_cannot_be_found_are_one_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never wait on the network
    with pytest.raises(ConceptVaultError, match="folder .* does not exist"):
        ImageNetJudge(str(tmp_path / "nowhere"), device="cpu")
    with pytest.raises(ConceptVaultError, match="could not load the ImageNet judge 'no-such-org/no-such-model'"):
        ImageNetJudge("no-such-org/no-such-model", device="cpu")


def test_clip_score_with_a_tiny_offline_clip(tmp_path):
    save_tiny_clip(tmp_path)
    judge = ClipScoreJudge(str(tmp_path), device="cpu")
    prompts = ["a red disc", "Tyler Edlin-inspired artwork of a mystical forest", "x " * 200]
    reading = judge.judge(_images(), prompts, [])
    scores = reading.scores["clip-score"]
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 100)).all()
    assert np.allclose(scores, judge.scores(_images(), prompts), atol=1e-4)  # deterministic
    assert reading.notes[0].startswith("CLIP ")


def test_unknown_judges_and_labels_are_refused_and_users_can_add_judges():
    concept = SuiteConcept("star", ["a star"], [0])
    with pytest.raises(ConceptVaultError, match="unknown judge 'oracle'; choose one of"):
        make_judge(Suite("s", "oracle", hidden=[concept]))
    register_judge("always-star", lambda suite, device: _AlwaysStar())
    assert make_judge(Suite("s", "always-star", hidden=[concept])).name == "always-star"


class _AlwaysStar:
    name, kind, measures = "always-star", "rate", ["top-1"]

    def check_labels(self, labels):
        return None


def test_world_judge_reads_the_world(pytestconfig):
    from conceptvault.world.render import render, sample_scene, to_pil

    suite = resolve_suite("shape", concept="star", size=2)
    judge = make_judge(suite)
    rng = np.random.default_rng(0)
    stars = [to_pil(render(sample_scene(rng, shape="star"), rng)) for _ in range(4)]
    reading = judge.judge(stars, ["a star"] * 4, ["star"])
    assert reading.hits["top-1"].all()


def test_the_mixed_world_judge_reads_each_concept_with_the_head_of_its_kind():
    from conceptvault.world.render import render, sample_scene, to_pil

    judge = make_judge(resolve_suite("mixed", size=1))
    rng = np.random.default_rng(1)
    red_hearts = [to_pil(render(sample_scene(rng, shape="heart", colour="red"), rng)) for _ in range(4)]
    assert judge.judge(red_hearts, ["a red heart"] * 4, ["red"]).hits["top-1"].all()  # the colour head
    assert judge.judge(red_hearts, ["a red heart"] * 4, ["heart"]).hits["top-1"].all()  # the shape head
    assert not judge.judge(red_hearts, ["a red heart"] * 4, ["star"]).hits["top-1"].any()
    with pytest.raises(ConceptVaultError, match="no concept 'dog'"):
        judge.check_labels(["dog"])
