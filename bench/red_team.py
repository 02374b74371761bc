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
from conceptvault.backbone import BUILTIN, load_pipeline
from conceptvault.defaults import Family, esd_family_config, family_config, seal_family_config
from conceptvault.demo import world_concepts, world_preserve
from conceptvault.esd import erase_esd
from conceptvault.evaluate import resolve_suite
from conceptvault.hide import hide
from conceptvault.seal import seal
from conceptvault.vault import save_vault


def make_vaults(out: Path, concept: str, hardened_every: int, names: list[str]) -> dict[str, Path]:
    concepts, preserve = world_concepts("shape", [concept]), world_preserve("shape", [concept])
    recipes = {
        "kpop": lambda pipe: hide(pipe, concepts, family_config(Family.SMALL), preserve=preserve),
        "hardened": lambda pipe: hide(
            pipe, concepts, family_config(Family.SMALL, adversary_every=hardened_every), preserve=preserve
        ),
        "sealed": lambda pipe: seal(pipe, concepts, seal_family_config(Family.SMALL), preserve=preserve),
        "esd-x": lambda pipe: erase_esd(pipe, concepts, esd_family_config(Family.SMALL)),
    }
    paths = {}
    for name in names:
        make = recipes[name]
        paths[name] = out / "vaults" / name
        if not paths[name].exists():
            pipe = load_pipeline(BUILTIN)
            save_vault(paths[name], pipe, make(pipe))
    return paths


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
    vaults = make_vaults(args.out, args.concept, args.hardened_every, ["kpop", *names])
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
