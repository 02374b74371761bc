"""Finding a suite by name: a built-in Shapes world suite, or a suite JSON file."""

from __future__ import annotations

from pathlib import Path

from conceptvault.errors import ConceptVaultError
from conceptvault.evaluate.suite import Suite, load_suite
from conceptvault.evaluate.world_suites import DEFAULT_SIZE, WORLD_SUITES

_SINGLE_CONCEPT = {"shape": "shape", "colour": "colour", "style": "style"}


def builtin_suite_names() -> list[str]:
    return list(WORLD_SUITES)


def resolve_suite(
    spec: str, *, size: int | None = None, concept: str | None = None, seed: int = 0, kept_size: int | None = None
) -> Suite:
    """``spec`` is a built-in world suite (``shape``, ``colour``, ``style``, ``five-shapes-a``, ``five-shapes-b``,
    ``mixed``) or the path of a suite JSON file. ``size`` is the images per concept of a built-in suite; ``concept``
    picks the hidden shape, colour or style of the single-concept ones (e.g. ``shape`` + ``heart``);
    ``kept_size`` gives kept concepts fewer (or more) images than hidden ones."""
    if spec in WORLD_SUITES:
        options = {"size": DEFAULT_SIZE if size is None else size, "seed": seed, "kept_size": kept_size}
        if concept is not None:
            if spec not in _SINGLE_CONCEPT:
                raise ConceptVaultError(f"the suite {spec!r} fixes its hidden concepts; leave the concept out.")
            options[_SINGLE_CONCEPT[spec]] = concept
        return WORLD_SUITES[spec](**options)
    if Path(spec).suffix.lower() == ".json" or Path(spec).exists():
        return load_suite(spec)
    raise ConceptVaultError(
        f"unknown suite {spec!r}; give a built-in suite ({', '.join(WORLD_SUITES)}) or the path of a suite JSON file."
    )
