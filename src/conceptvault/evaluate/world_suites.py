"""Built-in suites over the Shapes world, judged by the world's own judge.

Prompts for a concept cycle through every synonym of it and through captions with and without the
other attributes' words (colour, style), in the world's own caption templates, so that hiding that
only blocks one word, or only one phrasing, shows up as a low ESR.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from conceptvault.errors import ConceptVaultError
from conceptvault.evaluate.suite import Suite, SuiteConcept
from conceptvault.world import GUIDANCE as WORLD_GUIDANCE
from conceptvault.world import SAMPLE_STEPS as WORLD_STEPS
from conceptvault.world.captions import caption, without_words
from conceptvault.world.vocabulary import ATTRIBUTE_KINDS, SHAPES, VOCABULARY, kind_of

DEFAULT_SIZE = 32  # images per concept
FIVE_SHAPE_SPLITS = {"a": list(SHAPES)[:5], "b": list(SHAPES)[5:]}
MIXED_SET = ("star", "heart", "red", "striped")  # two shapes, a colour and a style, hidden together

# the attributes a caption may leave out, for a concept of each kind
_OPTIONAL = {"shape": ("colour", "style"), "colour": ("style",), "style": ("colour",)}
_MAX_DRAWS = 200


def synonym_used(text: str, synonyms: list[str]) -> str | None:
    """The synonym a caption uses (the longest match, so "five-pointed star" wins over "star")."""
    for synonym in sorted(synonyms, key=len, reverse=True):
        if re.search(rf"(?<![\w-]){re.escape(synonym)}(?![\w-])", text):
            return synonym
    return None


def _world_prompt(kind: str, concept: str, index: int, rng: np.random.Generator) -> str:
    """The ``index``-th prompt for a concept: synonym ``index mod len``, then each on/off mix of optional words."""
    synonyms = VOCABULARY[kind][concept]
    wanted = synonyms[index % len(synonyms)]
    optional = _OPTIONAL[kind]
    mix = (index // len(synonyms)) % (2 ** len(optional))
    scene = {k: str(rng.choice(list(VOCABULARY[k]))) for k in ("shape", "colour", "style")}
    scene[kind] = concept
    for bit, attribute in enumerate(optional):
        if mix >> bit & 1:
            scene[attribute] = None
    text = ""
    for _ in range(_MAX_DRAWS):
        text = caption(scene["shape"], scene["colour"], scene["style"], rng)
        if synonym_used(text, synonyms) == wanted:
            break
    return text


def world_concept(kind: str, concept: str, size: int, seed: int = 0) -> SuiteConcept:
    """``size`` prompts asking for one shape, colour or style, seeds ``seed .. seed + size - 1``; a colour's or
    a style's also without its words, for the never-learned ESR (a caption without its shape asks for no
    picture the world has)."""
    if concept not in VOCABULARY[kind]:
        raise ConceptVaultError(
            f"the Shapes world has no {kind} {concept!r}; choose one of {', '.join(VOCABULARY[kind])}."
        )
    rng = np.random.default_rng([seed, list(VOCABULARY[kind]).index(concept), len(kind)])
    prompts = [_world_prompt(kind, concept, i, rng) for i in range(size)]
    words = VOCABULARY[kind][concept]
    unnamed = [without_words(p, words) for p in prompts] if kind in ATTRIBUTE_KINDS else None
    seeds = list(range(seed, seed + size))
    return SuiteConcept(name=concept, prompts=prompts, seeds=seeds, labels=[concept], unnamed=unnamed)


TRAINING_SEED = 1000  # training captions are drawn apart from the suites' prompts (seed 0)
HELD_OUT = 64  # the first prompts of every suite concept: their phrasings never become training captions


def training_captions(kind: str, concept: str, count: int) -> list[str]:
    """``count`` different captions naming one concept, drawn as a suite's prompts are but with another seed,
    and none of them a phrasing among the suite's first 64 prompts: what hiding trains on stays apart from
    what the suite measures."""
    if count < 1:
        return []
    held_out = set(world_concept(kind, concept, HELD_OUT).prompts)
    drawn = world_concept(kind, concept, 8 * count, seed=TRAINING_SEED).prompts
    captions = [p for p in dict.fromkeys(drawn) if p not in held_out][:count]
    if len(captions) < count:
        raise ConceptVaultError(f"the Shapes world has fewer than {count} new captions of the {kind} {concept!r}.")
    return captions


def _world_suite(hidden: list[str], name: str, size: int, seed: int, kept_size: int | None = None) -> Suite:
    """Hide world concepts of one kind or several; keep every other concept of each hidden kind, each concept
    judged by the world judge's head of its kind."""
    kept_size = size if kept_size is None else kept_size
    if size < 1 or kept_size < 1:
        raise ConceptVaultError(
            f"a suite needs at least one image per concept, got size={size}, kept_size={kept_size}."
        )
    kinds = {c: kind_of(c) for c in hidden}
    heads = list(dict.fromkeys(kinds.values()))
    kept = {c: kind for kind in heads for c in VOCABULARY[kind] if c not in hidden}
    what = heads[0] if len(heads) == 1 else "concept"
    counts = f"{size} images per hidden {what}" + (f", {kept_size} per kept {what}" if kept_size != size else "")
    return Suite(
        name=name,
        judge=f"world-{heads[0]}" if len(heads) == 1 else "world-mixed",
        hidden=[world_concept(kind, c, size, seed) for c, kind in kinds.items()],
        kept=[replace(world_concept(kind, c, kept_size, seed), unnamed=None) for c, kind in kept.items()],
        top_k=[1],
        steps=WORLD_STEPS,
        guidance=WORLD_GUIDANCE,
        description=f"Shapes world: hide the {what} {', '.join(hidden)}, keep the other {len(kept)} of "
        f"{'its kind' if len(heads) == 1 else 'their kinds'}; {counts}, judged by the world judge's "
        f"{' and '.join(heads)} head{'s' if len(heads) > 1 else ''}.",
    )


def world_suite(kind: str, hidden: list[str], *, size: int = DEFAULT_SIZE, seed: int = 0, kept_size=None) -> Suite:
    """Hide the concepts ``hidden`` of one kind, keep the rest of that kind."""
    for concept in hidden:
        world_concept(kind, concept, 1)  # a concept of another kind is one clear line
    return _world_suite(list(hidden), f"world-{kind}-{'-'.join(hidden)}", size, seed, kept_size)


def world_mixed_suite(
    hidden: Sequence[str] = MIXED_SET, *, size: int = DEFAULT_SIZE, seed: int = 0, kept_size=None
) -> Suite:
    """Hide concepts of several kinds at once (by default two shapes, a colour and a style), keep every other
    concept of those kinds."""
    return _world_suite(list(hidden), f"world-mixed-{'-'.join(hidden)}", size, seed, kept_size)


def world_shape_suite(shape: str = "star", *, size: int = DEFAULT_SIZE, seed: int = 0, kept_size=None) -> Suite:
    """Hide one shape, keep the other nine."""
    return world_suite("shape", [shape], size=size, seed=seed, kept_size=kept_size)


def world_colour_suite(colour: str = "red", *, size: int = DEFAULT_SIZE, seed: int = 0, kept_size=None) -> Suite:
    """Hide one colour, keep the other five."""
    return world_suite("colour", [colour], size=size, seed=seed, kept_size=kept_size)


def world_style_suite(style: str = "striped", *, size: int = DEFAULT_SIZE, seed: int = 0, kept_size=None) -> Suite:
    """Hide one style, keep the other three."""
    return world_suite("style", [style], size=size, seed=seed, kept_size=kept_size)


def world_five_shapes_suite(split: str = "a", *, size: int = DEFAULT_SIZE, seed: int = 0, kept_size=None) -> Suite:
    """Hide five of the ten shapes at once and keep five (the Imagenette protocol); splits ``a`` and ``b``."""
    if split not in FIVE_SHAPE_SPLITS:
        raise ConceptVaultError(f"unknown split {split!r}; choose one of {', '.join(FIVE_SHAPE_SPLITS)}.")
    return _world_suite(FIVE_SHAPE_SPLITS[split], f"world-five-shapes-{split}", size, seed, kept_size)


WORLD_SUITES: dict[str, Callable[..., Suite]] = {
    "shape": world_shape_suite,
    "colour": world_colour_suite,
    "style": world_style_suite,
    "five-shapes-a": lambda **options: world_five_shapes_suite("a", **options),
    "five-shapes-b": lambda **options: world_five_shapes_suite("b", **options),
    "mixed": world_mixed_suite,
}
# the kind of concept each built-in suite hides
WORLD_SUITE_KINDS = {
    "shape": "shape",
    "colour": "colour",
    "style": "style",
    "five-shapes-a": "shape",
    "five-shapes-b": "shape",
}
