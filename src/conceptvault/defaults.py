"""Model families, so that ``conceptvault hide MODEL --concept X`` works as it is: a method's default settings
depend on the family of the model it runs on (each method registers its own per family).

A family is told by the UNet's cross-attention width. Stable Diffusion's families start from the method
paper's settings; the small family (the built-in model, and any model whose width is not a Stable
Diffusion one) uses settings chosen on the built-in model. Settings given explicitly always win; the
vault's manifest records the family and every setting used.
"""

from __future__ import annotations

from enum import Enum

from .registry import get_method, variant_settings


class Family(str, Enum):
    SMALL = "small"  # the built-in model, and other small models
    SD1 = "sd1"  # Stable Diffusion 1.x: 768-wide cross-attention
    SD2 = "sd2"  # Stable Diffusion 2.x: 1024
    SDXL = "sdxl"  # Stable Diffusion XL: 2048


_WIDTHS = {768: Family.SD1, 1024: Family.SD2, 2048: Family.SDXL}


def model_family(pipe) -> Family:
    """The family of a loaded pipeline, by its UNet's cross-attention width."""
    return _WIDTHS.get(pipe.unet.config.cross_attention_dim, Family.SMALL)


def family_config(family: Family | str, concepts: int = 1, method: str = "kpop", **explicit):
    """``method``'s default settings on ``family`` for hiding ``concepts`` concepts at once, with ``explicit``
    ones on top (explicit always wins). ``method`` may be a variant's name (``esd-u``)."""
    return get_method(method).config(Family(family).value, concepts, **{**variant_settings(method), **explicit})
