"""What a judge gives and the classifier judge every rate judge is built on (the judges themselves, by name,
are in :mod:`conceptvault.evaluate.judges`)."""

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
