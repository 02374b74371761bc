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

from conceptvault.defaults import SEAL_FAMILY_SETTINGS, Family
from conceptvault.delta_key import key_size
from conceptvault.hide import HideConfig
from conceptvault.training import TrainedLayers
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


def training_state_bytes(shapes: dict, trained: list[str]) -> int:
    every = sum(math.prod(s) for s in shapes.values())
    trained_numbers = sum(math.prod(shapes[n]) for n in trained)
    return BYTES * (every + 3 * trained_numbers + every)  # weights, gradient + 2 moments of the trained, frozen copy


def rows(family: Family, config: dict) -> list[dict]:
    shapes = shapes_of(config)
    width = config["cross_attention_dim"]
    m = HideConfig().m
    assert HideConfig().train == TrainedLayers.XATTN
    cross_attention = [n for n in shapes if ".attn2." in n]
    rank = SEAL_FAMILY_SETTINGS[family]["key_rank"]
    every = list(shapes)
    return [
        dict(mode="kpop", trained=cross_attention, key=2 * m * width, shapes=shapes),
        dict(mode=f"sealed, rank {rank}", trained=every, key=key_size(list(shapes.values()), rank), shapes=shapes),
        dict(mode="sealed, whole", trained=every, key=key_size(list(shapes.values()), 0), shapes=shapes),
    ]


def main() -> None:
    print("| UNet | mode | weights trained | key: numbers | key file | UNet training state |")
    print("|---|---|---|---|---|---|")
    for name, family, config in (("SD 1.5", Family.SD1, SD15_UNET), ("SD 2.1", Family.SD2, SD21_UNET)):
        for row in rows(family, config):
            trained = sum(math.prod(row["shapes"][n]) for n in row["trained"])
            state = training_state_bytes(row["shapes"], row["trained"])
            print(
                f"| {name} | {row['mode']} | {trained / 1e6:.0f} M | {row['key'] / 1e6:.3f} M "
                f"| {row['key'] * BYTES / 2**20:.1f} MiB | {state / 2**30:.1f} GiB |"
            )


if __name__ == "__main__":
    main()
