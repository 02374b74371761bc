"""Hiding beside erasure on the built-in world: ESD-x, ESD-u, UCE and hiding, one suite, one comparison.

    python bench/baselines.py shape --concept star --size 64      # one shape
    python bench/baselines.py five-shapes-a --size 64             # five of the ten shapes at once
    python bench/baselines.py five-shapes-b --size 64

Makes each vault with the built-in model's default settings for its method (or reuses it from an
earlier run), then runs `conceptvault compare` on them: OUT/comparison.{md,json,png,html}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from conceptvault.backbone import BUILTIN, load_pipeline
from conceptvault.defaults import Family, esd_family_config, family_config
from conceptvault.demo import world_concepts, world_preserve
from conceptvault.esd import erase_esd
from conceptvault.evaluate import resolve_suite
from conceptvault.evaluate.compare import compare, write_comparison
from conceptvault.hide import hide
from conceptvault.uce import UceConfig, erase_uce
from conceptvault.vault import Vault, save_vault


def make(method: str, folder: Path, concepts, preserve) -> Vault:
    if not folder.exists():
        pipe = load_pipeline(BUILTIN)
        if method == "kpop":
            result = hide(pipe, concepts, family_config(Family.SMALL), preserve=preserve)
        elif method == "uce":
            result = erase_uce(pipe, concepts, UceConfig(), preserve=preserve)
        else:
            train = "xattn" if method == "esd-x" else "noxattn"
            result = erase_esd(pipe, concepts, esd_family_config(Family.SMALL, train=train))
        save_vault(folder, pipe, result)
    return Vault.load(folder, keys="all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=["shape", "five-shapes-a", "five-shapes-b"])
    parser.add_argument("--concept", help="the hidden shape of the one-shape suite")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--methods", default="kpop,esd-x,esd-u,uce")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    suite = resolve_suite(args.suite, concept=args.concept, size=args.size)
    hidden = [c.name for c in suite.hidden]
    out = args.out or Path("runs") / f"baselines-{suite.name}"
    concepts, preserve = world_concepts("shape", hidden), world_preserve("shape", hidden)
    vaults = {m: make(m, out / "vaults" / m, concepts, preserve) for m in args.methods.split(",")}
    comparison = compare(load_pipeline(BUILTIN), vaults, suite, out)
    files = write_comparison(comparison)
    print(files["md"].read_text())


if __name__ == "__main__":
    main()
