"""One leaderboard on the built-in model: every method (hiding, sealing, each eraser) on one suite, with the same
prompts, seeds, judge and attacks, beside the original model and, given one, a model that never learned the concept.

    python bench/leaderboard.py shape --concept star --size 64 --record            # every method, every attack
    python bench/leaderboard.py five-shapes-a --size 64 --record                   # five shapes at once (no attacks)
    python bench/leaderboard.py shape --concept star --control builtin-without-star --record
    python bench/leaderboard.py shape --concept star --methods kpop,esd-x --attacks finetune --size 8 --out runs/lb \
        --attack-steps 4 --set kpop:model_updates=4 --set esd-x:iterations=4

Each vault is made once with the built-in model's defaults for its method, in a process of its own so that its
peak memory is its own; then `compare` gives ESR, PSR, RSR and key PSR with their intervals, and (for a one-concept
suite) each attack runs on every row's public model with the same pictures and seeds. Every vault, evaluation and
attack result stays in ``--out``, so a second call continues where the first stopped. ``--record`` writes the
figures as the record ``leaderboard-<suite>``, which the results page renders as one table and one chart.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from conceptvault.attack_campaign import Campaign
from conceptvault.attack_report import AttackRun
from conceptvault.attack_report import write as write_attack_report
from conceptvault.attacks import Attack, AttackResult
from conceptvault.backbone import BUILTIN, load_pipeline
from conceptvault.demo import make_world_vault
from conceptvault.evaluate import resolve_suite
from conceptvault.evaluate.compare import FIGURES, LABELS, compare, cost_figures, write_comparison
from conceptvault.evaluate.world_suites import world_suite
from conceptvault.files import atomic_write_text
from conceptvault.records import builtin_record, share_figure, steps_to_half_figure, write_record
from conceptvault.registry import choices
from conceptvault.vault import Vault

ATTACKS = tuple(attack.value for attack in Attack)  # every attack of `conceptvault attack`
ORIGINAL_ROW, NEVER_TRAINED_ROW = "original model", "never trained"


def default_methods() -> list[str]:
    """Every registered method or variant, ``kpop`` first and ``hardened`` (kpop with its attacker key) beside
    it."""
    names = choices()
    return ["kpop", "hardened", *(n for n in names if n != "kpop")]


def make_vaults(methods: list[str], folder: Path, hidden: list[str], settings: dict) -> dict[str, Path]:
    """Each method's vault, made in a process of its own (its peak memory is then its own) unless it exists."""
    paths = {}
    for method in methods:
        if not (folder / method).exists():
            print(f"making the {method} vault ...", flush=True)
        paths[method] = make_world_vault(method, folder / method, hidden, settings.get(method), own_process=True)
    return paths


def hiding_figures(comparison) -> dict[str, dict]:
    """Each row's ESR, PSR, RSR and key PSR (as records hold figures), its time and peak memory."""
    first = comparison.entries[0].result
    figures = {
        f"{ORIGINAL_ROW}: {LABELS[f]}": share_figure(first.figures[f]["top-1"]["average"]["original"])
        for f in ("esr", "psr", "rsr")
        if f in first.figures
    }
    for entry in comparison.entries:
        for f in FIGURES:
            cell = entry.result.figures.get(f, {}).get(entry.result.measures[0], {}).get("average")
            if cell and cell.get("value") is not None:
                figures[f"{entry.name}: {LABELS[f]}"] = share_figure(cell)
        figures |= {f"{entry.name}: {name}": figure for name, figure in cost_figures(entry).items()}
    return figures


def attack_figures(
    vaults: dict[str, Path], control: str | None, attacks: list[str], out: Path, concept: str, steps: int, size: int
) -> dict[str, dict]:
    """Every attack on every row's public model, with the same pictures and seeds; each result is kept in
    ``out`` as it ends and read back on a second call."""
    first, *others = vaults
    rows = [*vaults, ORIGINAL_ROW] + ([NEVER_TRAINED_ROW] if control else [])
    suite = world_suite("shape", [concept], size=size)
    controls = [*(str(vaults[name]) for name in others), "original", *([str(control)] if control else [])]
    campaign = Campaign.prepare(vaults[first], suite, steps=steps, controls=controls)
    figures, results = {}, []
    for row, target in zip(rows, campaign.targets, strict=True):
        for attack in attacks:
            path = out / row.replace(" ", "-") / f"{attack}.json"
            if not path.is_file():
                print(f"{attack} on {row} ...", flush=True)
                result = campaign.attack(target, Attack(attack))
                result.model = row
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, json.dumps(result.to_dict(), indent=1) + "\n")
            result = json.loads(path.read_text())
            results.append(AttackResult.from_dict(result))
            figures[f"{row}: {attack}"] = share_figure(result["curve"][-1]["recovery"])
            if Attack(attack).trains:
                figures[f"{row}: {attack}, steps to 50 %"] = steps_to_half_figure(result["steps_to_50"], steps)
    trained = [r for r in results if r.model == ORIGINAL_ROW and Attack(r.attack).trains]
    if trained:  # every row's curves in one report (attacks.md, attacks.png); the original's step 0 is its rate
        write_attack_report(AttackRun(concept, suite.name, trained[0].curve[0]["recovery"], None, results), out)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=["shape", "five-shapes-a", "five-shapes-b"])
    parser.add_argument("--concept", help="the hidden shape of the one-shape suite")
    parser.add_argument("--size", type=int, default=64, help="images of each hidden concept in the evaluation")
    parser.add_argument("--kept-size", type=int, default=16, help="images of each kept concept in the evaluation")
    parser.add_argument("--methods", help="comma-separated; default every registered method and `hardened`")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated, or 'none'")
    parser.add_argument("--attack-steps", type=int, default=300)
    parser.add_argument("--attack-size", type=int, default=32, help="images of the concept per recovery measure")
    parser.add_argument("--control", help="a model that never learned the concept: a name or a folder")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="a method's setting, method:name=value")
    parser.add_argument("--record", action="store_true", help="write the figures as a results record")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    settings = {}
    for item in args.set:
        method, assignment = item.split(":", 1)
        name, value = assignment.split("=", 1)
        settings.setdefault(method, {})[name] = json.loads(value)
    suite = resolve_suite(args.suite, concept=args.concept, size=args.size, kept_size=args.kept_size)
    hidden = [c.name for c in suite.hidden]
    out = args.out or Path("runs") / f"leaderboard-{suite.name}"
    methods = args.methods.split(",") if args.methods else default_methods()
    paths = make_vaults(methods, out / "vaults", hidden, settings)
    comparison = compare(load_pipeline(BUILTIN), {m: Vault.load(p, keys="all") for m, p in paths.items()}, suite, out)
    write_comparison(comparison)
    figures = hiding_figures(comparison)
    attacks = [] if args.attacks == "none" or len(hidden) != 1 else args.attacks.split(",")
    if attacks:
        figures |= attack_figures(
            paths, args.control, attacks, out / "attacks", hidden[0], args.attack_steps, args.attack_size
        )
    for name, figure in figures.items():
        print(f"{name}: {figure['value']:g} {figure['unit']}")
    if args.record:
        rows = [ORIGINAL_ROW, *([NEVER_TRAINED_ROW] if args.control and attacks else []), *methods]
        write_record(
            builtin_record(
                id=f"leaderboard-{suite.name}",
                title=f"Every method on one suite ({suite.name}): hiding, sealing and erasure beside each attack",
                command="python bench/leaderboard.py " + " ".join(sys.argv[1:]),
                settings={
                    "leaderboard": {
                        "rows": rows,
                        "hidden": hidden,
                        "attacks": attacks,
                        "original": ORIGINAL_ROW,
                        "never_trained": NEVER_TRAINED_ROW if args.control and attacks else None,
                    },
                    "size": args.size,
                    "kept_size": args.kept_size,
                    "attack_steps": args.attack_steps,
                    "attack_size": args.attack_size,
                    "vault_settings": {m: Vault.load(p, keys=None).manifest.config for m, p in paths.items()},
                },
                seeds=suite.hidden[0].seeds,
                n=args.size,
                figures=figures,
                wall_seconds=time.perf_counter() - started,
            )
        )


if __name__ == "__main__":
    main()
