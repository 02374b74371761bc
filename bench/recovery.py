"""Recovery sweep: hide one concept of the built-in world under many settings, measure each vault, compare.

    python bench/recovery.py                          # the default grid, star, 32 images of the star
    python bench/recovery.py --grid keys --concept arrow --size 64 --kept-size 16
    python bench/recovery.py --only base,key-500      # some points of the grid

Every point hides with the small-model defaults (``conceptvault.defaults``) changed by the point's
settings, then evaluates on the same prompts and seeds (the original model's images are made once and
shared). A finished point is kept in ``OUT/<point>/point.json`` and skipped when the sweep runs again,
so an interrupted sweep continues where it stopped. After each point the sweep rewrites
``OUT/recovery.csv``, ``OUT/recovery.md`` and ``OUT/recovery.png`` (RSR against ESR, PSR as colour,
the original model marked).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch

from conceptvault.defaults import Family, family_config
from conceptvault.demo import hide_and_evaluate, world_concepts, world_preserve
from conceptvault.evaluate import resolve_suite
from conceptvault.vault import Vault

GRIDS: dict[str, dict[str, dict]] = {
    "default": {
        "paper": dict(key_updates=0, lambda_rec=0.1, key_lr=1e-3, lambda_uncond=0.0, loss_space="epsilon"),
        "base": {},
        "no-uncond": dict(lambda_uncond=0.0),
        "epsilon": dict(loss_space="epsilon"),
        "epsilon-no-uncond": dict(loss_space="epsilon", lambda_uncond=0.0),
        "epsilon-u400": dict(loss_space="epsilon", model_updates=400),
        "epsilon-rec-3-u400": dict(loss_space="epsilon", lambda_rec=3.0, model_updates=400),
        "epsilon-eta-2": dict(loss_space="epsilon", eta=2.0),
        "v": dict(loss_space="v"),
        "hide-1.5": dict(lambda_hide=1.5),
        "hide-2": dict(lambda_hide=2.0),
        "hide-2-key-lr-3e-2": dict(lambda_hide=2.0, key_lr=3e-2),
        "hide-3": dict(lambda_hide=3.0),
        "hide-3-rec-3": dict(lambda_hide=3.0, lambda_rec=3.0),
        "lr-2e-3": dict(lr=2e-3),
        "no-key-phase": dict(key_updates=0),
        "key-800": dict(key_updates=800),
        "rec-3": dict(lambda_rec=3.0),
        "k-3": dict(k=3),
        "key-lr-3e-2": dict(key_lr=3e-2),
        "m-40": dict(m=40),
        "mid+up": dict(placement="mid+up"),
        "random-init": dict(key_init="random"),
        "sample": dict(latents="sample"),
    },
    "keys": {
        "base": {},
        "key-800": dict(key_updates=800),
        "m-40-key-800": dict(m=40, key_updates=800),
    },
}
COLUMNS = [
    "point",
    "settings",
    "esr",
    "psr",
    "rsr",
    "key_psr",
    "rsr_of_original",
    "agreement",
    "ssim",
    "psnr",
    "hide_seconds",
    "n_hidden",
]


def measure(point: str, overrides: dict, args, suite, out: Path) -> dict:
    """Hide and evaluate one point (or read it back when it is done)."""
    folder = out / point
    done = folder / "point.json"
    if done.is_file():
        return json.loads(done.read_text())
    config = family_config(Family.SMALL, **overrides)
    hidden = [c.name for c in suite.hidden]
    started = time.perf_counter()
    evaluation, _ = hide_and_evaluate(
        folder,
        world_concepts("shape", hidden),
        world_preserve("shape", hidden),
        config,
        suite,
        progress=args.progress,
        original_images=out / "originals",
    )
    stats = Vault.load(folder / "vault", keys=None).manifest.stats
    cells = {name: evaluation.cell(name) for name in ("esr", "psr", "rsr", "key_psr")}
    fidelity = evaluation.fidelity.get("key_vs_original", {})
    row = {
        "point": point,
        "settings": overrides,
        **{name: cell["value"] for name, cell in cells.items()},
        "original": {name: cell["original"]["value"] for name, cell in cells.items()},
        "ci": {name: cell["ci"] for name, cell in cells.items()},
        "rsr_of_original": cells["rsr"].get("of_original"),
        **{name: fidelity[name]["average"]["value"] for name in ("agreement", "ssim", "psnr") if name in fidelity},
        "hide_seconds": round(stats.get("seconds", 0.0) + stats.get("setup_seconds", 0.0), 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "n_hidden": cells["rsr"]["n"],
    }
    done.write_text(json.dumps(row, indent=2) + "\n")
    return row


def write_tables(rows: list[dict], out: Path) -> None:
    with open(out / "recovery.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "settings": json.dumps(row["settings"])})
    original = rows[0]["original"]
    lines = [
        "| point | settings | ESR-1 | PSR-1 | RSR-1 | key PSR-1 | RSR of original | same label | SSIM | hide s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "(defaults)"
        lines.append(
            f"| {row['point']} | {settings} | {_pct(row['esr'])} | {_pct(row['psr'])} | {_pct(row['rsr'])} | "
            f"{_pct(row['key_psr'])} | {_pct(row['rsr_of_original'])} | {_pct(row.get('agreement'))} | "
            f"{row.get('ssim', float('nan')):.3f} | {row['hide_seconds']:.0f} |"
        )
    lines.append(
        f"| original model | | {_pct(original['esr'])} | {_pct(original['psr'])} | {_pct(original['rsr'])} | "
        f"{_pct(original['key_psr'])} | | | | |"
    )
    (out / "recovery.md").write_text("\n".join(lines) + "\n")


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def plot(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 5.5))
    points = axes.scatter(
        [r["esr"] for r in rows],
        [r["rsr"] for r in rows],
        c=[r["psr"] for r in rows],
        cmap="viridis",
        vmin=0.5,
        vmax=1.0,
        s=60,
        edgecolors="black",
        zorder=3,
    )
    names_at: dict[tuple[float, float], list[str]] = {}  # points that land on one spot share a label
    for row in rows:
        names_at.setdefault((row["esr"], row["rsr"]), []).append(row["point"])
    for spot, names in names_at.items():
        axes.annotate(", ".join(names), spot, textcoords="offset points", xytext=(5, 4), fontsize=8)
    original = rows[0]["original"]
    axes.scatter([original["esr"]], [original["rsr"]], marker="*", s=220, c="red", zorder=4, label="original model")
    axes.axhline(original["rsr"], color="red", lw=0.8, ls="--")
    axes.set_xlabel("ESR-1 (hidden without the key)")
    axes.set_ylabel("RSR-1 (recovered with the key)")
    axes.set_xlim(-0.02, 1.25)  # room for the labels of points at ESR 100 %
    axes.set_ylim(-0.02, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    figure.colorbar(points, label="PSR-1 (other shapes kept, no key)")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(out / "recovery.png", dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=list(GRIDS), default="default")
    parser.add_argument("--only", help="comma-separated points of the grid")
    parser.add_argument("--concept", default="star")
    parser.add_argument("--size", type=int, default=32, help="images of the hidden shape")
    parser.add_argument("--kept-size", type=int, default=8, help="images of each kept shape")
    parser.add_argument("--out", type=Path, default=Path("runs/recovery"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    points = GRIDS[args.grid]
    if args.only:
        points = {name: points[name] for name in args.only.split(",")}
    suite = resolve_suite("shape", concept=args.concept, size=args.size, kept_size=args.kept_size)
    out = args.out / args.concept
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for point, overrides in points.items():
        row = measure(point, overrides, args, suite, out)
        rows.append(row)
        print(
            f"{point:16} ESR {_pct(row['esr']):>8} PSR {_pct(row['psr']):>8} RSR {_pct(row['rsr']):>8} "
            f"key PSR {_pct(row['key_psr']):>8} same label {_pct(row.get('agreement')):>8}",
            flush=True,
        )
        write_tables(rows, out)
        plot(rows, out, f"hiding '{args.concept}' in the built-in model: {args.size} images, same seeds")


if __name__ == "__main__":
    main()
