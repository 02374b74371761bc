"""Judges say what an image shows. A suite names its judge; this module builds it by that name.

Two kinds:
- ``rate`` judges tell, for each image and each measure (``top-1``, ``threshold-0.5`` ...), whether the
  image shows the concept (its labels); they give ESR, PSR, RSR and key PSR;
- ``score`` judges give each image a number (CLIP score of its prompt); they give mean scores.

Built in: ``world-shape``, ``world-colour``, ``world-style`` (the Shapes world's judge), ``imagenet``
(an ImageNet classifier, ResNet-50 by default), ``nudenet`` (NudeNet's detector), ``clip`` (CLIP score).
Users add their own with ``register_judge(name, factory)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from PIL import Image

from conceptvault.errors import ConceptVaultError
from conceptvault.evaluate.metrics import topk_hits
from conceptvault.evaluate.suite import Suite


@dataclass
class Judgement:
    """A judge's reading of a batch of images, all asking for the same concept."""

    hits: dict[str, np.ndarray] = field(default_factory=dict)  # measure -> bool per image (shows the concept)
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # measure -> float per image
    notes: list[str] = field(default_factory=list)  # a short reading per image, shown in the report
    labels: list[str] = field(default_factory=list)  # a classifier's top label per image (for agreement)


class Judge(Protocol):
    name: str
    kind: str  # "rate" or "score"
    measures: list[str]

    def check_labels(self, labels: Sequence[str]) -> None:
        """Raise ConceptVaultError naming any label this judge does not know."""

    def judge(self, images: list[Image.Image], prompts: list[str], labels: Sequence[str]) -> Judgement:
        """Read ``images`` (made from ``prompts``) against the concept given by ``labels``."""


JudgeFactory = Callable[[Suite, "str | None"], Judge]


class ClassifierJudge:
    """A rate judge over a classifier's probabilities: the concept is shown when one of its labels is in the top k."""

    kind = "rate"

    def __init__(
        self,
        name: str,
        labels: list[str],
        top_k: Sequence[int],
        predict: Callable[[list[Image.Image]], np.ndarray],
        embed: Callable[[list[Image.Image]], np.ndarray] | None = None,
        reference: Callable[[Sequence[str], int, int], np.ndarray] | None = None,
    ) -> None:
        self.embed = embed  # features for Fréchet distances, where the classifier offers them
        self.reference = reference  # features of real images of some labels: (labels, count, seed) -> (count, D)
        self.name = name
        self.labels = list(labels)
        self.top_k = sorted(set(top_k))
        self.measures = [f"top-{k}" for k in self.top_k]
        self._predict = predict
        self._by_name = {label.lower(): i for i, label in enumerate(self.labels)}

    def label_index(self, label: str) -> int:
        """A label by name (any case) or by class index (``"217"``)."""
        text = str(label).strip()
        if text.lower() in self._by_name:
            return self._by_name[text.lower()]
        if text.isdigit() and int(text) < len(self.labels):
            return int(text)
        shown = ", ".join(self.labels[:12]) + (" ..." if len(self.labels) > 12 else "")
        raise ConceptVaultError(
            f"the judge {self.name!r} has no label {text!r}; give one of its labels ({shown}) or a class index "
            f"below {len(self.labels)}."
        )

    def check_labels(self, labels: Sequence[str]) -> None:
        for label in labels:
            self.label_index(label)

    def judge(self, images: list[Image.Image], prompts: list[str], labels: Sequence[str]) -> Judgement:
        probs = np.asarray(self._predict(images), dtype=np.float64)
        indices = [self.label_index(label) for label in labels]
        hits = {f"top-{k}": topk_hits(probs, indices, k) for k in self.top_k}
        best = probs.argmax(axis=1)
        notes = [f"{self.labels[i]} {probs[row, i]:.2f}" for row, i in enumerate(best)]
        return Judgement(hits=hits, notes=notes, labels=[self.labels[i] for i in best])


def _world_judge(head: str) -> JudgeFactory:
    def factory(suite: Suite, device: str | None) -> Judge:
        from conceptvault.world.judge import load_judge as load_world_judge
        from conceptvault.world.quality import renders_of

        world_judge = load_world_judge()

        def predict(images: list[Image.Image]) -> np.ndarray:
            return world_judge.predict(images)[head].detach().float().cpu().numpy()

        def reference(labels: Sequence[str], count: int, seed: int) -> np.ndarray:
            return world_judge.embed(renders_of(head, labels, count, seed))

        labels = list(world_judge.labels[head])
        return ClassifierJudge(f"world-{head}", labels, suite.top_k, predict, world_judge.embed, reference)

    return factory


def _imagenet_judge(suite: Suite, device: str | None) -> Judge:
    from conceptvault.evaluate.classifier import ImageNetJudge

    return ImageNetJudge(suite.judge_model or ImageNetJudge.DEFAULT_MODEL, top_k=suite.top_k, device=device)


def _nudenet_judge(suite: Suite, device: str | None) -> Judge:
    from conceptvault.evaluate.nudity import NudeNetJudge

    return NudeNetJudge(thresholds=suite.thresholds)


def _clip_judge(suite: Suite, device: str | None) -> Judge:
    from conceptvault.evaluate.clip_score import ClipScoreJudge

    return ClipScoreJudge(suite.judge_model or ClipScoreJudge.DEFAULT_MODEL, device=device)


_JUDGES: dict[str, JudgeFactory] = {
    "world-shape": _world_judge("shape"),
    "world-colour": _world_judge("colour"),
    "world-style": _world_judge("style"),
    "imagenet": _imagenet_judge,
    "nudenet": _nudenet_judge,
    "clip": _clip_judge,
}


def register_judge(name: str, factory: JudgeFactory) -> None:
    """Make ``name`` usable as a suite's judge: ``factory(suite, device)`` returns the judge."""
    _JUDGES[name] = factory


def judge_names() -> list[str]:
    return sorted(_JUDGES)


def make_judge(suite: Suite, device: str | None = None) -> Judge:
    """The judge a suite names, with every concept's labels checked against it."""
    if suite.judge not in _JUDGES:
        raise ConceptVaultError(f"unknown judge {suite.judge!r}; choose one of {', '.join(judge_names())}.")
    judge = _JUDGES[suite.judge](suite, device)
    for concept in suite.concepts:
        judge.check_labels(concept.labels)
    return judge
