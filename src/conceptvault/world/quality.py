"""How well a Shapes world model draws what its captions ask for, as measured by the judge."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from conceptvault.evaluate.fidelity import frechet_distance
from conceptvault.world.captions import caption
from conceptvault.world.render import render, sample_scene, to_pil
from conceptvault.world.vocabulary import COLOURS, SHAPES, STYLES


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
        for _ in range(per_shape):
            colour = str(rng.choice(list(COLOURS))) if rng.random() < 0.67 else None
            style = str(rng.choice(list(STYLES))) if rng.random() < 0.5 else None
            requests.append(
                Request(caption(shape, colour, style, rng), seed * 100_000 + len(requests), shape, colour, style)
            )
    return requests


def score_requests(judge, requests: list[Request], images) -> dict:
    """Judge accuracy per shape, colour and style accuracy where the caption named them, and the shape label
    of every image."""
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
        "rejected": float(np.mean([p == judge.labels["shape"][-1] for p in predicted["shape"]])),
        "images": len(requests),
        "shape_labels": predicted["shape"],
    }


def renders_for(requests: list[Request], seed: int) -> list:
    """One render per request, of what its caption names (colour and style drawn at random where left out)."""
    rng = np.random.default_rng(seed)
    return [to_pil(render(sample_scene(rng, r.shape, r.colour, r.style), rng)) for r in requests]


def renders_of(kind: str, names, count: int, seed: int) -> list:
    """``count`` renders showing the given shapes (or colours, or styles), cycling through them."""
    rng = np.random.default_rng(seed)
    names = list(names)
    return [to_pil(render(sample_scene(rng, **{kind: names[i % len(names)]}), rng)) for i in range(count)]


def world_fid(judge, requests: list[Request], images) -> dict:
    """Fréchet distance of the judge's features between ``images`` and renders of the same captions, beside
    the floor: two independent sets of such renders (the distance sampling noise alone gives at this n)."""
    reference = judge.embed(renders_for(requests, seed=1))
    return {
        "world_fid": frechet_distance(judge.embed(images), reference),
        "world_fid_floor": frechet_distance(judge.embed(renders_for(requests, seed=2)), reference),
    }
