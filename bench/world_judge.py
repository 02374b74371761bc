"""The shipped judge on held-out data: accuracy per head on 1,000 fresh renders, false accepts on 1,000 negatives.

    python bench/world_judge.py                 # renders as drawn, through the model's VAE, squares turned
    python bench/world_judge.py --seed 777      # another held-out draw
    python bench/world_judge.py --judge runs/judge/judge    # another judge

Negatives are scribbles, strokes, blobs, fragments, noise and overlapping shapes (``world.negatives``); a
false accept is a negative the judge names a shape instead of rejecting it as "none". The last row turns
squares by any angle, further than the world draws them (0.5 rad), as the model sometimes does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from conceptvault.world import BUILTIN_MODEL_DIR
from conceptvault.world.judge import JUDGE_DIR, JUDGE_TURNS, judge_accuracy, load_judge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=12345, help="never used in training")
    parser.add_argument("--judge", type=Path, default=JUDGE_DIR, help="a judge folder (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    judge = load_judge(args.judge)
    vae = AutoencoderKL.from_pretrained(BUILTIN_MODEL_DIR / "vae").eval()
    print(f"{'images':<24} {'shape':>7} {'colour':>7} {'style':>7} {'false accept':>13}")
    rows = (("as rendered", None, None), ("through the VAE", vae, None), ("squares at every turn", None, JUDGE_TURNS))
    for name, through, turns in rows:
        figures = judge_accuracy(judge, count=args.count, seed=args.seed, vae=through, turns=turns)
        row = " ".join(f"{100 * figures[h]:6.1f}%" for h in ("shape", "colour", "style"))
        print(f"{name:<24} {row} {100 * figures['false_accept']:12.1f}%")


if __name__ == "__main__":
    main()
