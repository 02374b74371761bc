"""Hide concepts of the built-in world and measure the vault: the figures of the hiding bar.

    python bench/world_hiding.py shape --concept star       # one shape (what `conceptvault demo` runs)
    python bench/world_hiding.py five-shapes-a              # five of the ten shapes at once
    python bench/world_hiding.py colour --concept red
    python bench/world_hiding.py style --concept striped

Options: --size (images per concept), --out, and any HideConfig field as --set name=value.
Prints ESR, PSR, RSR and the key holder's PSR beside the original model's rates, and writes the report.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from conceptvault.defaults import family_config
from conceptvault.demo import hide_and_evaluate
from conceptvault.evaluate import resolve_suite
from conceptvault.evaluate.world_suites import WORLD_SUITES
from conceptvault.world.profile import WORLD_CAPTIONS, world_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=list(WORLD_SUITES))
    parser.add_argument("--concept", help="the hidden concept of a single-concept suite")
    parser.add_argument("--size", type=int, default=16, help="images per concept")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--set", action="append", default=[], help="a HideConfig field, name=value")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    suite = resolve_suite(args.suite, concept=args.concept, size=args.size)
    hidden = [c.name for c in suite.hidden]
    overrides = {
        name: json.loads(value) if value[:1].isdigit() or value[:1] == "-" else value
        for name, value in (item.split("=", 1) for item in args.set)
    }
    config = family_config("small", len(hidden), **overrides)
    out = args.out or Path("runs") / f"hiding-{suite.name}"
    concepts, preserve = world_prompts(hidden, WORLD_CAPTIONS["kpop"])  # as the CLI does
    evaluation, files = hide_and_evaluate(out, concepts, preserve, config, suite)
    print(json.dumps({name: evaluation.cell(name)["value"] for name in ("esr", "psr", "rsr", "key_psr")}))


if __name__ == "__main__":
    main()
