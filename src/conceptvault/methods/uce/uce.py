"""UCE, erasing a concept by a closed-form edit of the cross-attention projections (Gandikota et al.,
*Unified Concept Editing in Diffusion Models*, WACV 2024): the second baseline hiding is compared with.

For every cross-attention layer, the key and value projections ``W`` (``to_k``, ``to_v``) are replaced by
the solution of a ridge regression that sends the erased concept's text states where the frozen layer
sends its anchor's, keeps the preserved prompts' projections as they were, and stays close to ``W``:

    min_W  sum_erase |W c_i - W_old a_i|^2  +  sum_preserve |W c_j - W_old c_j|^2  +  lambda |W - W_old|^2
    W = (sum_erase W_old a_i c_i^T + sum_preserve W_old c_j c_j^T + lambda W_old)
        (sum_erase c_i c_i^T + sum_preserve c_j c_j^T + lambda I)^-1

The text states used are the concept's last token and every token after it (the end-of-text and
padding states carry the whole prompt in a causal text encoder), aligned with the same positions of the
anchor; preserved prompts contribute every token. No training, no keys: the concept is gone for everyone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from ...backbone import encode_prompts, text_tokens, unet_fingerprint
from ...concepts import Concept, HideResult, check_inputs
from ...settings import Settings, option
from ...training import peak_memory


@dataclass
class UceConfig(Settings):
    """Every setting of a UCE edit; stored in the vault's manifest."""

    lamb: float = option(0.1, "Weight of staying close to the original projections (lambda).")
    erase_scale: float = option(1.0, "Weight of the erased concepts' terms.")
    preserve_scale: float = option(1.0, "Weight of the preserved prompts' terms.")
    seed: int = option(0, "Unused by the closed form; kept so every method's settings carry one.")

    positive: ClassVar[tuple[str, ...]] = ("lamb",)


def concept_token_states(pipe, prompt: str) -> tuple[torch.Tensor, int]:
    """The prompt's text states (77, d) and the position of its last content token."""
    states = text_tokens(pipe.unet, encode_prompts(pipe, [prompt]))[0].double()
    ids = pipe.tokenizer(prompt, truncation=True, max_length=pipe.tokenizer.model_max_length).input_ids
    return states, max(len(ids) - 2, 0)  # BOS ... last token, EOS: the last token sits before EOS


def _pairs(pipe, concept: Concept) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(concept states, anchor states) aligned from each one's last content token to the end."""
    anchor, anchor_last = concept_token_states(pipe, concept.anchor)
    pairs = []
    for prompt in concept.prompts:
        states, last = concept_token_states(pipe, prompt)
        length = min(states.shape[0] - last, anchor.shape[0] - anchor_last)
        pairs.append((states[last : last + length], anchor[anchor_last : anchor_last + length]))
    return pairs


@torch.no_grad()
def erase_uce(pipe, concepts: Sequence[Concept], config: UceConfig, *, preserve: Sequence[str] = ()) -> HideResult:
    """Edit ``pipe.unet``'s cross-attention key and value projections in place; returns the changed tensors.

    Args:
        pipe: a diffusers text-to-image pipeline.
        concepts: what to erase, each toward its anchor (default: the empty prompt).
        config: the edit's settings (:class:`UceConfig`).
        preserve: prompts whose projections stay as they were.
    """
    concepts, preserve = check_inputs(pipe, concepts, preserve)
    started = time.perf_counter()
    base_fingerprint = unet_fingerprint(pipe.unet)
    erase = [pair for c in concepts for pair in _pairs(pipe, c)]
    sources = torch.cat([s for s, _ in erase])  # (N, d)
    targets = torch.cat([a for _, a in erase])
    kept = (
        torch.cat([text_tokens(pipe.unet, encode_prompts(pipe, [p]))[0].double() for p in preserve])
        if preserve
        else sources[:0]
    )
    width = sources.shape[1]
    gram = config.erase_scale * sources.T @ sources + config.preserve_scale * kept.T @ kept
    inverse = torch.linalg.inv(gram + config.lamb * torch.eye(width, dtype=torch.float64, device=gram.device))
    public = {}
    for name, module in pipe.unet.named_modules():
        if not name.endswith("attn2"):
            continue
        for projection in ("to_k", "to_v"):
            layer = getattr(module, projection)
            old = layer.weight.double()
            mixed = (
                config.erase_scale * (old @ targets.T) @ sources
                + config.preserve_scale * (old @ kept.T) @ kept
                + config.lamb * old
            )
            layer.weight.copy_((mixed @ inverse).to(layer.weight.dtype))
            public[f"{name}.{projection}.weight"] = layer.weight.detach().cpu().clone()
    stats = {
        "steps": 0,
        "seconds": round(time.perf_counter() - started, 3),
        "erased_states": len(sources),
        **peak_memory(),
    }
    return HideResult(
        public=public,
        keys={},
        stats=stats,
        base_fingerprint=base_fingerprint,
        concepts=concepts,
        config=config,
        preserve=preserve,
        method="uce",
    )
