"""RECE, erasing a concept by a closed-form edit of cross-attention that also erases the embeddings which
would bring it back (Gong et al., *Reliable and Efficient Concept Erasure of Text-to-Image Diffusion Models*,
ECCV 2024): UCE's edit, hardened against adversarial prompts in a few closed-form rounds.

Round 0 is UCE's ridge edit of every cross-attention key and value projection (see
:mod:`conceptvault.cross_attention_edit`). Each round then derives, for every erased text state ``c``, the
embedding ``c'`` that the *edited* projections ``W'_l`` map closest to what the original projections ``W_l``
gave ``c``, over every projection ``l`` at once, with a penalty on its norm:

    c' = argmin_x  sum_l |W'_l x - W_l c|^2  +  mu |x|^2
       = (sum_l W'_l^T W'_l + mu I)^-1  sum_l W'_l^T W_l c

and adds ``c'`` to the erased states, sent to the same anchor state as ``c``; the edit is solved again from the
original projections with the grown set. ``mu`` is the setting ``embedding_lamb`` times the mean eigenvalue of
``sum_l W'_l^T W'_l``, so that one value means the same on models whose projections differ in scale. The
relative distance ``|W' c' - W c| / |W c|`` of each round's embeddings (mean over the erased states) is recorded
in the stats as ``adversarial_distance``: the larger, the harder the edited model is to talk back into the
concept through its cross-attention. No training, no keys.

Simplifications: one embedding is derived per erased state (the concept's last token and every state after it,
as UCE aligns them) rather than one per concept; the paper's term that keeps unrelated concepts is UCE's
preserve term over the preserve prompts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ...backbone import unet_fingerprint
from ...concepts import Concept, HideResult, check_inputs
from ...cross_attention_edit import (
    cross_attention_projections,
    edit_projections,
    edit_result,
    erased_and_kept_states,
    ridge_inverse,
    ridge_solution,
)
from ...settings import Settings, option


@dataclass
class ReceConfig(Settings):
    """Every setting of a RECE edit; stored in the vault's manifest."""

    lamb: float = option(0.1, "Weight of staying close to the original projections (UCE's lambda).")
    erase_scale: float = option(1.0, "Weight of the erased states' terms (the concept's and the adversarial ones).")
    preserve_scale: float = option(1.0, "Weight of the preserved prompts' terms.")
    rounds: int = option(3, "Rounds of deriving the adversarial embeddings and erasing them too (0: UCE alone).")
    embedding_lamb: float = option(
        1e-3, "Penalty on the adversarial embedding's norm, in units of the projections' mean squared gain."
    )
    seed: int = option(0, "Unused by the closed form; kept so every method's settings carry one.")

    positive: ClassVar[tuple[str, ...]] = ("lamb", "embedding_lamb")


def adversarial_embeddings(
    originals: dict[str, torch.Tensor], edited: dict[str, torch.Tensor], states: torch.Tensor, embedding_lamb: float
) -> tuple[torch.Tensor, float]:
    """For each row ``c`` of ``states`` (N, d), the embedding the ``edited`` projections map closest to what the
    ``originals`` map ``c`` to (float64, N x d), and the mean relative distance that is left."""
    gram = sum(edited[n].T @ edited[n] for n in edited)  # (d, d)
    cross = sum(edited[n].T @ originals[n] for n in edited)
    width = gram.shape[0]
    mu = embedding_lamb * torch.trace(gram) / width
    lifted = torch.linalg.solve(gram + mu * torch.eye(width, dtype=gram.dtype, device=gram.device), cross)
    found = states @ lifted.T
    missed = sum(((found @ edited[n].T - states @ originals[n].T) ** 2).sum(1) for n in edited)
    meant = sum(((states @ originals[n].T) ** 2).sum(1) for n in edited)
    return found, float((missed.sqrt() / meant.sqrt()).mean())


@torch.no_grad()
def erase_rece(pipe, concepts: Sequence[Concept], config: ReceConfig, *, preserve: Sequence[str] = ()) -> HideResult:
    """Edit ``pipe.unet``'s cross-attention key and value projections in place; returns the changed tensors.

    Args:
        pipe: a diffusers text-to-image pipeline.
        concepts: what to erase, each toward its anchor (default: the empty prompt).
        config: the edit's settings (:class:`ReceConfig`).
        preserve: prompts whose projections stay as they were.
    """
    concepts, preserve = check_inputs(pipe, concepts, preserve)
    started = time.perf_counter()
    base_fingerprint = unet_fingerprint(pipe.unet)
    concept_states, anchor_states, kept = erased_and_kept_states(pipe, concepts, preserve)
    originals = {name: layer.weight.double().clone() for name, layer in cross_attention_projections(pipe.unet)}
    sources, targets, distances = concept_states, anchor_states, []
    edited = _solve(originals, sources, targets, kept, config)
    for _ in range(config.rounds):
        found, distance = adversarial_embeddings(originals, edited, concept_states, config.embedding_lamb)
        distances.append(round(distance, 6))
        sources, targets = torch.cat([sources, found]), torch.cat([targets, anchor_states])
        edited = _solve(originals, sources, targets, kept, config)
    public = edit_projections(pipe.unet, lambda name, old: edited[name])
    stats = {"erased_states": len(sources), "adversarial_distance": distances}
    return edit_result(
        "rece",
        public,
        stats,
        started,
        base_fingerprint=base_fingerprint,
        concepts=concepts,
        config=config,
        preserve=preserve,
    )


def _solve(originals: dict, sources, targets, kept, config: ReceConfig) -> dict[str, torch.Tensor]:
    """Every projection's ridge solution from the original projections (float64), by weight name."""
    scales = dict(erase_scale=config.erase_scale, preserve_scale=config.preserve_scale, lamb=config.lamb)
    inverse = ridge_inverse(sources, kept, **scales)
    return {name: ridge_solution(old, sources, targets, kept, inverse, **scales) for name, old in originals.items()}
