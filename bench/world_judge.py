"""The shipped judge on held-out data: accuracy per head on 1,000 fresh renders, false accepts on 1,000 negatives.

    python bench/world_judge.py                 # renders as drawn, and after the built-in model's VAE
    python bench/world_judge.py --seed 777      # another held-out draw

Negatives are scribbles, strokes, blobs, fragments, noise and overlapping shapes (``world.negatives``); a
false accept is a negative the judge names a shape instead of rejecting it as "none".
"""

from __future__ import annotations

import argparse

import torch
from diffusers import AutoencoderKL

from conceptvault.world import BUILTIN_MODEL_DIR
from conceptvault.world.judge import judge_accuracy, load_judge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=12345, help="never used in training")
    args = parser.parse_args()
    torch.set_num_threads(2)
    judge = load_judge()
    vae = AutoencoderKL.from_pretrained(BUILTIN_MODEL_DIR / "vae").eval()
    print(f"{'images':<22} {'shape':>7} {'colour':>7} {'style':>7} {'false accept':>13}")
    for name, through in (("as rendered", None), ("through the VAE", vae)):
        figures = judge_accuracy(judge, count=args.count, seed=args.seed, vae=through)
        row = " ".join(f"{100 * figures[h]:6.1f}%" for h in ("shape", "colour", "style"))
        print(f"{name:<22} {row} {100 * figures['false_accept']:12.1f}%")


if __name__ == "__main__":
    main()
