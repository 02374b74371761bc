"""The Shapes world's vocabulary: every concept with its synonyms (the first name is the canonical one)."""

from __future__ import annotations

from ..errors import ConceptVaultError

SHAPES: dict[str, list[str]] = {
    "circle": ["circle", "disc"],
    "square": ["square", "box"],
    "triangle": ["triangle", "trigon"],
    "star": ["star", "five-pointed star", "pentagram"],
    "heart": ["heart", "love heart", "valentine"],
    "cross": ["cross", "plus sign"],
    "diamond": ["diamond", "rhombus", "lozenge"],
    "hexagon": ["hexagon", "six-sided polygon"],
    "crescent": ["crescent", "crescent moon", "sickle"],
    "arrow": ["arrow", "pointer"],
}

COLOURS: dict[str, list[str]] = {
    "red": ["red", "crimson", "scarlet"],
    "green": ["green", "emerald"],
    "blue": ["blue", "azure"],
    "yellow": ["yellow", "golden"],
    "purple": ["purple", "violet"],
    "orange": ["orange", "amber"],
}

STYLES: dict[str, list[str]] = {
    "solid": ["solid", "filled", "plain"],
    "striped": ["striped", "stripy", "banded"],
    "dotted": ["dotted", "polka-dot", "spotted"],
    "outlined": ["outlined", "hollow", "line-drawn"],
}

# RGB in [0, 1]; rendering jitters each a little
COLOUR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.10),
    "green": (0.10, 0.62, 0.20),
    "blue": (0.12, 0.25, 0.86),
    "yellow": (0.96, 0.84, 0.08),
    "purple": (0.55, 0.15, 0.70),
    "orange": (1.00, 0.52, 0.04),
}

# every kind of concept the world has, by the name of the judge head that reads it
VOCABULARY: dict[str, dict[str, list[str]]] = {"shape": SHAPES, "colour": COLOURS, "style": STYLES}
# kinds whose concepts qualify a shape: a caption without their words still asks for a picture of the world
ATTRIBUTE_KINDS = ("colour", "style")


# every concept's kind, by its canonical name
KINDS: dict[str, str] = {name: kind for kind, concepts in VOCABULARY.items() for name in concepts}


def kind_of(name: str) -> str:
    """The kind of a world concept (``"star"`` -> ``"shape"``, ``"red"`` -> ``"colour"``)."""
    if name not in KINDS:
        raise ConceptVaultError(f"the Shapes world has no concept {name!r}; choose one of {', '.join(KINDS)}.")
    return KINDS[name]
