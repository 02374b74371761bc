"""Judges say what an image shows. A suite names its judge; this module builds it by that name.

Two kinds:
- ``rate`` judges tell, for each image and each measure (``top-1``, ``threshold-0.5`` ...), whether the
  image shows the concept (its labels); they give ESR, PSR, RSR and key PSR;
- ``score`` judges give each image a number (CLIP score of its prompt); they give mean scores.

Built in: ``world-shape``, ``world-colour``, ``world-style`` (the Shapes world's judge; ``world-mixed`` reads
each concept with the head of its kind), ``imagenet``
(an ImageNet classifier, ResNet-50 by default), ``nudenet`` (NudeNet's detector), ``clip`` (CLIP score).
Users add their own with ``register_judge(name, factory)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from conceptvault.errors import ConceptVaultError
from conceptvault.evaluate.judgement import ClassifierJudge, Judge, JudgeFactory, Judgement  # noqa: F401  (re-exported)
from conceptvault.evaluate.suite import Suite


def _world_judge(head: str) -> JudgeFactory:
    def factory(suite: Suite, device: str | None) -> Judge:
        from conceptvault.world.judge import load_judge as load_world_judge

        return _world_head(load_world_judge(), head, suite)

    return factory


def _world_head(world_judge, head: str, suite: Suite) -> ClassifierJudge:
    """The loaded world judge read through one of its heads (shape, colour or style)."""
    from conceptvault.world.quality import renders_of

    def predict(images: list[Image.Image]) -> np.ndarray:
        return world_judge.predict(images)[head].detach().float().cpu().numpy()

    def reference(labels: Sequence[str], count: int, seed: int) -> np.ndarray:
        return world_judge.embed(renders_of(head, labels, count, seed))

    labels = list(world_judge.labels[head])
    return ClassifierJudge(f"world-{head}", labels, suite.top_k, predict, world_judge.embed, reference)


class WorldMixedJudge:
    """The world judge on a suite hiding concepts of several kinds: each concept is read by the head of its kind
    (a colour by the colour head, a shape by the shape head). No Fréchet distance: real images of a group of
    mixed kinds are not at hand."""

    kind = "rate"
    name = "world-mixed"

    def __init__(self, heads: dict[str, Judge]) -> None:
        self.heads = heads
        self.measures = next(iter(heads.values())).measures

    def _head(self, label: str) -> Judge:
        from conceptvault.world.vocabulary import kind_of

        return self.heads[kind_of(label)]

    def check_labels(self, labels: Sequence[str]) -> None:
        for label in labels:
            self._head(label).check_labels([label])

    def judge(self, images: list[Image.Image], prompts: list[str], labels: Sequence[str]) -> Judgement:
        return self._head(labels[0]).judge(images, prompts, labels)


def _world_mixed_judge(suite: Suite, device: str | None) -> Judge:
    from conceptvault.world.judge import load_judge as load_world_judge

    world_judge = load_world_judge()  # once: every head reads the same network
    return WorldMixedJudge({head: _world_head(world_judge, head, suite) for head in world_judge.labels})


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
    "world-mixed": _world_mixed_judge,
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
