"""Hiding beside erasure on the built-in world: ESD-x, ESD-u, UCE and hiding, one suite, one comparison.

    python bench/baselines.py shape --concept star --size 64      # one shape
    python bench/baselines.py five-shapes-a --size 64             # five of the ten shapes at once
    python bench/baselines.py five-shapes-b --size 64
    python bench/baselines.py shape --concept star --methods kpop,sealed,esd-x,esd-u,uce   # sealed too

Makes each vault with the built-in model's default settings for its method (or reuses it from an
earlier run), then runs `conceptvault compare` on them: OUT/comparison.{md,json,png,html}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from conceptvault.backbone import BUILTIN, load_pipeline
from conceptvault.demo import make_world_vault
from conceptvault.evaluate import resolve_suite
from conceptvault.evaluate.compare import compare, write_comparison
from conceptvault.vault import Vault


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
    vaults = {
        m: Vault.load(make_world_vault(m, out / "vaults" / m, hidden), keys="all") for m in args.methods.split(",")
    }
    comparison = compare(load_pipeline(BUILTIN), vaults, suite, out)
    files = write_comparison(comparison)
    print(files["md"].read_text())


if __name__ == "__main__":
    main()
