"""Red team on the built-in world: every attack on hidden 'star', beside its controls.

    python bench/red_team.py --never-trained runs/world-without-star/model

Makes (or reuses) four vaults of the star in the built-in model: the method's paper mode (kpop, the
defaults), hardened hiding (kpop with an attacker key re-learned during hiding), sealed hiding, and ESD-x
erasure; then runs the prompt, random-key, key-inversion, token-inversion and finetune attacks on each
public model, on the original model and on a model that never learned the star (trained by `conceptvault
world train --without star`), with the same budget (default 300 steps on 64 rendered pictures).
Writes OUT/attacks.{md,json,png}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from conceptvault.attack_campaign import Campaign
from conceptvault.attacks import Attack
from conceptvault.demo import make_world_vault
from conceptvault.evaluate import resolve_suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", default="star")
    parser.add_argument("--never-trained", help="the model folder of `world train --without CONCEPT`")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=32, help="images per recovery measurement")
    parser.add_argument("--attacks", default=",".join(a.value for a in Attack))
    parser.add_argument("--hardened-every", type=int, default=2)
    parser.add_argument("--controls", default="hardened,sealed,esd-x,original", help="beside the attacked kpop vault")
    parser.add_argument("--out", type=Path, default=Path("runs/red-team"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wanted = args.controls.split(",")
    names = [c for c in wanted if c != "original"]
    vaults = {
        name: make_world_vault(
            name,
            args.out / "vaults" / name,
            [args.concept],
            {"adversary_every": args.hardened_every} if name == "hardened" else None,
        )
        for name in ["kpop", *names]
    }
    controls = [str(vaults[name]) for name in names] + (["original"] if "original" in wanted else [])
    if args.never_trained:
        controls.append(args.never_trained)
    suite = resolve_suite("shape", concept=args.concept, size=args.size)
    campaign = Campaign.prepare(vaults["kpop"], suite, steps=args.steps, images=args.images, controls=controls)
    run = campaign.run([Attack(a) for a in args.attacks.split(",")])
    files = campaign.write(run, args.out)
    print(files["md"].read_text())


if __name__ == "__main__":
    main()
