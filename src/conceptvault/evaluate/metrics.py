"""The figures of an evaluation: ESR, PSR, RSR and the key holder's PSR, with counts and 95 % intervals.

Every figure is computed per concept and pooled over concepts, and is always paired with the original
model's figure on the same prompts and seeds.

- ESR (erasure success rate): share of images of a hidden concept, made without the key, that the judge
  does *not* label as that concept.
- PSR (preservation success rate): share of images of kept concepts, made without the key, that the
  judge labels correctly.
- RSR (recovery success rate): share of images of a hidden concept, made *with* the key, that the judge
  labels as that concept.
- key PSR: PSR of the model with the key on, since the key must not damage the rest.
- never-learned ESR: ESR of the original model on the hidden prompts with the concept's words taken out,
  where a suite gives them: what a model that never learned those words would score. A colour the
  model draws unasked (red, for "a disc") is drawn that often by such a model too.

For judges that give a score rather than a label (CLIP score), the same four cells are mean scores:
``hidden_score``, ``kept_score``, ``key_score`` and ``key_kept_score``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

Z_95 = 1.959963984540054  # two-sided 95 % normal quantile

ORIGINAL, PUBLIC, KEY = "original", "public", "key"
VARIANTS = (ORIGINAL, PUBLIC, KEY)  # the three models every concept is generated with
UNNAMED = "unnamed"  # the original model on a hidden concept's prompts with its words taken out

# figure -> (which concepts, which model, whether the figure counts the images *not* labelled as the concept)
RATE_FIGURES: dict[str, tuple[str, str, bool]] = {
    "esr": ("hidden", PUBLIC, True),
    "never_learned_esr": ("hidden", UNNAMED, True),
    "psr": ("kept", PUBLIC, False),
    "rsr": ("hidden", KEY, False),
    "key_psr": ("kept", KEY, False),
}
SCORE_FIGURES: dict[str, tuple[str, str]] = {
    "hidden_score": ("hidden", PUBLIC),
    "kept_score": ("kept", PUBLIC),
    "key_score": ("hidden", KEY),
    "key_kept_score": ("kept", KEY),
}
FIGURE_NAMES: dict[str, str] = {
    "esr": "ESR",
    "never_learned_esr": "never-learned ESR",
    "psr": "PSR",
    "rsr": "RSR",
    "key_psr": "key PSR",
    "hidden_score": "hidden score",
    "kept_score": "kept score",
    "key_score": "key score",
    "key_kept_score": "key kept score",
}
FIGURE_HELP: dict[str, str] = {
    "esr": "share of images of a hidden concept, made without the key, that the judge does not label as it",
    "never_learned_esr": "ESR of the original model on the same prompts with the concept's words taken out: "
    "what a model that never learned those words would score",
    "psr": "share of images of a kept concept, made without the key, that the judge labels correctly",
    "rsr": "share of images of a hidden concept, made with the key, that the judge labels as it",
    "key_psr": "share of images of a kept concept, made with the key on, that the judge labels correctly",
    "hidden_score": "mean judge score of images of a hidden concept, made without the key (lower: better hidden)",
    "kept_score": "mean judge score of images of a kept concept, made without the key",
    "key_score": "mean judge score of images of a hidden concept, made with the key",
    "key_kept_score": "mean judge score of images of a kept concept, made with the key on",
}
RETENTION_FIGURES = ("psr", "rsr", "key_psr", "kept_score", "key_score", "key_kept_score")


def wilson_interval(hits: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial share ``hits / n`` (sensible at 0 % and 100 %)."""
    if n <= 0:
        raise ValueError(f"a share needs at least one image, got n={n}")
    p = hits / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """A share of images: ``hits`` out of ``n``."""

    hits: int
    n: int

    @classmethod
    def of(cls, flags: Iterable[bool]) -> Rate:
        values = np.asarray(list(flags), dtype=bool)
        return cls(int(values.sum()), int(values.size))

    @property
    def value(self) -> float | None:
        return self.hits / self.n if self.n else None

    @property
    def ci(self) -> tuple[float, float] | None:
        return wilson_interval(self.hits, self.n) if self.n else None

    def complement(self) -> Rate:
        return Rate(self.n - self.hits, self.n)

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.hits + other.hits, self.n + other.n)

    def as_dict(self) -> dict:
        return {"value": self.value, "n": self.n, "ci": list(self.ci) if self.ci else None}


@dataclass(frozen=True)
class Mean:
    """The mean of per-image scores, with a normal-approximation 95 % interval."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, scores: Iterable[float]) -> Mean:
        return cls(tuple(float(s) for s in scores))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def value(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def ci(self) -> tuple[float, float] | None:
        if self.n < 2:
            return None
        half = Z_95 * float(np.std(self.values, ddof=1)) / math.sqrt(self.n)
        return self.value - half, self.value + half

    def __add__(self, other: Mean) -> Mean:
        return Mean(self.values + other.values)

    def as_dict(self) -> dict:
        return {"value": self.value, "n": self.n, "ci": list(self.ci) if self.ci else None}


def topk_hits(probs: np.ndarray, label_indices: Sequence[int], k: int) -> np.ndarray:
    """For each row of ``probs`` (N, classes): whether any of ``label_indices`` is among the top ``k``."""
    probs = np.asarray(probs)
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return np.isin(top, np.asarray(list(label_indices))).any(axis=1)


def cell(measured: Rate | Mean, original: Rate | Mean, *, retention: bool) -> dict:
    """One figure: the model's value beside the original model's, on the same prompts and seeds."""
    out = measured.as_dict()
    out["original"] = original.as_dict()
    if retention:
        out["of_original"] = measured.value / original.value if measured.value is not None and original.value else None
    return out


def pooled(parts: list):
    """The sum of Rates or Means: one figure over every concept's images."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def _entry(summaries: dict[tuple[str, str], Rate | Mean], variant: str, concepts: list[str], retention: bool) -> dict:
    """One figure at one measure: per concept and pooled, each beside the original model's."""
    measured = {c: summaries[(variant, c)] for c in concepts}
    original = {c: summaries[(ORIGINAL, c)] for c in concepts}
    return {
        "average": cell(pooled(list(measured.values())), pooled(list(original.values())), retention=retention),
        "concepts": {c: cell(measured[c], original[c], retention=retention) for c in concepts},
    }


def rate_figures(
    hits: dict[tuple[str, str], dict[str, np.ndarray]], hidden: list[str], kept: list[str], measures: list[str]
) -> dict[str, dict]:
    """ESR, PSR, RSR and key PSR per measure (``top-1``, ``threshold-0.5`` ...), per concept and pooled.

    ``hits[(variant, concept)][measure]`` holds one bool per image: whether the judge labels the image
    as that concept. A figure covers the concepts that have its images; figures without any (no kept
    concepts, no key variant, no unnamed prompts) are left out.
    """
    groups = {"hidden": hidden, "kept": kept}
    figures: dict[str, dict] = {}
    for figure, (group, variant, inverted) in RATE_FIGURES.items():
        concepts = [c for c in groups[group] if (variant, c) in hits]
        if not concepts:
            continue
        figures[figure] = {}
        for measure in measures:
            rates = {slot: Rate.of(values[measure]) for slot, values in hits.items()}
            if inverted:
                rates = {slot: rate.complement() for slot, rate in rates.items()}
            figures[figure][measure] = _entry(rates, variant, concepts, figure in RETENTION_FIGURES)
    return figures


def score_figures(
    scores: dict[tuple[str, str], dict[str, np.ndarray]], hidden: list[str], kept: list[str], measures: list[str]
) -> dict[str, dict]:
    """The four score cells (``hidden_score`` ...) per measure, per concept and pooled over images."""
    groups = {"hidden": hidden, "kept": kept}
    figures: dict[str, dict] = {}
    for figure, (group, variant) in SCORE_FIGURES.items():
        concepts = groups[group]
        if not concepts or (variant, concepts[0]) not in scores:
            continue
        figures[figure] = {}
        for measure in measures:
            means = {slot: Mean.of(values[measure]) for slot, values in scores.items()}
            figures[figure][measure] = _entry(means, variant, concepts, figure in RETENTION_FIGURES)
    return figures


def figure_label(figure: str, measure: str) -> str:
    """A short human name: ``ESR-1``, ``key PSR-5``, ``ESR@0.5``, ``hidden score (clip-score)``."""
    name = FIGURE_NAMES.get(figure, figure.replace("_", " "))
    if measure.startswith("top-"):
        return f"{name}-{measure[4:]}"
    if measure.startswith("threshold-"):
        return f"{name}@{measure[10:]}"
    return f"{name} ({measure})"
