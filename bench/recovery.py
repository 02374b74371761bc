"""Recovery sweep: hide one concept of the built-in world under many settings, measure each vault, compare.

    python bench/recovery.py                          # the default grid, star, 64 images of the star
    python bench/recovery.py --grid keys --concept arrow --kept-size 16
    python bench/recovery.py --only base,key-300      # some points of the grid
    python bench/recovery.py --suite colour --concept red --only base
    python bench/recovery.py --only base,c2 --seeds 0,1,2  # each point hidden with three seeds, and their mean

Every point hides with the small-model defaults (``conceptvault.defaults``, as they are when it runs: the
README names the defaults each table was measured with) changed by the point's settings (``captions``: how
many world captions are trained on beside the names; the CLI's by default), then evaluates on the same
prompts and seeds (the original model's images are made once and shared). A
finished point is kept in ``OUT/<point>/point.json`` and skipped when the sweep runs again, so an
interrupted sweep continues where it stopped. After each point the sweep rewrites ``OUT/recovery.csv``,
``OUT/recovery.md`` and ``OUT/recovery.png`` (RSR against ESR with their 95 % intervals, PSR as colour,
the original model marked), and each point's ``OUT/<point>/hidden.png`` (the first ten images of the hidden
concept from the original model, the public model and the key holder, with the judge's labels). With
``--seeds`` each point is hidden once per seed (seed 0 in ``OUT/<point>``, seed s in ``OUT/<point>-seed-s``)
and the Markdown table adds each point's mean over its seeds: one hiding seed moves ESR and RSR by several
points on the built-in model, more than one image does.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch
from PIL import Image

from conceptvault.defaults import Family, family_config
from conceptvault.demo import hide_and_evaluate
from conceptvault.evaluate import resolve_suite
from conceptvault.evaluate.world_suites import WORLD_SUITE_KINDS
from conceptvault.generate import image_grid
from conceptvault.vault import Vault
from conceptvault.world.profile import WORLD_CAPTIONS, with_stand_in, world_prompts

NAMES_ONLY = {"concept": 0, "preserve": 0}
# The built-in family's defaults before world captions and the larger key; points named "prev-..." change these.
PREVIOUS = dict(captions=NAMES_ONLY, key_lr=1e-2, m=10, key_updates=300)


def _previous(**changes) -> dict:
    return {**PREVIOUS, **changes}


GRIDS: dict[str, dict[str, dict]] = {
    "default": {
        "base": {},
        "previous": PREVIOUS,
        "key-300": dict(key_updates=300),
        "key-300-rec-2": dict(key_updates=300, lambda_rec=2.0),
        "captions-24-8-key-300": dict(captions=WORLD_CAPTIONS["sealed"], key_updates=300),
        "names-only": dict(captions=NAMES_ONLY),
        "key-1200": dict(key_updates=1200),
        "updates-300": dict(model_updates=300),
        "updates-per-five": dict(model_updates=200, key_updates=600),  # five concepts sharing one concept's updates
        "captions-36-4": dict(captions={"concept": 36, "preserve": 4}),
        "captions-36-4-key-1200": dict(captions={"concept": 36, "preserve": 4}, key_updates=1200),
        "c2": dict(cache_trajectories=2),
        "v": dict(loss_space="v"),
        "rec-2": dict(lambda_rec=2.0),
        "rec-3": dict(lambda_rec=3.0),
        "rec-3-key-1200": dict(lambda_rec=3.0, key_updates=1200),
        "rank-8": dict(key_rank=8),  # the key also changes each reached layer's projections, rank 8
        "tokens-only": dict(key_rank=0),  # the defaults before rank-8 keys: the key's tokens alone
        "rank-8-pres-2": dict(key_rank=8, lambda_pres=2.0),
        "rank-8-pres-4": dict(key_rank=8, lambda_pres=4.0),
        "rank-8-updates-400": dict(key_rank=8, model_updates=400),
        "rank-8-updates-600": dict(key_rank=8, model_updates=600),
        "rank-8-captions-36-4": dict(key_rank=8, captions={"concept": 36, "preserve": 4}),
        "rank-8-hide-2": dict(key_rank=8, lambda_hide=2.0),
        "rank-8-hide-2-updates-400": dict(key_rank=8, lambda_hide=2.0, model_updates=400),
        "rank-8-key-300": dict(key_rank=8, key_updates=300),  # cheaper hiding: half the key-only phase
        "rank-8-c2-key-300": dict(key_rank=8, cache_trajectories=2, key_updates=300),  # and half the cache
        "c4-key-600": dict(cache_trajectories=4, key_updates=600),  # the defaults before rank-8-c2-key-300
        "stand-in-green": dict(stand_in="green"),  # each caption hidden toward itself with green in red's place
        "stand-in-blue": dict(stand_in="blue"),
        "stand-in-solid": dict(stand_in="solid"),  # for the stripes
        "stand-in-green-captions-12-12": dict(stand_in="green", captions={"concept": 12, "preserve": 12}),
        "stand-in-green-pres-2": dict(stand_in="green", lambda_pres=2.0),
        "stand-in-green-key-900": dict(stand_in="green", key_updates=900),  # the key-only phase three times as long
        "stand-in-green-captions-12-12-key-900": dict(
            stand_in="green", captions={"concept": 12, "preserve": 12}, key_updates=900
        ),
        "k-3": dict(k=3),
        "mid+up": dict(placement="mid+up"),
        "random-init": dict(key_init="random"),
        "sample": dict(latents="sample"),
        "paper": _previous(key_updates=0, lambda_rec=0.1, key_lr=1e-3, lambda_uncond=0.0, loss_space="epsilon"),
        "prev-no-uncond": _previous(lambda_uncond=0.0),
        "prev-epsilon": _previous(loss_space="epsilon"),
        "prev-epsilon-no-uncond": _previous(loss_space="epsilon", lambda_uncond=0.0),
        "prev-epsilon-u400": _previous(loss_space="epsilon", model_updates=400),
        "prev-epsilon-rec-3-u400": _previous(loss_space="epsilon", lambda_rec=3.0, model_updates=400),
        "prev-epsilon-eta-2": _previous(loss_space="epsilon", eta=2.0),
        "prev-hide-1.5": _previous(lambda_hide=1.5),
        "prev-hide-1.5-key-lr-3e-2": _previous(lambda_hide=1.5, key_lr=3e-2),
        "prev-hide-1.5-key-lr-3e-2-m-40": _previous(lambda_hide=1.5, key_lr=3e-2, m=40),
        "prev-hide-2": _previous(lambda_hide=2.0),
        "prev-hide-2-key-lr-3e-2": _previous(lambda_hide=2.0, key_lr=3e-2),
        "prev-hide-2-key-lr-1e-1": _previous(lambda_hide=2.0, key_lr=1e-1),
        "prev-hide-2-key-lr-3e-2-key-800": _previous(lambda_hide=2.0, key_lr=3e-2, key_updates=800),
        "prev-hide-2-key-lr-3e-2-m-40": _previous(lambda_hide=2.0, key_lr=3e-2, m=40),
        "prev-hide-2-key-lr-3e-2-m-80": _previous(lambda_hide=2.0, key_lr=3e-2, m=80),
        "prev-hide-3": _previous(lambda_hide=3.0),
        "prev-hide-3-rec-3": _previous(lambda_hide=3.0, lambda_rec=3.0),
        "prev-captions-24-8": _previous(captions=WORLD_CAPTIONS["sealed"]),
        "prev-captions-24-8-c2": _previous(captions=WORLD_CAPTIONS["sealed"], cache_trajectories=2),
        "prev-lr-2e-3": _previous(lr=2e-3),
        "prev-no-key-phase": _previous(key_updates=0),
        "prev-key-800": _previous(key_updates=800),
    },
    "keys": {
        "base": {},
        "key-300": dict(key_updates=300),
        "key-1000": dict(key_updates=1000),
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
    "never_learned_esr",
]


def measure(point: str, overrides: dict, args, suite, out: Path) -> dict:
    """Hide and evaluate one point (or read it back when it is done)."""
    folder = out / point
    done = folder / "point.json"
    if done.is_file():
        return json.loads(done.read_text())
    settings = dict(overrides)
    captions = settings.pop("captions", WORLD_CAPTIONS["kpop"])  # world captions beside the names, as the CLI
    stand_in = settings.pop("stand_in", None)  # as `--anchor red=green` on the command line
    hidden = [c.name for c in suite.hidden]
    config = family_config(Family.SMALL, len(hidden), **settings)
    concepts, preserve = world_prompts(hidden, captions)
    if stand_in:
        concepts = [with_stand_in(c, args.kind, stand_in) for c in concepts]
    started = time.perf_counter()
    evaluation, _ = hide_and_evaluate(
        folder,
        concepts,
        preserve,
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
    if "never_learned_esr" in evaluation.figures:  # colours and styles: the original model, words removed
        row["never_learned_esr"] = evaluation.cell("never_learned_esr")["value"]
    done.write_text(json.dumps(row, indent=2) + "\n")
    return row


_ROW_NAMES = {"unnamed": "words removed"}


def hidden_picture(folder: Path, count: int = 10) -> Path:
    """``folder/hidden.png``: the first ``count`` images of the hidden concept, a row each for the original
    model, the original model asked without the concept's words (colours and styles), the public model and
    the key holder (same seeds), the judge's label under each."""
    picture = folder / "hidden.png"
    if not picture.is_file():
        records = json.loads((folder / "evaluation" / "images.json").read_text())
        rows = [
            [r for r in records if r["group"] == "hidden" and r["variant"] == variant][:count]
            for variant in ("original", "unnamed", "public", "key")
        ]
        rows = [row for row in rows if row]
        cells = [r for row in rows for r in row]
        images = [Image.open(_image_path(folder / "evaluation", r["path"])) for r in cells]
        labels = [f"{_ROW_NAMES.get(r['variant'], r['variant'])}: {r['label']}" for r in cells]
        image_grid(images, len(rows), count, labels).save(picture)
    return picture


def _image_path(evaluation: Path, path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else evaluation / path


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
    for group, members in _groups(rows).items():
        if len(members) > 1:
            mean = {name: _mean(members, name) for name in MEANS}
            lines.append(
                f"| **{group}: mean of {len(members)} seeds** | | {_pct(mean['esr'])} | {_pct(mean['psr'])} | "
                f"{_pct(mean['rsr'])} | {_pct(mean['key_psr'])} | {_pct(mean['rsr_of_original'])} | "
                f"{_pct(mean['agreement'])} | {mean['ssim']:.3f} | {mean['hide_seconds']:.0f} |"
            )
    lines.append(
        f"| original model | | {_pct(original['esr'])} | {_pct(original['psr'])} | {_pct(original['rsr'])} | "
        f"{_pct(original['key_psr'])} | | | | |"
    )
    if "never_learned_esr" in rows[0]:
        lines.append(
            f"| original model, words removed (never learned) | | {_pct(rows[0]['never_learned_esr'])} | | | | | | | |"
        )
    (out / "recovery.md").write_text("\n".join(lines) + "\n")


MEANS = ("esr", "psr", "rsr", "key_psr", "rsr_of_original", "agreement", "ssim", "hide_seconds")


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    """The rows of each grid point, one per hiding seed."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    return groups


def _mean(rows: list[dict], name: str) -> float:
    return sum(row.get(name, float("nan")) for row in rows) / len(rows)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def plot(rows: list[dict], out: Path, title: str) -> None:
    """RSR against ESR with their 95 % intervals, PSR as colour; points are numbered, the names listed beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (axes, names) = plt.subplots(1, 2, figsize=(11, 5.5), gridspec_kw={"width_ratios": [3, 1.3]})
    esr, rsr = [r["esr"] for r in rows], [r["rsr"] for r in rows]
    axes.errorbar(
        esr,
        rsr,
        xerr=_interval(rows, "esr"),
        yerr=_interval(rows, "rsr"),
        fmt="none",
        ecolor="grey",
        elinewidth=0.6,
        alpha=0.6,
        zorder=2,
    )
    points = axes.scatter(
        esr, rsr, c=[r["psr"] for r in rows], cmap="viridis", vmin=0.5, vmax=1.0, s=60, edgecolors="black", zorder=3
    )
    numbers_at: dict[tuple[float, float], list[str]] = {}  # points that land on one spot share a label
    for number, row in enumerate(rows, 1):
        numbers_at.setdefault((row["esr"], row["rsr"]), []).append(str(number))
    for spot, numbers in numbers_at.items():
        axes.annotate(",".join(numbers), spot, textcoords="offset points", xytext=(5, 4), fontsize=8)
    original = rows[0]["original"]
    axes.axhline(original["rsr"], color="red", lw=0.8, ls="--", label=f"original model's RSR ({original['rsr']:.0%})")
    axes.axvline(0.95, color="grey", lw=0.8, ls=":", label="the aim: ESR 95 %")
    if "never_learned_esr" in rows[0]:
        never = rows[0]["never_learned_esr"]
        axes.axvline(
            never, color="orange", lw=0.8, ls="--", label=f"a model that never learned the words ({never:.0%})"
        )
    axes.set_xlabel(f"ESR-1 (hidden without the key; the original model: {original['esr']:.0%})")
    axes.set_ylabel("RSR-1 (recovered with the key)")
    axes.set_xlim(max(0.0, min(esr) - 0.1), 1.02)
    axes.set_ylim(max(0.0, min(rsr) - 0.1), 1.02)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize=8)
    figure.colorbar(points, ax=axes, label="PSR-1 (kept concepts, no key)")
    axes.set_title(title, fontsize=10)
    names.axis("off")
    listing = "\n".join(f"{number}  {row['point']}" for number, row in enumerate(rows, 1))
    names.text(0, 1, listing, va="top", family="monospace", fontsize=8, transform=names.transAxes)
    figure.tight_layout()
    figure.savefig(out / "recovery.png", dpi=120)
    plt.close(figure)


def _interval(rows: list[dict], name: str) -> list[list[float]]:
    """Distances from each point down and up to its 95 % interval, as matplotlib's error bars take them."""
    return [[r[name] - r["ci"][name][0] for r in rows], [r["ci"][name][1] - r[name] for r in rows]]


def seed_list(text: str) -> list[int]:
    return [int(seed) for seed in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=list(GRIDS), default="default")
    parser.add_argument("--only", help="comma-separated points of the grid")
    parser.add_argument(
        "--suite",
        choices=list(WORLD_SUITE_KINDS),
        default="shape",
        help="what kind of concept is hidden (five-shapes-*: five shapes at once, --concept unused)",
    )
    parser.add_argument("--concept", default="star", help="the shape, colour or style hidden")
    parser.add_argument("--size", type=int, default=64, help="images of the hidden shape")
    parser.add_argument("--kept-size", type=int, default=8, help="images of each kept shape")
    parser.add_argument("--out", type=Path, default=Path("runs/recovery"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--seeds", default="0", type=seed_list, help="hiding seeds, as 0,1,2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    points = GRIDS[args.grid]
    if args.only:
        points = {name: points[name] for name in args.only.split(",")}
    five_shapes = args.suite.startswith("five-shapes")
    args.kind = WORLD_SUITE_KINDS[args.suite]
    concept = None if five_shapes else args.concept
    suite = resolve_suite(args.suite, concept=concept, size=args.size, kept_size=args.kept_size)
    name = args.suite if five_shapes else args.concept
    out = args.out / name
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for point, overrides in points.items():
        for seed in args.seeds:
            name_seed = point if seed == 0 else f"{point}-seed-{seed}"
            settings = overrides if seed == 0 else {**overrides, "seed": seed}
            row = {**measure(name_seed, settings, args, suite, out), "group": point}
            hidden_picture(out / name_seed)
            rows.append(row)
            print(
                f"{name_seed:16} ESR {_pct(row['esr']):>8} PSR {_pct(row['psr']):>8} RSR {_pct(row['rsr']):>8} "
                f"key PSR {_pct(row['key_psr']):>8} same label {_pct(row.get('agreement')):>8}",
                flush=True,
            )
            write_tables(rows, out)
            plot(rows, out, f"hiding '{name}' in the built-in model: {args.size} images, same seeds")


if __name__ == "__main__":
    main()
