"""Model profiles: what is particular to a kind of model, looked up by the model's name.

A profile says how the command line fills in what a user left out (a concept name expanded into its
phrasings and captions, the prompts kept by default), how a served or generated image is sampled by
default, and where an attacker's pictures, prompts and words of a concept (and captioned pictures of other
concepts) come from when none are given. The
built-in world is one profile (``conceptvault.world.profile``); every other model gets the Stable
Diffusion profile, which adds nothing to what the user gave. No module outside a profile asks whether a
model is the built-in one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from .errors import ConceptVaultError

# the modules that register a profile as they are imported, read on the first lookup
PROFILE_MODULES = ("conceptvault.world.profile",)


@dataclass(frozen=True)
class Profile:
    """What the command line assumes for a kind of model; subclass and register to add one."""

    name: str
    title: str = "the model"  # how errors name a model of this kind
    sampler: tuple[int, float] = (30, 7.5)  # sampler steps and guidance a request gets unless it names its own

    def claims(self, model: str) -> bool:
        """Whether ``model`` (a name as the command line got it, or a manifest's base model) is of this kind."""
        return False

    def model_folder(self, model: str) -> Path | None:
        """The pipeline folder to load for ``model`` (None: load it as given, a folder or a hub id)."""
        return None

    def component_folders(self, model: str) -> dict[str, Path]:
        """Components of ``model`` loaded from folders of their own instead of :meth:`model_folder`'s (a model
        that differs from another in a few components ships those alone)."""
        return {}

    def fill_in(
        self, concepts: list, preserve: list[str], method: str, preserve_captions: int | None = None, hidden_already=()
    ):
        """The concepts and preserve prompts to use for ``method`` when the user gave ``concepts`` and
        ``preserve`` (``hidden_already``: what a vault they are added to hides, never among the kept); a model
        that knows nothing of its concepts adds nothing."""
        if preserve_captions is not None:
            raise ConceptVaultError(
                "`preserve_captions` fills in the built-in model's kept concepts: it needs the "
                "model builtin and no `preserve`."
            )
        return concepts, preserve

    def pictures(self, judge: str, concept: str, count: int):
        """``count`` pictures of ``concept`` for an attacker (None: this kind of model has none to give)."""
        return None

    def attack_prompts(self, judge: str, concept: str) -> list[str]:
        """Prompts an attacker might try for ``concept`` without training."""
        return []

    def captioned_pictures(self, judge: str, concepts: list[str], count: int):
        """``count`` (picture, caption) pairs showing ``concepts`` (kept ones, for benign fine-tuning), each
        caption naming what its picture shows (None: this kind of model has none to give)."""
        return None

    def concept_words(self, judge: str, concept: str) -> list[str]:
        """Every word or phrase that names ``concept`` (its synonyms, where this kind of model knows them)."""
        return [concept]


STABLE_DIFFUSION = Profile("stable-diffusion", "the model")
_PROFILES: list[Profile] = []
_loaded = False


def register_profile(profile: Profile) -> Profile:
    if any(p.name == profile.name for p in _PROFILES):
        raise ValueError(f"a profile named {profile.name!r} is registered already; choose another name.")
    _PROFILES.append(profile)
    return profile


def profile_for(model: str) -> Profile:
    """The profile of ``model``: the first registered one that claims it, else Stable Diffusion's."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in PROFILE_MODULES:
            importlib.import_module(module)
    return next((p for p in _PROFILES if p.claims(str(model))), STABLE_DIFFUSION)
