"""The built-in world's profile: how the command line fills in a world concept given by name, how the built-in
model is sampled, and the attacker's pictures, prompts and words of a world concept (and captioned pictures of
the kept ones).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .. import world
from ..backbone import BUILTIN
from ..concepts import Concept
from ..errors import ConceptVaultError
from ..evaluate.world_suites import training_captions
from ..profiles import Profile, register_profile
from . import GUIDANCE, SAMPLE_STEPS
from .captions import articles_fixed, without_words, words_replaced
from .vocabulary import ATTRIBUTE_KINDS, KINDS, VOCABULARY, kind_of

# On the built-in model both ways of hiding train on world captions as well as on names: the concept under
# n captions, and m of each kept concept beside their names (why these counts: CHANGELOG.md).
WORLD_CAPTIONS = {"kpop": {"concept": 12, "preserve": 4}, "sealed": {"concept": 24, "preserve": 8}}


def world_concepts(kind: str, names: list[str], captions: int = 0) -> list[Concept]:
    """Concepts of the built-in world, each trained under every name it has and ``captions`` captions. A colour
    or a style is an attribute: each caption is hidden toward itself without the concept's words ("a crimson
    heart" toward "a heart"), so that hiding moves the colour and leaves the shape."""
    return [_world_concept(kind, name, captions) for name in names]


def _world_concept(kind: str, name: str, captions: int) -> Concept:
    words = VOCABULARY[kind][name]
    prompts = [*words, *training_captions(kind, name, captions)]
    anchors = {p: a for p in prompts if (a := without_words(p, words))} if kind in ATTRIBUTE_KINDS else {}
    return Concept(name, prompts, anchors=anchors)


def world_preserve(kind: str, hidden: list[str], captions: int = 0) -> list[str]:
    """Every other concept of the same kind, by each of its names (a small preserve set) and ``captions``
    captions of each."""
    kept = [concept for concept in VOCABULARY[kind] if concept not in hidden]
    names = [articles_fixed(f"a {name}") for concept in kept for name in VOCABULARY[kind][concept]]
    return names + [text for concept in kept for text in training_captions(kind, concept, captions)]


def world_kept(hidden: list[str], captions: int = 0) -> list[str]:
    """The preserve prompts of hiding ``hidden`` (world concepts of one kind or several; other names are left
    out): for each kind among them, every other concept of that kind (:func:`world_preserve`)."""
    kinds = [kind for kind in VOCABULARY if any(KINDS.get(name) == kind for name in hidden)]
    return [prompt for kind in kinds for prompt in world_preserve(kind, hidden, captions)]


def world_prompts(hidden: list[str], captions: dict) -> tuple[list[Concept], list[str]]:
    """The concepts to hide (world concepts of any kinds) and the prompts to keep, by name and with ``captions``
    world captions of each ({"concept": n, "preserve": m}, as in :data:`WORLD_CAPTIONS`; missing counts are 0)."""
    concepts = [_world_concept(kind_of(name), name, captions.get("concept", 0)) for name in hidden]
    return concepts, world_kept(hidden, captions.get("preserve", 0))


def builtin_defaults(
    concepts: list[Concept], preserve: list[str], captions: dict | None = None, hidden_already: list[str] = ()
) -> tuple[list[Concept], list[str]]:
    """What the command line gives the built-in model when a flag is left out: a concept named by its world
    name alone is hidden under every name it has ("star" also as "five-pointed star" and "pentagram"), and
    with no preserve prompt the other concepts of each hidden kind are kept (as the demo and the benches do);
    ``captions`` ({"concept": n, "preserve": m}, as in :data:`WORLD_CAPTIONS`) adds world captions to both.
    ``hidden_already``: concepts a vault hides already, kept out of the preserve prompts too."""
    captions = captions or {}
    concepts = [
        _world_filled_in(c, KINDS[c.name], captions.get("concept", 0))
        if c.name in KINDS and c.prompts == [c.name]
        else c
        for c in concepts
    ]
    if not preserve and all(c.name in KINDS for c in concepts):
        preserve = world_kept([*(c.name for c in concepts), *hidden_already], captions.get("preserve", 0))
    return concepts, preserve


def _world_filled_in(concept: Concept, kind: str, captions: int) -> Concept:
    """A world concept given by name alone: its names and captions, and each caption's own anchor unless an
    anchor was given; an anchor that names another concept of the same kind stands in for it in each."""
    world = world_concepts(kind, [concept.name], captions)[0]
    if any(concept.anchor in names for other, names in VOCABULARY[kind].items() if other != concept.name):
        return with_stand_in(world, kind, concept.anchor)
    return replace(concept, prompts=world.prompts, anchors={} if concept.anchor else world.anchors)


def with_stand_in(concept: Concept, kind: str, stand_in: str) -> Concept:
    """A world concept hidden toward each of its prompts with ``stand_in`` in the place of its names ("a
    crimson heart" toward "a green heart"): the public model answers red with green. The stand-in stays the
    concept's anchor too, for the methods that take one anchor only (UCE)."""
    words = VOCABULARY[kind][concept.name]
    return replace(concept, anchor=stand_in, anchors={p: words_replaced(p, words, stand_in) for p in concept.prompts})


def captioned_renders(kind: str, names: list[str], count: int, seed: int) -> list:
    """``count`` renders showing the given shapes (or colours, or styles) in turn, each with a world caption of
    its own scene (which names its shape, and its colour and style at the world's rates)."""
    import numpy as np

    from .captions import training_caption
    from .render import render, sample_scene, to_pil

    rng = np.random.default_rng(seed)
    pictures = []
    for i in range(count):
        scene = sample_scene(rng, **{kind: names[i % len(names)]})
        pictures.append((to_pil(render(scene, rng)), training_caption(scene.shape, scene.colour, scene.style, rng)))
    return pictures


class WorldProfile(Profile):
    """The built-in model: its concepts are the world's, and renders of them are at hand."""

    def claims(self, model: str) -> bool:
        return model in (BUILTIN, *world.NEVER_TRAINED) or Path(model) == Path(world.BUILTIN_MODEL_DIR)

    def model_folder(self, model: str) -> Path:
        folder = Path(world.BUILTIN_MODEL_DIR)  # read when asked: a test may point it elsewhere
        if not (folder / "model_index.json").is_file():
            raise ConceptVaultError(
                f"the built-in model is not built yet (no model_index.json in '{folder}'); build it "
                "first, or give a diffusers pipeline folder or a hub id."
            )
        return folder

    def component_folders(self, model: str) -> dict[str, Path]:
        if model not in world.NEVER_TRAINED:
            return {}
        folders = {name: world.NEVER_TRAINED[model] / name for name in world.NEVER_TRAINED_COMPONENTS}
        missing = [name for name, folder in folders.items() if not (folder / "config.json").is_file()]
        if missing:
            raise ConceptVaultError(
                f"'{model}' is not built yet (no {' or '.join(missing)} in '{world.NEVER_TRAINED[model]}'); "
                "see docs/security.md."
            )
        return folders

    def fill_in(self, concepts, preserve, method, preserve_captions=None, hidden_already=()):
        captions = WORLD_CAPTIONS.get(method, {})  # erasure: names only
        if preserve_captions is not None:
            if preserve:
                super().fill_in(concepts, preserve, method, preserve_captions)  # refused: --preserve was given
            captions = {**captions, "preserve": preserve_captions}
        return builtin_defaults(concepts, preserve, captions, list(hidden_already))

    def pictures(self, judge: str, concept: str, count: int):
        kind = _judged_kind(judge, concept)
        if kind is None:
            return None
        from .quality import renders_of

        return renders_of(kind, [concept], count, seed=4242)

    def captioned_pictures(self, judge: str, concepts: list[str], count: int):
        kinds = {_judged_kind(judge, concept) for concept in concepts}
        if len(kinds) != 1 or None in kinds:
            return None
        return captioned_renders(kinds.pop(), concepts, count, seed=4343)

    def concept_words(self, judge: str, concept: str) -> list[str]:
        kind = _judged_kind(judge, concept)
        return list(VOCABULARY[kind][concept]) if kind else [concept]

    def attack_prompts(self, judge: str, concept: str) -> list[str]:
        if _judged_kind(judge, concept) != "shape":
            return []
        from .attack_prompts import attack_prompts

        return attack_prompts(concept)


def _judged_kind(judge: str, concept: str) -> str | None:
    """The kind of world concept ``concept`` is under a world judge (``world-mixed``: its own kind), or None."""
    kind = KINDS.get(concept) if judge == "world-mixed" else judge.removeprefix("world-")
    return kind if concept in VOCABULARY.get(kind, {}) else None


WORLD = register_profile(WorldProfile("world", "the built-in model", sampler=(SAMPLE_STEPS, GUIDANCE)))
