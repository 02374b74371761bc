"""Suppression, erasing a concept by removing its directions from the text states the UNet reads: a
training-free edit in the family of inference-time methods that project the concept out of a prompt's
embedding, written into the weights so that it runs in any diffusers pipeline and fits a vault.

The concept's subspace is spanned by its prompts' last-content-token and end-of-text states, after the span of
the protected prompts' states is taken out of them (the preserve prompts, every anchor, and the empty prompt,
which classifier-free guidance feeds every sample); its leading directions ``U``, as many as hold ``energy``
of what is left (at most ``max_rank``), make the projection ``P = U U^T``. Projecting every text state onto
the orthogonal complement, ``x -> (I - P) x``, before the UNet reads it is the same as replacing every
cross-attention key and value projection ``W`` (``to_k``, ``to_v``: the only UNet weights that read the
per-token text states) by

    W' = W (I - P)

which is what this method writes. The protected prompts' states keep their projections up to the energy left
outside the protected span (``protect_energy``).

What the weight form costs beside an adaptive per-prompt method, which decides per prompt whether and how much
to project: the one projection is applied to every prompt, so any prompt whose states share the concept's
directions loses them too, a prompt that never names the concept included, and a prompt that reaches the
concept through directions outside the subspace keeps it. On SDXL the pooled text embedding, which does not
pass through cross-attention, is left as it was. No training, no keys.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ...backbone import unet_fingerprint
from ...concepts import Concept, HideResult, check_inputs
from ...cross_attention_edit import concept_token_states, edit_projections, edit_result, prompt_states
from ...errors import ConceptVaultError
from ...settings import Settings, option


@dataclass
class SuppressConfig(Settings):
    """Every setting of a suppression edit; stored in the vault's manifest."""

    energy: float = option(0.9, "Share of the concept states' energy (beyond the protected span) removed, up to 1.")
    max_rank: int = option(4, "Most directions removed from the text states.")
    protect_energy: float = option(0.999, "Share of the protected prompts' state energy whose span is kept, up to 1.")
    seed: int = option(0, "Unused by the closed form; kept so every method's settings carry one.")

    positive: ClassVar[tuple[str, ...]] = ("energy", "max_rank", "protect_energy")

    def __post_init__(self):
        super().__post_init__()
        for name in ("energy", "protect_energy"):
            if getattr(self, name) > 1:
                raise ValueError(f"{name} must be at most 1; got {getattr(self, name)!r}.")


def concept_rows(pipe, concepts: Sequence[Concept]) -> torch.Tensor:
    """The last-content-token and end-of-text states of every concept prompt, stacked (float64)."""
    rows = []
    for concept in concepts:
        for prompt in concept.prompts:
            states, last = concept_token_states(pipe, prompt)
            rows.append(states[last : last + 2])
    return torch.cat(rows)


def protected_prompts(concepts: Sequence[Concept], preserve: Sequence[str]) -> list[str]:
    """The prompts whose states the projection leaves alone: the preserved, every anchor, and the empty one."""
    anchors = [a for c in concepts for a in c.every_anchor()]
    return list(dict.fromkeys(["", *anchors, *preserve]))


def leading_directions(rows: torch.Tensor, energy: float, most: int | None = None) -> tuple[torch.Tensor, float]:
    """An orthonormal basis (d, r) of the fewest leading right singular directions of ``rows`` that hold
    ``energy`` of their squared norm (at most ``most``), and the share they hold."""
    _, singular, directions = torch.linalg.svd(rows, full_matrices=False)
    shares = (singular**2).cumsum(0) / (singular**2).sum()
    rank = int((shares < energy - 1e-12).sum()) + 1
    rank = min(rank, most or rank, len(singular))
    return directions[:rank].T, float(shares[rank - 1])


def concept_subspace(
    pipe, concepts: Sequence[Concept], preserve: Sequence[str], config: SuppressConfig
) -> tuple[torch.Tensor, dict]:
    """The basis ``U`` (d, r, float64) of the directions removed, and what it holds."""
    rows = concept_rows(pipe, concepts)
    protected, _ = leading_directions(
        prompt_states(pipe, protected_prompts(concepts, preserve), like=rows), config.protect_energy
    )
    beyond = rows - rows @ protected @ protected.T
    if beyond.norm() <= 1e-6 * rows.norm():
        raise ConceptVaultError(
            "the concepts' text states lie within the protected prompts' span: nothing is left to suppress; "
            "lower `protect_energy` or preserve fewer prompts."
        )
    basis, held = leading_directions(beyond, config.energy, config.max_rank)
    removed = float((rows @ basis).norm() ** 2 / rows.norm() ** 2)
    stats = {"rank": basis.shape[1], "energy_held": round(held, 6), "concept_energy_removed": round(removed, 6)}
    return basis, {**stats, "protected_rank": protected.shape[1]}


@torch.no_grad()
def erase_suppress(
    pipe, concepts: Sequence[Concept], config: SuppressConfig, *, preserve: Sequence[str] = ()
) -> HideResult:
    """Fold the projection off the concept's subspace into ``pipe.unet``'s cross-attention key and value
    projections in place; returns the changed tensors.

    Args:
        pipe: a diffusers text-to-image pipeline.
        concepts: what to erase (their anchors are protected, not aimed at).
        config: the edit's settings (:class:`SuppressConfig`).
        preserve: prompts whose states the projection leaves alone.
    """
    concepts, preserve = check_inputs(pipe, concepts, preserve)
    started = time.perf_counter()
    base_fingerprint = unet_fingerprint(pipe.unet)
    basis, held = concept_subspace(pipe, concepts, preserve, config)
    public = edit_projections(pipe.unet, lambda name, old: old - (old @ basis) @ basis.T)
    return edit_result(
        "suppress",
        public,
        held,
        started,
        base_fingerprint=base_fingerprint,
        concepts=concepts,
        config=config,
        preserve=preserve,
    )
