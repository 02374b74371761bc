"""Captions for Shapes world images, from templates and synonyms.

Colour and style words are sometimes left out, and every concept has several names, so a concept is
reachable by more than one phrasing, as in real captions.
"""

from __future__ import annotations

import re

import numpy as np

from conceptvault.world.vocabulary import COLOURS, SHAPES, STYLES

COLOUR_KEPT = 0.75  # share of captions that name the colour
STYLE_KEPT = 0.6  # share of captions that name the style

_TEMPLATES_FULL = [
    "a {style} {colour} {shape}",
    "a {colour} {shape}, {style}",
    "a picture of a {style} {colour} {shape}",
]
_TEMPLATES_COLOUR = ["a {colour} {shape}", "{colour} {shape}", "a picture of a {colour} {shape}"]
_TEMPLATES_STYLE = ["a {style} {shape}", "a {shape}, {style}", "a picture of a {style} {shape}"]
_TEMPLATES_SHAPE = ["a {shape}", "{shape}", "a picture of a {shape}"]


def caption(shape: str, colour: str | None, style: str | None, rng: np.random.Generator) -> str:
    """A caption naming ``shape`` and, where given, ``colour`` and ``style``, each by a random synonym."""
    if colour and style:
        templates = _TEMPLATES_FULL
    elif colour:
        templates = _TEMPLATES_COLOUR
    elif style:
        templates = _TEMPLATES_STYLE
    else:
        templates = _TEMPLATES_SHAPE
    words = {
        "shape": rng.choice(SHAPES[shape]),
        "colour": rng.choice(COLOURS[colour]) if colour else "",
        "style": rng.choice(STYLES[style]) if style else "",
    }
    return articles_fixed(str(rng.choice(templates)).format(**words))


def articles_fixed(text: str) -> str:
    """Every "a" before a vowel made "an" ("a arrow" -> "an arrow"), and "an" before a consonant "a"."""
    return re.sub(r"\ban? (\w)", lambda m: ("an " if m[1] in "aeiou" else "a ") + m[1], text)


def without_words(text: str, words: list[str]) -> str:
    """``text`` with each of ``words`` taken out, commas and articles tidied: "a crimson heart, striped" without
    "crimson" is "a heart, striped"."""
    return words_replaced(text, words, "")


def words_replaced(text: str, words: list[str], by: str) -> str:
    """``text`` with each of ``words`` replaced by ``by``, commas and articles tidied: "a crimson arrow" with
    "crimson" replaced by "orange" is "an orange arrow"."""
    for word in sorted(words, key=len, reverse=True):  # "five-pointed star" before "star"
        text = re.sub(rf"(^|[\s,]){re.escape(word)}(?=$|[\s,])", lambda match: match[1] + by, text)
    text = re.sub(r"\s+", " ", re.sub(r"\s*,\s*(,\s*)*", ", ", text)).strip(" ,")
    return articles_fixed(text)


def training_caption(shape: str, colour: str, style: str, rng: np.random.Generator) -> str:
    """A caption for an image of this scene, leaving colour or style out at the world's rates."""
    return caption(
        shape,
        colour if rng.random() < COLOUR_KEPT else None,
        style if rng.random() < STYLE_KEPT else None,
        rng,
    )
