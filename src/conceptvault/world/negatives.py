"""Images that show no clear shape, for teaching the judge to say so.

A judge that names every smudge after the nearest shape inflates every rate it measures. These
negatives cover what a weak or damaged model draws instead of a shape: scribbles, loose strokes,
shapeless blobs, shapes broken into fragments, scattered dots, two shapes on top of each other, noise,
and an empty background. Everything is drawn from a ``numpy.random.Generator``, so a seed fixes the image.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from conceptvault.world.render import SIZE, render, sample_scene
from conceptvault.world.vocabulary import COLOUR_RGB, SHAPES

NEGATIVE_KINDS = ("scribble", "strokes", "blob", "fragment", "scatter", "overlap", "noise", "empty")
_SUPERSAMPLE = 4


def _background(rng: np.random.Generator) -> np.ndarray:
    """A pale background like the renderer's: a tint with a slight vertical gradient."""
    level = rng.uniform(0.8, 0.97) + rng.uniform(-0.05, 0.05, 3)
    yy = np.linspace(-0.04, 0.04, SIZE, dtype=np.float32)[:, None, None] * rng.choice([-1.0, 1.0])
    return np.clip(level.astype(np.float32) + yy, 0, 1) * np.ones((SIZE, SIZE, 3), np.float32)


def _colour(rng: np.random.Generator) -> np.ndarray:
    base = np.array(COLOUR_RGB[str(rng.choice(list(COLOUR_RGB)))], dtype=np.float32)
    return np.clip(base + rng.uniform(-0.06, 0.06, 3), 0, 1).astype(np.float32)


def _ink(mask: np.ndarray, colour: np.ndarray, background: np.ndarray) -> np.ndarray:
    return mask[..., None] * colour + (1 - mask[..., None]) * background


def _mask(draw_on) -> np.ndarray:
    """Draw with ``draw_on(ImageDraw, scale)`` on a 4x canvas and average down to coverage in [0, 1]."""
    big = Image.new("L", (SIZE * _SUPERSAMPLE, SIZE * _SUPERSAMPLE), 0)
    draw_on(ImageDraw.Draw(big), _SUPERSAMPLE)
    return np.asarray(big.resize((SIZE, SIZE), Image.BOX), dtype=np.float32) / 255.0


def _polyline(rng: np.random.Generator, points: int, step: float) -> list[tuple[float, float]]:
    """A random walk that turns a little at every step, kept inside the image."""
    x, y = rng.uniform(12, SIZE - 12, 2)
    heading = rng.uniform(0, 2 * math.pi)
    path = [(x, y)]
    for _ in range(points):
        heading += rng.normal(0, 1.0)
        x = float(np.clip(x + step * math.cos(heading), 4, SIZE - 4))
        y = float(np.clip(y + step * math.sin(heading), 4, SIZE - 4))
        path.append((x, y))
    return path


def _scribble(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    path = _polyline(rng, int(rng.integers(4, 14)), rng.uniform(5, 12))
    width = rng.uniform(1.5, 4.0)
    mask = _mask(lambda d, s: d.line([(x * s, y * s) for x, y in path], fill=255, width=int(width * s), joint="curve"))
    return _ink(mask, _colour(rng), background)


def _strokes(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    paths = [_polyline(rng, int(rng.integers(1, 4)), rng.uniform(4, 9)) for _ in range(int(rng.integers(2, 6)))]
    width = rng.uniform(1.5, 3.5)

    def draw(d, s):
        for path in paths:
            d.line([(x * s, y * s) for x, y in path], fill=255, width=int(width * s), joint="curve")

    return _ink(_mask(draw), _colour(rng), background)


def _blob(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A closed shape with a lumpy random outline, too irregular to pass for any of the world's shapes."""
    t = np.linspace(0, 2 * math.pi, 96, endpoint=False)
    radius = np.ones_like(t)
    for k in range(2, 8):
        amplitude = rng.uniform(0.08, 0.25) if k <= 4 else rng.uniform(0.0, 0.06)
        radius += amplitude * np.cos(k * t + rng.uniform(0, 2 * math.pi))
    radius = np.clip(radius, 0.3, None) * rng.uniform(8, 16)
    cx, cy = rng.uniform(22, SIZE - 22, 2)
    points = list(zip(cx + radius * np.cos(t), cy + radius * np.sin(t), strict=False))
    mask = _mask(lambda d, s: d.polygon([(x * s, y * s) for x, y in points], fill=255))
    return _ink(mask, _colour(rng), background)


def _fragment(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A real shape with most of it cut away: a few scattered cells of an 8 x 8 grid survive."""
    image = render(sample_scene(rng), rng, under=background)
    keep = rng.random((8, 8)) < rng.uniform(0.15, 0.4)
    cells = np.kron(keep, np.ones((SIZE // 8, SIZE // 8), bool))
    return np.where(cells[..., None], image, background)


def _scatter(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    dots = rng.uniform(4, SIZE - 4, (int(rng.integers(6, 30)), 2))
    radius = rng.uniform(0.8, 2.2)

    def draw(d, s):
        for x, y in dots:
            d.ellipse([(x - radius) * s, (y - radius) * s, (x + radius) * s, (y + radius) * s], fill=255)

    return _ink(_mask(draw), _colour(rng), background)


def _overlap(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """Two different shapes of about the same size drawn over each other, offset so both stay visible."""
    first, second = rng.choice(list(SHAPES), 2, replace=False)
    under = sample_scene(rng, shape=str(first))
    direction = rng.uniform(0, 2 * math.pi)
    shift = rng.uniform(0.4, 0.75) * under.radius * np.array([math.cos(direction), math.sin(direction)])
    centre = tuple(float(c) for c in np.clip(np.array(under.centre) + shift, 12, SIZE - 12))
    over = replace(sample_scene(rng, shape=str(second)), centre=centre, radius=under.radius * rng.uniform(0.8, 1.1))
    return render(over, rng, under=render(under, rng, under=background))


def _noise(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """Smooth coloured noise, at a random strength, over the background."""
    coarse = rng.normal(0, 1, (int(rng.integers(4, 17)),) * 2 + (3,))
    smooth = np.asarray(
        Image.fromarray(((np.tanh(coarse) + 1) * 127.5).astype(np.uint8)).resize((SIZE, SIZE), Image.BICUBIC)
    )
    field = smooth.astype(np.float32) / 255.0
    strength = rng.uniform(0.3, 1.0)
    noisy = (1 - strength) * background + strength * field + rng.normal(0, rng.uniform(0, 0.08), background.shape)
    return (
        np.asarray(
            Image.fromarray((np.clip(noisy, 0, 1) * 255).astype(np.uint8)).filter(ImageFilter.SMOOTH), np.float32
        )
        / 255.0
    )


def _empty(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    return background


_DRAW = {
    "scribble": _scribble,
    "strokes": _strokes,
    "blob": _blob,
    "fragment": _fragment,
    "scatter": _scatter,
    "overlap": _overlap,
    "noise": _noise,
    "empty": _empty,
}


def render_negative(rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """An image with no clear shape, float32 (64, 64, 3) in [0, 1]; ``kind`` one of ``NEGATIVE_KINDS``."""
    kind = kind or str(rng.choice(NEGATIVE_KINDS))
    return np.clip(_DRAW[kind](rng, _background(rng)), 0, 1).astype(np.float32)
