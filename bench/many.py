"""Several shapes hidden at once on the built-in model, each with its own key, as their number grows; and a mixed set.

    python bench/many.py --record                               # k = 1, 3, 5 and 8, and the mixed set
    python bench/many.py --k 2 --no-mixed --size 4 --kept-size 2 --leak-size 2 --set model_updates=4 --out runs/q

For each k, the first k shapes of ORDER are hidden together with ``kpop``'s built-in defaults (the settings that
scale with the number of concepts scale with k), in a process of its own so that its time and peak memory are its
own. Then every hidden shape's ESR and RSR (``--size`` images each), PSR and key PSR over the kept shapes, and
cross-key leakage: each key switched on alone, on the other hidden shapes' prompts (``--leak-size`` images of each),
against the public model on the same prompts and seeds; and the first two keys on together, on both shapes. The
mixed set (two shapes, a colour and a style: the suite ``mixed``) is measured the same way, what is kept being every
other concept of those kinds. Everything stays in ``--out``; a second call continues. Prints one table and writes
``many.json`` and ``many.png``; ``--record`` writes the record ``many-concepts``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from conceptvault.attacks import Recovery
from conceptvault.backbone import BUILTIN, load_pipeline
from conceptvault.defaults import family_config
from conceptvault.demo import make_world_vault
from conceptvault.evaluate import run_suite
from conceptvault.evaluate.judges import make_judge
from conceptvault.evaluate.metrics import Rate
from conceptvault.evaluate.world_suites import MIXED_SET, world_mixed_suite, world_suite
from conceptvault.files import atomic_write_text
from conceptvault.records import builtin_record, share_figure, write_record
from conceptvault.vault import Vault
from conceptvault.world.vocabulary import SHAPES

ORDER = ("star", "heart", "arrow", "crescent", "cross", "diamond", "hexagon", "circle")


def suite_of(hidden: list[str], **options):
    """The suite hiding ``hidden``: the shapes' own, or the mixed one for concepts of several kinds."""
    shapes = all(name in SHAPES for name in hidden)
    return world_suite("shape", hidden, **options) if shapes else world_mixed_suite(hidden, **options)


def hiding_cells(vault: Vault, hidden: list[str], out: Path, size: int, kept_size: int, originals: Path) -> dict:
    """Each hidden concept's ESR and RSR, and PSR and key PSR over the kept ones."""
    suite = suite_of(hidden, size=size, kept_size=kept_size)
    evaluation = run_suite(load_pipeline(BUILTIN), vault, suite, out, original_images=originals, progress=True)
    cells = {f"{name}: {f}": evaluation.cell(f, concept=name) for name in hidden for f in ("esr", "rsr")}
    return cells | {f: evaluation.cell(f) for f in ("psr", "key_psr")}


def leakage_cells(vault: Vault, hidden: list[str], size: int) -> dict:
    """Each key alone on every other hidden shape's prompts, pooled, beside the public model on the same prompts and
    seeds; and the first two keys together on each of their two shapes."""
    suite = suite_of(hidden, size=size)
    pipe = load_pipeline(BUILTIN)
    judge = make_judge(suite, device=str(pipe.device))
    concepts = {c.name: c for c in suite.hidden}

    def rate(shape: str, keys: list[str]) -> Rate:
        recovery = Recovery(pipe, judge, concepts[shape], suite.steps, suite.guidance, f"top-{suite.top_k[0]}", 8)
        return recovery(keys=keys)

    cells = {}
    with vault.applied(pipe):
        public = {shape: rate(shape, []) for shape in hidden}
        for key in hidden if len(hidden) > 1 else []:
            others = [shape for shape in hidden if shape != key]
            cells[f"key {key} alone on the others"] = sum((rate(s, [key]) for s in others), Rate(0, 0)).as_dict()
            cells[f"key {key}: public model on the same"] = sum((public[s] for s in others), Rate(0, 0)).as_dict()
        for shape in hidden[:2] if len(hidden) > 1 else []:
            cells[f"keys {hidden[0]} and {hidden[1]} together on {shape}"] = rate(shape, hidden[:2]).as_dict()
    return cells


def measure(row: str, hidden: list[str], out: Path, args) -> dict:
    """One row (``k=3``, ``mixed``): the vault (made once), its figures and its cost; kept in
    ``out/<row>/figures.json``."""
    folder = out / row.replace("=", "")
    if (folder / "figures.json").is_file():
        return json.loads((folder / "figures.json").read_text())
    print(f"{row}: hiding {', '.join(hidden)} ...", flush=True)
    path = make_world_vault("kpop", folder / "vault", hidden, settings(args), own_process=True)
    vault = Vault.load(path, keys="all")
    cells = hiding_cells(vault, hidden, folder / "evaluation", args.size, args.kept_size, out / "original")
    cells |= leakage_cells(vault, hidden, args.leak_size)
    stats = vault.manifest.stats
    figures = {
        "hidden": hidden,
        "cells": cells,
        "seconds": round(float(stats.get("seconds", 0)) + float(stats.get("setup_seconds", 0)), 1),
        "peak_rss_mib": stats.get("peak_rss_mib"),
    }
    atomic_write_text(folder / "figures.json", json.dumps(figures, indent=1) + "\n")
    return figures


def settings(args) -> dict:
    """The ``--set name=value`` settings on top of the defaults."""
    return {name: json.loads(value) for name, value in (item.split("=", 1) for item in args.set)}


def most_leakage(result: dict) -> float | None:
    """The most any key alone brings back the other hidden concepts, over the public model on the same prompts
    and seeds (None with one concept)."""
    cells = result["cells"]
    leaks = [
        cells[f"key {s} alone on the others"]["value"] - cells[f"key {s}: public model on the same"]["value"]
        for s in result["hidden"]
        if f"key {s} alone on the others" in cells
    ]
    return max(leaks) if leaks else None


def table(results: dict[str, dict]) -> str:
    """One row per k (and the mixed set): the worst hidden concept's ESR and RSR, PSR, key PSR, the worst leakage,
    time and memory."""
    lines = [
        "| hidden | lowest ESR | lowest RSR | PSR | key PSR | most leakage (key alone, over public) | time | memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row, result in results.items():
        cells = result["cells"]
        esr = min(cells[f"{s}: esr"]["value"] for s in result["hidden"])
        rsr = min(cells[f"{s}: rsr"]["value"] for s in result["hidden"])
        leak = most_leakage(result)
        leak = "–" if leak is None else f"{100 * leak:+.1f} pts"
        lines.append(
            f"| {row} | {100 * esr:.1f} % | {100 * rsr:.1f} % | {100 * cells['psr']['value']:.1f} % | "
            f"{100 * cells['key_psr']['value']:.1f} % | {leak} | {result['seconds']:.0f} s | "
            f"{result['peak_rss_mib']} MiB |"
        )
    return "\n".join(lines)


def plot(results: dict[str, dict], path: Path) -> None:
    """Time and the figures against k (the shapes-only rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {len(r["hidden"]): r for row, r in results.items() if row.startswith("k=")}
    ks = list(results)
    figure, (rates, cost) = plt.subplots(1, 2, figsize=(10, 4))
    for label, values in (
        ("lowest ESR", [min(r["cells"][f"{s}: esr"]["value"] for s in r["hidden"]) for r in results.values()]),
        ("lowest RSR", [min(r["cells"][f"{s}: rsr"]["value"] for s in r["hidden"]) for r in results.values()]),
        ("PSR", [r["cells"]["psr"]["value"] for r in results.values()]),
        ("key PSR", [r["cells"]["key_psr"]["value"] for r in results.values()]),
        ("most leakage (points over public)", [most_leakage(r) or 0.0 for r in results.values()]),
    ):
        rates.plot(ks, [100 * v for v in values], marker="o", label=label)
    rates.set(xlabel="shapes hidden at once (k)", ylabel="%", ylim=(0, 105), xticks=ks)
    rates.legend()
    rates.grid(alpha=0.3)
    seconds = [r["seconds"] / 60 for r in results.values()]
    cost.plot(ks, seconds, marker="o", label="hiding time")
    cost.plot(ks, [seconds[0] * k / ks[0] for k in ks], linestyle="--", label="k times one concept")
    cost.set(xlabel="shapes hidden at once (k)", ylabel="minutes", xticks=ks)
    cost.legend()
    cost.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, action="append", help="shapes hidden at once (repeatable; 1, 3, 5, 8)")
    parser.add_argument(
        "--no-mixed", action="store_true", help="leave out the mixed set (" + ", ".join(MIXED_SET) + ")"
    )
    parser.add_argument("--size", type=int, default=64, help="images of each hidden shape")
    parser.add_argument("--kept-size", type=int, default=16, help="images of each kept shape")
    parser.add_argument("--leak-size", type=int, default=16, help="images of each shape under each other key")
    parser.add_argument("--set", action="append", default=[], help="a hiding setting, name=value")
    parser.add_argument("--out", type=Path, default=Path("runs") / "many")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", action="store_true", help="write the figures as a results record")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {f"k={k}": list(ORDER[:k]) for k in args.k or (1, 3, 5, 8)} | (
        {} if args.no_mixed else {"mixed": list(MIXED_SET)}
    )
    results = {row: measure(row, hidden, args.out, args) for row, hidden in rows.items()}
    print(table(results))
    atomic_write_text(args.out / "many.json", json.dumps(results, indent=1) + "\n")
    plot(results, args.out / "many.png")
    if args.record:
        figures = {}
        for row, result in results.items():
            figures |= {f"{row}: {name}": share_figure(cell) for name, cell in result["cells"].items()}
            figures[f"{row}: time"] = {"value": result["seconds"], "interval": None, "n": 1, "unit": "s"}
            figures[f"{row}: peak memory"] = {"value": result["peak_rss_mib"], "interval": None, "n": 1, "unit": "MiB"}
        write_record(
            builtin_record(
                id="many-concepts",
                title="Several concepts hidden at once on the built-in model: " + ", ".join(results),
                command="python bench/many.py " + " ".join(sys.argv[1:]),
                settings={
                    "rows": rows,
                    "leak_size": args.leak_size,
                    "hide": {
                        row: family_config("small", len(hidden), method="kpop", **settings(args)).to_dict()
                        for row, hidden in rows.items()
                    },
                },
                seeds=list(range(args.size)),
                n=args.size,
                figures=figures,
                wall_seconds=None,
                notes="Each row's time to hide is a figure of its own. The rows are kept in --out and read back by "
                "a later call, so one call's wall time does not measure them.",
            )
        )


if __name__ == "__main__":
    main()
