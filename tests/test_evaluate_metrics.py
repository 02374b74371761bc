"""The figures' arithmetic on hand-made labels: ESR, PSR, RSR, key PSR, top-k, Wilson intervals, scores."""

import math

import numpy as np
import pytest

from conceptvault.errors import ConceptVaultError
from conceptvault.evaluate.judges import ClassifierJudge
from conceptvault.evaluate.metrics import (
    Mean,
    Rate,
    figure_label,
    rate_figures,
    score_figures,
    topk_hits,
    wilson_interval,
)


def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n=0"):
        wilson_interval(0, 0)


def test_rates_count_complement_and_pool():
    rate = Rate.of([True, False, True, True])
    assert (rate.hits, rate.n, rate.value) == (3, 4, 0.75)
    assert rate.complement() == Rate(1, 4)
    assert (rate + Rate(1, 6)).value == pytest.approx(0.4)
    assert Rate(0, 0).value is None and Rate(0, 0).ci is None


def test_topk_hits_on_hand_made_probabilities():
    probs = np.array(
        [
            [0.70, 0.20, 0.10, 0.00],  # label 0 is top-1
            [0.20, 0.50, 0.25, 0.05],  # label 0 is third
            [0.10, 0.60, 0.00, 0.30],  # label 0 is third
        ]
    )
    assert topk_hits(probs, [0], 1).tolist() == [True, False, False]
    assert topk_hits(probs, [0], 2).tolist() == [True, False, False]
    assert topk_hits(probs, [0], 3).tolist() == [True, True, True]
    assert topk_hits(probs, [0, 3], 2).tolist() == [True, False, True]  # any of the concept's labels counts
    assert topk_hits(probs, [2], 10).tolist() == [True, True, True]  # k above the class count is all classes


def _hits(flags):
    return {"top-1": np.array(flags, dtype=bool)}


def test_esr_psr_rsr_key_psr_from_hand_made_labels():
    # whether the judge labels each image as its concept
    hits = {
        ("original", "star"): _hits([1, 1, 1, 0]),
        ("public", "star"): _hits([0, 0, 0, 1]),
        ("key", "star"): _hits([1, 1, 0, 0]),
        ("original", "circle"): _hits([1, 1, 1, 1]),
        ("public", "circle"): _hits([1, 1, 1, 0]),
        ("key", "circle"): _hits([1, 1, 1, 1]),
        ("original", "heart"): _hits([1, 1, 0, 0]),
        ("public", "heart"): _hits([1, 0, 0, 0]),
        ("key", "heart"): _hits([1, 1, 0, 0]),
    }
    figures = rate_figures(hits, ["star"], ["circle", "heart"], ["top-1"])
    assert list(figures) == ["esr", "psr", "rsr", "key_psr"]

    esr = figures["esr"]["top-1"]["average"]
    assert esr["value"] == 0.75 and esr["n"] == 4
    assert esr["original"]["value"] == 0.25
    assert esr["ci"] == pytest.approx(list(wilson_interval(3, 4)))
    assert "of_original" not in esr  # a share hidden is not a share kept

    rsr = figures["rsr"]["top-1"]["average"]
    assert rsr["value"] == 0.5 and rsr["original"]["value"] == 0.75
    assert rsr["of_original"] == pytest.approx(0.5 / 0.75)

    psr = figures["psr"]["top-1"]
    assert psr["concepts"]["circle"]["value"] == 0.75 and psr["concepts"]["heart"]["value"] == 0.25
    assert psr["average"]["value"] == 0.5 and psr["average"]["n"] == 8  # pooled over both kept concepts
    assert psr["average"]["original"]["value"] == 0.75
    assert figures["key_psr"]["top-1"]["average"]["value"] == 0.75
    assert figures["key_psr"]["top-1"]["average"]["of_original"] == pytest.approx(1.0)


def test_figures_without_kept_concepts_or_key_images_are_left_out():
    hits = {("original", "nudity"): _hits([1, 0]), ("public", "nudity"): _hits([0, 0])}
    figures = rate_figures(hits, ["nudity"], [], ["top-1"])
    assert list(figures) == ["esr"]
    assert figures["esr"]["top-1"]["average"]["value"] == 1.0


def test_never_learned_esr_counts_the_original_models_images_without_the_concepts_words():
    hits = {
        ("original", "red"): _hits([1, 1, 1, 1]),
        ("public", "red"): _hits([0, 1, 0, 0]),
        ("unnamed", "red"): _hits([0, 1, 0, 1]),  # the original drew red on two prompts that did not ask for it
        ("original", "blue"): _hits([1, 1]),
        ("public", "blue"): _hits([0, 0]),
    }
    figures = rate_figures(hits, ["red", "blue"], [], ["top-1"])
    assert list(figures) == ["esr", "never_learned_esr"]
    never = figures["never_learned_esr"]["top-1"]
    assert list(never["concepts"]) == ["red"]  # only the concepts with unnamed images
    assert never["average"]["value"] == 0.5 and never["average"]["n"] == 4
    assert never["average"]["original"]["value"] == 0.0  # beside it, the original's ESR on the prompts as asked
    assert figures["esr"]["top-1"]["average"]["n"] == 6


def test_score_figures_are_means_with_normal_intervals():
    scores = {
        (variant, concept): {"clip-score": np.array(values, dtype=float)}
        for variant, concept, values in [
            ("original", "kinkade", [30, 32]),
            ("public", "kinkade", [20, 22]),
            ("key", "kinkade", [29, 31]),
            ("original", "eng", [28, 28]),
            ("public", "eng", [27, 29]),
            ("key", "eng", [28, 30]),
        ]
    }
    figures = score_figures(scores, ["kinkade"], ["eng"], ["clip-score"])
    assert list(figures) == ["hidden_score", "kept_score", "key_score", "key_kept_score"]
    hidden = figures["hidden_score"]["clip-score"]["average"]
    assert hidden["value"] == 21 and hidden["original"]["value"] == 31 and hidden["n"] == 2
    half = 1.959963984540054 * math.sqrt(2) / math.sqrt(2)
    assert hidden["ci"] == pytest.approx([21 - half, 21 + half])
    assert figures["key_score"]["clip-score"]["average"]["of_original"] == pytest.approx(30 / 31)
    assert Mean.of([5.0]).ci is None


def test_figure_labels():
    assert figure_label("esr", "top-1") == "ESR-1"
    assert figure_label("key_psr", "top-5") == "key PSR-5"
    assert figure_label("esr", "threshold-0.5") == "ESR@0.5"
    assert figure_label("key_score", "clip-score") == "key score (clip-score)"


def test_classifier_judge_reads_labels_by_name_or_index():
    probs = np.array([[0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    judge = ClassifierJudge("toy", ["circle", "star", "heart"], [1, 2], lambda images: probs)
    reading = judge.judge([None, None], ["a star", "a star"], ["Star"])
    assert reading.hits["top-1"].tolist() == [True, False]
    assert reading.hits["top-2"].tolist() == [True, True]
    assert reading.notes == ["star 0.80", "circle 0.60"]
    assert judge.label_index("2") == 2
    with pytest.raises(ConceptVaultError, match="no label 'square'.*circle, star, heart"):
        judge.check_labels(["square"])
