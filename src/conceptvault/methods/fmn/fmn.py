"""Forget-Me-Not, erasing a concept by re-steering cross-attention (Zhang et al., *Forget-Me-Not: Learning to
Forget in Text-to-Image Diffusion Models*, 2023): another erasure baseline hiding is compared with.

Each step draws ``z_t`` from the run's latent source for one of the concept's prompts, runs the UNet on it with
every cross-attention layer's probabilities recorded at the concept's token positions (the tokens of the
concept's name within the prompt, or the prompt's last content token where the phrasing does not contain the
name), and lowers the norm of those attention maps: the image stops attending to the words that name the
concept. ``train`` chooses the weights that learn it: the key and value projections of every cross-attention
layer (``kv``, the text side only) or every cross-attention weight (``xattn``). A value projection changes only
the attention of the layers after it, so the last layer's stays as it was.

The probabilities are recorded by an attention processor that wraps each layer's own processor (whose output
is used unchanged) and is installed only for the step's own forward pass: sampling ``z_t``, the vault and the
pipeline afterwards see the processors they had. Where the paper attends to real pictures of the concept, here
``z_t`` comes from the model's own trajectories of the concept's prompts, as for every trained method.
The result is a vault with no keys: the concept is gone for everyone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch
from torch import nn

from ...backbone import unet_predict
from ...concepts import Concept, HideResult, check_inputs
from ...driver import run_erasure
from ...objective import TextStates
from ...settings import SamplerSettings, TrainedLayers, option
from ...training import ErasureRun, RunState, latent_source, trainable_parameters

CROSS_ATTENTION_PROCESSOR = "attn2.processor"


class FmnWeights(str, Enum):
    """Which cross-attention weights Forget-Me-Not trains."""

    KV = "kv"  # to_k and to_v: how text is read, the image side untouched
    XATTN = "xattn"  # every cross-attention weight


@dataclass
class FmnConfig(SamplerSettings):
    """Every setting of a Forget-Me-Not run; stored in the vault's manifest."""

    iterations: int = option(100, "Fine-tuning steps.")
    lr: float = option(1e-5, "Adam learning rate of the trained weights.")
    train: FmnWeights = option(FmnWeights.KV, "kv: cross-attention key and value projections; xattn: all of it.")
    checkpoint_every: int = option(0, "Steps between checkpoints (0: only at the end and on Ctrl-C).")

    positive = (*SamplerSettings.positive, "iterations", "lr")


def concept_positions(pipe, name: str, prompt: str) -> list[int]:
    """The positions of ``name``'s tokens within ``prompt``'s text states (the first place they occur), or the
    prompt's last content token where the prompt does not spell the name (a phrasing such as "pentagram")."""
    tokenizer = pipe.tokenizer
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    named = tokenizer(name, add_special_tokens=False).input_ids
    for start in range(1, len(ids) - len(named)):  # between the start and the end token
        if ids[start : start + len(named)] == named:
            return list(range(start, start + len(named)))
    return [max(len(ids) - 2, 0)]  # BOS ... last token, EOS


def _probabilities(attn, hidden_states, encoder_hidden_states, attention_mask, temb) -> torch.Tensor:
    """A cross-attention layer's attention probabilities ``(batch * heads, pixels, tokens)``, computed as its
    processor computes them before they weigh the values."""
    x = hidden_states
    if attn.spatial_norm is not None:
        x = attn.spatial_norm(x, temb)
    if x.ndim == 4:
        x = x.flatten(2).transpose(1, 2)
    if attn.group_norm is not None:
        x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
    context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
    mask = attn.prepare_attention_mask(attention_mask, context.shape[1], x.shape[0])
    query, key = attn.head_to_batch_dim(attn.to_q(x)), attn.head_to_batch_dim(attn.to_k(context))
    return attn.get_attention_scores(query, key, mask)


class _AttentionRecorder:
    """Runs a cross-attention layer's own processor and appends the layer's attention probabilities on
    ``positions`` to ``maps`` (differentiable: the loss is taken on them)."""

    def __init__(self, original, positions: Sequence[int], maps: list[torch.Tensor]):
        self.original, self.positions, self.maps = original, list(positions), maps

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is not None:
            probabilities = _probabilities(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
            self.maps.append(probabilities[:, :, self.positions])
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)


@contextmanager
def attention_recorded(unet: nn.Module, positions: Sequence[int]) -> Iterator[list[torch.Tensor]]:
    """Inside: every cross-attention layer of ``unet`` records its attention on ``positions`` into the list
    yielded, one ``(batch * heads, pixels, len(positions))`` map per layer and call. Afterwards every layer has
    the processor it had."""
    originals = unet.attn_processors
    maps: list[torch.Tensor] = []
    recording = {
        name: _AttentionRecorder(processor, positions, maps) if name.endswith(CROSS_ATTENTION_PROCESSOR) else processor
        for name, processor in originals.items()
    }
    unet.set_attn_processor(recording)
    try:
        yield maps
    finally:
        unet.set_attn_processor(dict(originals))  # set_attn_processor empties the dict it is given


def concept_attention(unet: nn.Module, z: torch.Tensor, t: torch.Tensor, states, positions) -> torch.Tensor:
    """Forget-Me-Not's loss at ``(z, t)`` for a prompt's text states ``(1, 77, d)``: the squared norm of the
    attention each pixel pays to the concept's tokens (``positions``), averaged over pixels, heads and latents,
    then over the cross-attention layers (so that large layers do not outweigh small ones)."""
    with attention_recorded(unet, positions) as maps:
        unet_predict(unet, z, t, states.expand(z.shape[0], -1, -1))
    return torch.stack([m.float().pow(2).sum(dim=-1).mean() for m in maps]).mean()


def trained_weights(unet: nn.Module, train: FmnWeights) -> dict[str, nn.Parameter]:
    """The cross-attention weights a run trains, by state_dict name."""
    chosen = trainable_parameters(unet, TrainedLayers.XATTN)
    if train == FmnWeights.KV:
        chosen = {name: p for name, p in chosen.items() if ".attn2.to_k." in name or ".attn2.to_v." in name}
    return chosen


def erase_fmn(
    pipe,
    concepts: Sequence[Concept],
    config: FmnConfig,
    *,
    checkpoint_dir: Path | str | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
) -> HideResult:
    """Fine-tune ``pipe.unet``'s cross-attention in place so that it no longer attends to ``concepts``' tokens;
    returns the changed tensors.

    Args:
        pipe: a diffusers text-to-image pipeline.
        concepts: what to erase (anchors play no part: the attention is steered away, not toward something).
        config: the run's settings (:class:`FmnConfig`).
        checkpoint_dir / resume: as for :func:`conceptvault.hide`.
        progress: show a progress bar.
        on_step: called after every step as ``on_step(step, info)`` with the step's loss.
    """
    run = _FmnRun(pipe, check_inputs(pipe, concepts, ())[0], config, progress)
    return run_erasure(
        run, pipe.unet, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress, on_step=on_step
    )


class _FmnRun(ErasureRun):
    """One Forget-Me-Not run: the trained weights and their optimiser, the concepts' token positions, the latent
    source."""

    method = "fmn"

    def __init__(self, pipe, concepts: list[Concept], config: FmnConfig, progress: bool):
        started = time.perf_counter()
        self.concepts, self.preserve, self.config = concepts, [], config
        self.begin(pipe, config)
        self.unet = pipe.unet
        prompts = [p for c in concepts for p in c.prompts]
        self.texts = TextStates(pipe, [*prompts, ""])
        self.positions = {(c.name, p): concept_positions(pipe, c.name, p) for c in concepts for p in c.prompts}
        self.trained = trained_weights(pipe.unet, config.train)
        self.optimiser = torch.optim.Adam(self.trained.values(), lr=config.lr)
        _, self.source = latent_source(pipe, self.frozen_unet, self.texts, prompts, config, self.generator, progress)
        self.state = RunState(total=config.iterations)
        self.at_step_boundary()
        self.state.setup_seconds = time.perf_counter() - started

    def step(self) -> dict:
        """Lower the attention on a concept prompt's concept tokens at one draw of ``z_t``."""
        started = time.perf_counter()
        self.at_step_boundary()
        concept = self.pick(self.concepts)
        prompt = self.pick(concept.prompts)
        z, t = self.source.draw(prompt, self.config.batch_size, self.generator)
        L_attention = concept_attention(self.unet, z, t, self.texts(prompt), self.positions[concept.name, prompt])
        return self.update(L_attention, {"L_attention": L_attention}, started)
