"""How well a Shapes world model draws what its captions ask for, as measured by the judge."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from conceptvault.world.captions import caption
from conceptvault.world.vocabulary import COLOURS, SHAPES, STYLES

SAMPLE_STEPS = 25
GUIDANCE = 3.0


@dataclass
class Request:
    """One caption, the seed to draw it with, and what it names (None where left out)."""

    prompt: str
    seed: int
    shape: str
    colour: str | None
    style: str | None


def quality_requests(per_shape: int = 32, seed: int = 0) -> list[Request]:
    """Captions naming each shape; about two thirds also name a colour, half a style."""
    rng = np.random.default_rng(seed)
    requests = []
    for shape in SHAPES:
        for i in range(per_shape):
            colour = str(rng.choice(list(COLOURS))) if rng.random() < 0.67 else None
            style = str(rng.choice(list(STYLES))) if rng.random() < 0.5 else None
            requests.append(Request(caption(shape, colour, style, rng), seed * 100_000 + len(requests), shape, colour, style))
    return requests


def score_requests(judge, requests: list[Request], images) -> dict:
    """Judge accuracy per shape, and colour and style accuracy where the caption named them."""
    probs = judge.predict(images)
    predicted = {head: [judge.labels[head][i] for i in probs[head].argmax(-1).tolist()] for head in probs}
    per_shape = {
        shape: float(np.mean([predicted["shape"][i] == shape for i, r in enumerate(requests) if r.shape == shape]))
        for shape in dict.fromkeys(r.shape for r in requests)
    }
    named = {
        head: [predicted[head][i] == getattr(r, head) for i, r in enumerate(requests) if getattr(r, head)]
        for head in ("colour", "style")
    }
    return {
        "shape_accuracy": float(np.mean(list(per_shape.values()))),
        "shape_accuracy_min": min(per_shape.values()),
        "per_shape": per_shape,
        "colour_accuracy": float(np.mean(named["colour"])) if named["colour"] else None,
        "style_accuracy": float(np.mean(named["style"])) if named["style"] else None,
        "images": len(requests),
    }
