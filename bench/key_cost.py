"""What a key and its training cost on Stable Diffusion's UNets: kpop's prompt key against sealed hiding's
weight-change key, counted from the architectures (SD 1.5 and SD 2.1 shapes, no weights loaded).

    python bench/key_cost.py

Per mode: the UNet weights trained, the numbers the key stores and its file size in float32, and the
memory the UNet's training state takes in float32 (trained weights with their gradients and two Adam
moments, the other weights, and the frozen original the losses compare with). Activations, the text
encoder and the VAE come on top and are not counted. These are counts, not measurements of a run.
"""

from __future__ import annotations

import math

import torch
from diffusers import UNet2DConditionModel

from conceptvault.defaults import Family
from conceptvault.delta_key import key_size
from conceptvault.methods.kpop import HideConfig
from conceptvault.registry import get_method
from conceptvault.settings import TrainedLayers
from hide_step import SD15_UNET

SD21_UNET = {
    **SD15_UNET,
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True,
}
BYTES = 4  # float32


def shapes_of(config: dict) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    return {name: tuple(p.shape) for name, p in unet.named_parameters()}


def rows(family: Family, config: dict) -> list[dict]:
    """Per mode: the numbers trained, the numbers the key stores, and the UNet's numbers in all."""
    shapes = shapes_of(config)
    every = sum(math.prod(s) for s in shapes.values())
    cross_attention = sum(math.prod(s) for name, s in shapes.items() if ".attn2." in name)
    assert HideConfig().train == TrainedLayers.XATTN  # kpop's default trains cross-attention only
    prompt_key = 2 * HideConfig().m * config["cross_attention_dim"]  # m tokens for the keys, m for the values
    rank = get_method("sealed").family_defaults[family.value]["key_rank"]
    return [
        dict(mode="kpop", trained=cross_attention, key=prompt_key, every=every),
        dict(mode=f"sealed, rank {rank}", trained=every, key=key_size(list(shapes.values()), rank), every=every),
        dict(mode="sealed, whole", trained=every, key=key_size(list(shapes.values()), 0), every=every),
    ]


def training_state_bytes(row: dict) -> int:
    """Every weight, the gradient and two Adam moments of the trained ones, and the frozen original."""
    return BYTES * (row["every"] + 3 * row["trained"] + row["every"])


def main() -> None:
    print("| UNet | mode | weights trained | key: numbers | key file | UNet training state |")
    print("|---|---|---|---|---|---|")
    for name, family, config in (("SD 1.5", Family.SD1, SD15_UNET), ("SD 2.1", Family.SD2, SD21_UNET)):
        for row in rows(family, config):
            print(
                f"| {name} | {row['mode']} | {row['trained'] / 1e6:.0f} M | {row['key'] / 1e6:.3f} M "
                f"| {row['key'] * BYTES / 2**20:.1f} MiB | {training_state_bytes(row) / 2**30:.1f} GiB |"
            )


if __name__ == "__main__":
    main()
