"""Render one object of the Shapes world: a shape in a colour and a style on a pale background.

Everything is drawn from a ``numpy.random.Generator``, so a seed fixes the image. A 64 x 64 image
takes well under a millisecond, fast enough to render every training batch on the fly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from conceptvault.world.vocabulary import COLOUR_RGB, SHAPES, STYLES

SIZE = 64
MAX_TURN = 0.5  # radians: the world draws every shape turned by at most this, either way
_SUPERSAMPLE = 4  # masks are drawn 4x larger, then averaged down, for smooth edges


@dataclass(frozen=True)
class Scene:
    """What one image shows, in canonical names, plus its geometry."""

    shape: str
    colour: str
    style: str
    radius: float  # in pixels of the 64 x 64 image
    centre: tuple[float, float]
    angle: float  # radians
    background: tuple[float, float, float]
    pattern_angle: float


def _regular_polygon(sides: int, phase: float = math.pi / 2) -> np.ndarray:
    t = phase + np.arange(sides) * 2 * math.pi / sides
    return np.stack([np.cos(t), np.sin(t)], 1)


def _star() -> np.ndarray:
    t = math.pi / 2 + np.arange(10) * math.pi / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x, y + 2.5], 1) / 16.5


def _cross() -> np.ndarray:
    a, b = 0.32, 1.0
    return np.array(
        [(-a, b), (a, b), (a, a), (b, a), (b, -a), (a, -a), (a, -b), (-a, -b), (-a, -a), (-b, -a), (-b, a), (-a, a)]
    )


def _arrow() -> np.ndarray:
    return np.array([(1.0, 0.0), (0.15, 0.75), (0.15, 0.3), (-1.0, 0.3), (-1.0, -0.3), (0.15, -0.3), (0.15, -0.75)])


# unit outlines (y up), each spanning roughly the unit disc
_OUTLINES = {
    "circle": _regular_polygon(64),
    "square": _regular_polygon(4, math.pi / 4) * 1.05,
    "triangle": _regular_polygon(3) * 1.1 + np.array([0.0, -0.2]),
    "star": _star() * 1.1,
    "heart": _heart(),
    "cross": _cross(),
    "diamond": np.array([(0.0, 1.05), (0.58, 0.0), (0.0, -1.05), (-0.58, 0.0)]),
    "hexagon": _regular_polygon(6, 0.0),
    "arrow": _arrow(),
}


def _draw_large(scene: Scene) -> Image.Image:
    """The shape's silhouette, drawn at four times the final size."""
    big = SIZE * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = (c * _SUPERSAMPLE for c in scene.centre)
    r = scene.radius * _SUPERSAMPLE
    cos, sin = math.cos(scene.angle), math.sin(scene.angle)

    def place(points: np.ndarray) -> list[tuple[float, float]]:
        x, y = points[:, 0], -points[:, 1]  # image y runs down
        return list(zip(cx + r * (cos * x - sin * y), cy + r * (sin * x + cos * y), strict=False))

    if scene.shape == "crescent":
        disc = _regular_polygon(64)
        draw.polygon(place(disc), fill=255)
        draw.polygon(place(disc * 0.85 + np.array([0.42, 0.12])), fill=0)
    else:
        draw.polygon(place(_OUTLINES[scene.shape]), fill=255)
    return canvas


def _coverage(large: Image.Image) -> np.ndarray:
    """Average a large mask down to per-pixel coverage in [0, 1] (anti-aliasing)."""
    return np.asarray(large.resize((SIZE, SIZE), Image.BOX), dtype=np.float32) / 255.0


def _paint(scene: Scene, colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the object covers the image (H, W) and what colour it has there (H, W, 3)."""
    large = _draw_large(scene)
    if scene.style == "outlined":
        # erode at twice the final size (an 11-pixel minimum there leaves a 2.5-pixel ring at 64 x 64, thick
        # enough to survive the VAE's 4x downsampling as one unbroken line)
        half = large.resize((2 * SIZE, 2 * SIZE), Image.BOX)
        ring = np.asarray(half, dtype=np.int16) - np.asarray(half.filter(ImageFilter.MinFilter(11)), dtype=np.int16)
        return _coverage(Image.fromarray(ring.astype(np.uint8))), np.broadcast_to(colour, (SIZE, SIZE, 3))
    mask = _coverage(large)
    if scene.style == "solid":
        return mask, np.broadcast_to(colour, (SIZE, SIZE, 3))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    u = xx * math.cos(scene.pattern_angle) + yy * math.sin(scene.pattern_angle)
    if scene.style == "striped":
        ink = np.clip(2.5 * np.sin(2 * math.pi * u / 7.0) + 0.5, 0, 1)
    else:  # dotted
        v = -xx * math.sin(scene.pattern_angle) + yy * math.cos(scene.pattern_angle)
        d = np.hypot((u % 7.0) - 3.5, (v % 7.0) - 3.5)
        ink = np.clip(2.3 - d, 0, 1)
    paper = 0.35 * colour + 0.65  # a tint of the ink, so the silhouette stands out from the background
    return mask, ink[..., None] * colour + (1 - ink[..., None]) * paper


def sample_scene(
    rng: np.random.Generator,
    shape: str | None = None,
    colour: str | None = None,
    style: str | None = None,
    turns: Mapping[str, float] | None = None,
) -> Scene:
    """Draw a random scene; any of shape, colour and style can be fixed. ``turns`` gives the largest turn
    (radians) of a shape where it differs from the world's MAX_TURN."""
    radius = rng.uniform(13.0, 23.0)
    margin = radius + 2
    tint = rng.uniform(-0.05, 0.05, 3)
    shape = shape or str(rng.choice(list(SHAPES)))
    turn = (turns or {}).get(shape, MAX_TURN)
    return Scene(
        shape=shape,
        colour=colour or str(rng.choice(list(COLOUR_RGB))),
        style=style or str(rng.choice(list(STYLES))),
        radius=radius,
        centre=(rng.uniform(margin, SIZE - margin), rng.uniform(margin, SIZE - margin)),
        angle=rng.uniform(-turn, turn),
        background=tuple(float(x) for x in np.clip(rng.uniform(0.8, 0.97) + tint, 0, 1)),
        pattern_angle=rng.uniform(0, math.pi),
    )


def render(scene: Scene, rng: np.random.Generator, under: np.ndarray | None = None) -> np.ndarray:
    """The scene as a float32 RGB array (64, 64, 3) in [0, 1], drawn over ``under`` if given, else its background."""
    colour = np.clip(np.array(COLOUR_RGB[scene.colour]) + rng.uniform(-0.06, 0.06, 3), 0, 1).astype(np.float32)
    mask, painted = _paint(scene, colour)
    if under is None:
        yy = np.linspace(-0.04, 0.04, SIZE, dtype=np.float32)[:, None, None] * rng.choice([-1.0, 1.0])
        under = np.clip(np.array(scene.background, dtype=np.float32) + yy, 0, 1)
    image = mask[..., None] * painted + (1 - mask[..., None]) * under
    return image.astype(np.float32)


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
