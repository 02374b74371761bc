"""What the closed-form edits of cross-attention share: the text states they are made from, the key and value
projections they change, and the ridge solution that sends erased states where the frozen layer sends their
anchors while keeping preserved prompts as they were.

The ridge solution, for one projection ``W`` (``to_k`` or ``to_v`` of a cross-attention layer):

    min_W  e sum_erase |W c_i - W_old a_i|^2  +  p sum_preserve |W c_j - W_old c_j|^2  +  lambda |W - W_old|^2
    W = (e sum W_old a_i c_i^T + p sum W_old c_j c_j^T + lambda W_old)
        (e sum c_i c_i^T + p sum c_j c_j^T + lambda I)^-1

with ``c_i`` an erased text state, ``a_i`` its anchor's state at the same position, ``c_j`` a preserved state.

All in float64: the Gram matrix of a few hundred text states is badly conditioned in float32.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import torch

from .backbone import encode_prompts, text_tokens
from .concepts import Concept, HideResult
from .training import peak_memory

PROJECTIONS = ("to_k", "to_v")


def concept_token_states(pipe, prompt: str) -> tuple[torch.Tensor, int]:
    """The prompt's text states (77, d) and the position of its last content token."""
    states = text_tokens(pipe.unet, encode_prompts(pipe, [prompt]))[0].double()
    ids = pipe.tokenizer(prompt, truncation=True, max_length=pipe.tokenizer.model_max_length).input_ids
    return states, max(len(ids) - 2, 0)  # BOS ... last token, EOS: the last token sits before EOS


def aligned_states(pipe, concept: Concept) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(concept states, anchor states) of each of the concept's prompts, aligned from each one's last content
    token to the end (the end-of-text and padding states carry the whole prompt in a causal text encoder)."""
    anchor, anchor_last = concept_token_states(pipe, concept.anchor)
    pairs = []
    for prompt in concept.prompts:
        states, last = concept_token_states(pipe, prompt)
        length = min(states.shape[0] - last, anchor.shape[0] - anchor_last)
        pairs.append((states[last : last + length], anchor[anchor_last : anchor_last + length]))
    return pairs


def prompt_states(pipe, prompts: Sequence[str], like: torch.Tensor) -> torch.Tensor:
    """Every token state of every prompt, stacked ``(N, d)`` in float64; none: an empty tensor like ``like``."""
    if not prompts:
        return like[:0]
    return torch.cat([text_tokens(pipe.unet, encode_prompts(pipe, [p]))[0].double() for p in prompts])


def erased_and_kept_states(pipe, concepts: Sequence[Concept], preserve: Sequence[str]):
    """``(concept states, anchor states, kept states)``: every concept prompt's states from its last content token
    on, row by row beside its anchor's (``(N, d)`` each), and every state of the kept prompts (float64)."""
    pairs = [pair for concept in concepts for pair in aligned_states(pipe, concept)]
    sources = torch.cat([states for states, _ in pairs])
    return sources, torch.cat([anchor for _, anchor in pairs]), prompt_states(pipe, preserve, like=sources)


def cross_attention_projections(unet) -> Iterator[tuple[str, torch.nn.Linear]]:
    """``(state-dict name of the weight, layer)`` of every cross-attention key and value projection."""
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            for projection in PROJECTIONS:
                yield f"{name}.{projection}.weight", getattr(module, projection)


def ridge_inverse(
    sources: torch.Tensor, kept: torch.Tensor, *, erase_scale: float, preserve_scale: float, lamb: float
) -> torch.Tensor:
    """``(e sum c_i c_i^T + p sum c_j c_j^T + lambda I)^-1``: the right factor every projection's solution shares."""
    width = sources.shape[1]
    gram = erase_scale * sources.T @ sources + preserve_scale * kept.T @ kept
    return torch.linalg.inv(gram + lamb * torch.eye(width, dtype=torch.float64, device=gram.device))


def ridge_solution(
    old: torch.Tensor,
    sources: torch.Tensor,
    targets: torch.Tensor,
    kept: torch.Tensor,
    inverse: torch.Tensor,
    *,
    erase_scale: float,
    preserve_scale: float,
    lamb: float,
) -> torch.Tensor:
    """The edited projection (float64) that sends ``sources`` where ``old`` sends ``targets`` and keeps ``kept``."""
    mixed = erase_scale * (old @ targets.T) @ sources + preserve_scale * (old @ kept.T) @ kept + lamb * old
    return mixed @ inverse


def edit_projections(unet, solve: Callable[[str, torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every cross-attention key and value projection by ``solve(name, weight as float64)``, in the
    layer's own dtype; returns the new weights (on the CPU), by state-dict name: the edit's public tensors."""
    public = {}
    for name, layer in cross_attention_projections(unet):
        layer.weight.copy_(solve(name, layer.weight.double()).to(layer.weight.dtype))
        public[name] = layer.weight.detach().cpu().clone()
    return public


def edit_result(method: str, public: dict, stats: dict, started: float, **asked) -> HideResult:
    """A closed-form edit's result: no key and no steps; its time since ``started``, ``stats`` and peak memory;
    ``asked`` is what it was asked (``base_fingerprint``, ``concepts``, ``config``, ``preserve``)."""
    stats = {"steps": 0, "seconds": round(time.perf_counter() - started, 3), **stats, **peak_memory()}
    return HideResult(public=public, keys={}, stats=stats, method=method, **asked)
