"""The fine-tuning attacker's best setting on a vault's public model and on the controls, as a results record.

    python bench/sweep.py VAULT --control builtin-without-star --record      # the full sweep: hours on 2 cores
    python bench/sweep.py runs/forget/perturb-xattn-0.5/perturb-xattn-0.5.vault --control builtin-without-star \
        --steps 300 --lr 1e-4,1e-3 --images 64 --seeds 0 --out runs/sweep --record

The same sweep as ``conceptvault attack VAULT --sweep`` (every learning rate x trained weights x picture count x
seed, recovery measured along the way, runs kept in ``--out`` so a second call continues), on a world concept of
the built-in model. The record ``attack-sweep-<vault>`` has a row per attacked model and a column per setting
(steps to 50 % recovery, the mean over seeds with its interval), and each model's strongest setting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from conceptvault.attack_campaign import Campaign
from conceptvault.attack_sweep import SweepPlan, run_sweep, sweep_figures
from conceptvault.cli.common import parse_seeds
from conceptvault.evaluate.world_suites import world_suite
from conceptvault.files import slug
from conceptvault.records import builtin_record, write_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vault", type=Path)
    parser.add_argument("--concept", default="star", help="the hidden shape")
    parser.add_argument("--control", action="append", default=[], help="another attacked model (repeatable)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", default="1e-5,1e-4,1e-3")
    parser.add_argument("--weights", default="xattn,lora,unet")
    parser.add_argument("--images", default="64,256")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--size", type=int, default=32, help="images of the concept per recovery measurement")
    parser.add_argument("--out", type=Path, default=Path("runs") / "sweep")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", action="store_true", help="write the figures as a results record")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    plan = SweepPlan(
        lrs=tuple(float(x) for x in args.lr.split(",")),
        weights=tuple(args.weights.split(",")),
        images=tuple(int(x) for x in args.images.split(",")),
        seeds=tuple(parse_seeds(args.seeds)),
        steps=args.steps,
    )
    suite = world_suite("shape", [args.concept], size=args.size)
    campaign = Campaign.prepare(args.vault, suite, steps=args.steps, images=max(plan.images), controls=args.control)
    campaign.targets[0].name = args.vault.stem  # the campaign calls the vault's public model "public"
    files = run_sweep(campaign, plan, args.out)
    print(files["md"].read_text())
    if not args.record:
        return
    sweep = json.loads(files["json"].read_text())
    rows = [t.name for t in campaign.targets]
    write_record(
        builtin_record(
            id="attack-sweep-" + slug(args.vault.stem),
            title=f"The fine-tuning attacker's best setting on {args.vault.stem} and its controls",
            command="python bench/sweep.py " + " ".join(sys.argv[1:]),
            settings={
                "leaderboard": {"rows": rows, "hidden": [args.concept], "attacks": ["finetune"]},
                "best": {model: s["setting"] for model, s in sweep["best"].items()},
                "plan": sweep["plan"] | {"size": args.size},
            },
            seeds=list(plan.seeds),
            n=len(plan.seeds),
            figures=sweep_figures(sweep),
            wall_seconds=time.perf_counter() - started,
        )
    )


if __name__ == "__main__":
    main()
