"""What a run is asked to hide and what it leaves: the concepts, their checks, and the run's result."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConceptVaultError
from .key import Key, attached_keys


@dataclass
class Concept:
    """A concept to hide: its key is named ``name``, trained on ``prompts``, hidden toward ``anchor``, or toward
    a prompt's own anchor in ``anchors`` (a caption without the concept's words, for a concept that is an
    attribute: "a crimson heart" toward "a heart" moves only the colour)."""

    name: str
    prompts: list[str] = field(default_factory=list)
    anchor: str = ""
    anchors: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.name = self.name.strip()
        if not self.name:
            raise ValueError("a concept needs a name, such as 'star'; got an empty one.")
        self.prompts = [p.strip() for p in self.prompts if p.strip()]
        if self.name not in self.prompts:
            self.prompts.insert(0, self.name)

    def anchor_of(self, prompt: str) -> str:
        return self.anchors.get(prompt, self.anchor)

    def every_anchor(self) -> list[str]:
        return [self.anchor, *self.anchors.values()]

    @classmethod
    def parse(cls, text: str, anchor: str = "") -> Concept:
        """``"star|five-pointed star"``: phrasings separated by ``|``; the first one names the key."""
        phrasings = [p.strip() for p in text.split("|") if p.strip()]
        if not phrasings:
            raise ValueError(
                f"the concept '{text}' names no phrasing; write it as 'star' or 'star|five-pointed star'."
            )
        return cls(phrasings[0], phrasings, anchor)


@dataclass
class HideResult:
    """What a hiding run leaves: the public tensors, the keys, and what it was asked to do."""

    public: dict[str, torch.Tensor]  # the UNet tensors training changed, by state_dict name (CPU)
    keys: dict[str, Key]  # one key per concept, by concept name (still attached to the UNet)
    stats: dict  # losses, steps, seconds
    base_fingerprint: str  # unet_fingerprint of the model before hiding
    concepts: list[Concept]
    config: Any  # the method's settings: HideConfig, SealConfig, EsdConfig or UceConfig
    preserve: list[str] = field(default_factory=list)
    method: str = "kpop"  # the registered name of the method that made it


def check_inputs(pipe, concepts: Sequence[Concept], preserve: Sequence[str]) -> tuple[list[Concept], list[str]]:
    concepts = list(concepts)
    if not concepts:
        raise ConceptVaultError("nothing to hide: give at least one concept (`concepts`), such as star.")
    names = [c.name for c in concepts]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConceptVaultError(f"the concept {repeated[0]!r} is given twice; give each concept once.")
    if attached_keys(pipe.unet):
        raise ConceptVaultError(
            f"this pipeline already has keys attached ({', '.join(attached_keys(pipe.unet))}); "
            "hide concepts on a freshly loaded base model."
        )
    preserve = [preserve] if isinstance(preserve, str) else list(preserve)
    return concepts, list(dict.fromkeys(p.strip() for p in preserve if p.strip()))
