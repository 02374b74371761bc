"""Default hiding settings per model family, so that ``conceptvault hide MODEL --concept X`` works as it is.

A family is told by the UNet's cross-attention width. Stable Diffusion's families start from the method
paper's settings (SD v1.4: learning rate 1e-5 for weights and key, 1000 model updates, the key in the
mid block) with one addition, the unconditional branch with the key held to the original's
(``lambda_uncond``: on the built-in model, with epsilon-space losses, it raised RSR from 53 % to 75 %),
none of which ConceptVault has been able to measure on Stable Diffusion without a GPU; the small family
(the built-in model, and any model whose width is not a Stable Diffusion one) uses settings chosen on
the built-in model (``bench/recovery.py``; the README gives what they reach). Settings given explicitly
always win; the vault's manifest records the family and every setting used.
"""

from __future__ import annotations

from enum import Enum

from .hide import HideConfig


class Family(str, Enum):
    SMALL = "small"  # the built-in model, and other small models
    SD1 = "sd1"  # Stable Diffusion 1.x: 768-wide cross-attention
    SD2 = "sd2"  # Stable Diffusion 2.x: 1024
    SDXL = "sdxl"  # Stable Diffusion XL: 2048


_WIDTHS = {768: Family.SD1, 1024: Family.SD2, 2048: Family.SDXL}

# Small models take larger learning rates and far fewer updates; cached trajectories keep each step cheap,
# the key reaches every cross-attention layer, and a key-only phase against the final public weights lets the
# key catch up with the model it has to unlock. Losses in x0 space: with the unconditional branch held
# (lambda_uncond), the star on the shipped built-in model went from RSR 75 % to the original's 97 % (32 images).
# A larger key (80 tokens), a larger key learning rate and 600 key-only updates: trained on world captions
# (demo.WORLD_CAPTIONS) hiding reaches more of the ways a concept is asked for, and the key has more to undo;
# on the arrow RSR went from 84.4 % with 300 key-only updates to 95.3 % with 600, the public weights the same
# (64 images; bench/recovery.py, README). Keys with rank-8 changes of the projections they reach (key_rank):
# tokens only bring back what the public weights still know; with rank 8 the star met every figure of the aim
# on three hiding seeds (RSR 89.6 -> 97.9 %, ESR 93.2 -> 98.4 %), red came back at the original's rate (RSR
# 98.4 %; tokens: 48.4 %) and five shapes at 99 % of it (tokens: 65 %). Two cached trajectories per prompt and
# 300 key-only updates: with rank-8 keys the arrow kept every figure (ESR 96.9 %, RSR 96.9 %; with four and 600:
# 96.9 % and 98.4 %) and `conceptvault hide builtin --concept arrow` took 2.97 minutes on 2 cores instead of 5.
# The price, on both hiding seeds measured: the star's public model was taught back faster (fine-tuning 148 and
# 96 steps to half the seeds instead of 244 and 177; README, Security), and the key holder's images came a
# little further from the original's (SSIM 0.94 instead of 0.97).
_SMALL = dict(
    key_rank=8,
    loss_space="x0",
    model_updates=200,
    lr=1e-3,
    key_lr=3e-2,
    m=80,
    lambda_rec=1.0,
    placement="all",
    latents="cache",
    sampler_steps=25,
    cache_trajectories=2,
    batch_size=4,
    key_updates=300,
    checkpoint_every=100,
)

FAMILY_SETTINGS: dict[Family, dict] = {Family.SMALL: _SMALL, Family.SD1: {}, Family.SD2: {}, Family.SDXL: {}}

# Updates counted per hidden concept: every training step serves one concept, drawn at random, so several
# concepts share the updates that hid one. Five shapes at once with the built-in defaults were hidden on
# 39.7 % of seeds with 200 model updates and on 95.6 % with 1,000 (PSR the original's both times; 64 images
# each, bench/recovery.py --suite five-shapes-a). Stable Diffusion's defaults are the method paper's, unscaled.
PER_CONCEPT_SETTINGS: dict[Family, tuple[str, ...]] = {Family.SMALL: ("model_updates", "key_updates")}


# ESD on small models: the same larger learning rate and fewer steps as hiding, z_t sampled with the model
# being trained (as ESD does), at the small model's sampler length.
ESD_FAMILY_SETTINGS: dict[Family, dict] = {
    Family.SMALL: dict(iterations=200, lr=1e-3, sampler_steps=25, batch_size=4),
    Family.SD1: {},
    Family.SD2: {},
    Family.SDXL: {},
}


# Sealed hiding on small models: every weight trained at a small model's rate, attackers re-learned often; the
# key is the whole weight change (exact). On Stable Diffusion a whole change would be a copy of the UNet (3.4 GB
# for SD 1.5 in float32), so its key keeps each tensor's 64 strongest directions instead (not yet measured).
# 1,200 updates on the built-in model: 400 kept the other shapes but hid the star on 75 % of seeds, 800 on 89 %.
SEAL_FAMILY_SETTINGS: dict[Family, dict] = {
    Family.SMALL: dict(
        model_updates=1200, lr=2e-4, sampler_steps=25, cache_trajectories=2, batch_size=4, checkpoint_every=100
    ),
    Family.SD1: dict(key_rank=64),
    Family.SD2: dict(key_rank=64),
    Family.SDXL: dict(key_rank=64),
}


def model_family(pipe) -> Family:
    """The family of a loaded pipeline, by its UNet's cross-attention width."""
    return _WIDTHS.get(pipe.unet.config.cross_attention_dim, Family.SMALL)


def family_config(family: Family | str, concepts: int = 1, **explicit) -> HideConfig:
    """The family's default hiding settings for hiding ``concepts`` concepts at once, with ``explicit`` ones
    on top (explicit always wins)."""
    family = Family(family)
    defaults = dict(FAMILY_SETTINGS[family])
    for name in PER_CONCEPT_SETTINGS.get(family, ()):
        defaults[name] *= max(1, concepts)
    return HideConfig(**{**defaults, **explicit})


def esd_family_config(family: Family | str, **explicit):
    """The family's default ESD settings with ``explicit`` ones on top."""
    from .esd import EsdConfig

    return EsdConfig(**{**ESD_FAMILY_SETTINGS[Family(family)], **explicit})


def seal_family_config(family: Family | str, **explicit):
    """The family's default sealed-hiding settings with ``explicit`` ones on top."""
    from .seal import SealConfig

    return SealConfig(**{**SEAL_FAMILY_SETTINGS[Family(family)], **explicit})
