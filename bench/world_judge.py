"""The shipped judge on held-out data: accuracy per head on 1,000 fresh renders, false accepts on 1,000 negatives.

    python bench/world_judge.py                 # renders as drawn, through the model's VAE, squares turned
    python bench/world_judge.py --seed 777      # another held-out draw
    python bench/world_judge.py --judge runs/judge/judge    # another judge
    python bench/world_judge.py --record        # the shipped judge's figures as the record judge-accuracy

Negatives are scribbles, strokes, blobs, fragments, noise and overlapping shapes (``world.negatives``); a
false accept is a negative the judge names a shape instead of rejecting it as "none". The last row turns
squares by any angle, further than the world draws them (0.5 rad), as the model sometimes does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from conceptvault.evaluate.metrics import Rate
from conceptvault.records import builtin_model_fingerprint, folder_fingerprint, make_record, write_record
from conceptvault.world import BUILTIN_MODEL_DIR
from conceptvault.world.judge import JUDGE_DIR, JUDGE_TURNS, judge_accuracy, load_judge

ROWS = {"as rendered": "renders as drawn", "through the VAE": "through the model's VAE"}
HEADS = {"shape": "shape", "colour": "colour", "style": "style", "false_accept": "false accept of negatives"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=12345, help="never used in training")
    parser.add_argument("--judge", type=Path, default=JUDGE_DIR, help="a judge folder (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", action="store_true", help="write the figures as the record judge-accuracy")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started, figures = time.perf_counter(), {}
    judge = load_judge(args.judge)
    vae = AutoencoderKL.from_pretrained(BUILTIN_MODEL_DIR / "vae").eval()
    print(f"{'images':<24} {'shape':>7} {'colour':>7} {'style':>7} {'false accept':>13}")
    rows = (("as rendered", None, None), ("through the VAE", vae, None), ("squares at every turn", None, JUDGE_TURNS))
    for name, through, turns in rows:
        shares = judge_accuracy(judge, count=args.count, seed=args.seed, vae=through, turns=turns)
        row = " ".join(f"{100 * shares[h]:6.1f}%" for h in ("shape", "colour", "style"))
        print(f"{name:<24} {row} {100 * shares['false_accept']:12.1f}%")
        for head, label in HEADS.items():
            rate = Rate(round(shares[head] * args.count), args.count)
            figures[f"{ROWS.get(name, name)}: {label}"] = {
                "value": rate.value,
                "interval": list(rate.ci),
                "n": args.count,
                "unit": "share",
            }
    if args.record:
        write_record(
            make_record(
                id="judge-accuracy",
                title="The world judge on held-out renders and negatives",
                command="python bench/world_judge.py " + " ".join(sys.argv[1:]),
                settings={"count": args.count, "seed": args.seed},
                seeds=[args.seed, args.seed + 1],
                n=2 * args.count,
                figures=figures,
                wall_seconds=time.perf_counter() - started,
                model_fingerprint=builtin_model_fingerprint(),
                judge_fingerprint=folder_fingerprint(args.judge),
                notes="Renders and negatives drawn with the seed and the seed + 1; accuracy per head, and the share "
                "of negatives the judge names a shape.",
            )
        )


if __name__ == "__main__":
    main()
