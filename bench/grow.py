"""A vault that lives, measured on the built-in model: shapes added one at a time, then a key rotated.

    python bench/grow.py                      # star; heart, arrow, crescent, cross added; then star rotated
    python bench/grow.py --size 16 --out runs/grow-quick --set model_updates=20 --set key_updates=20

After each step, every hidden shape's ESR and RSR (``--size`` images each) and the kept shapes' PSR and key PSR,
beside the original model's; after the rotation, the old key's recovery on the rotated public model beside the
new key's. Each step's vault and evaluation stay in ``--out``, so a second call resumes where the first stopped.
Prints the retention table (each shape's ESR and RSR right after it was added, and after the last addition) and
writes ``grow.json``; ``--record`` also writes the figures as a results record (bench/results).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from conceptvault.backbone import BUILTIN, load_pipeline
from conceptvault.defaults import family_config
from conceptvault.evaluate import run_suite
from conceptvault.evaluate.world_suites import world_suite
from conceptvault.files import slug
from conceptvault.methods.kpop import add_concepts, grown_config, hide, rotate_key
from conceptvault.records import builtin_record, share_figure, write_record
from conceptvault.vault import Vault
from conceptvault.world.profile import WORLD_CAPTIONS, world_concepts, world_preserve

SEQUENCE = ("star", "heart", "arrow", "crescent", "cross")


def step_vault(folder: Path, hidden: list[str], previous: Vault | None, settings: dict, rotate=None) -> Vault:
    """The vault of one step, made once: hide the first shape, add the next, or rotate ``rotate``'s key."""
    if folder.exists():
        return Vault.load(folder, keys="all")
    captions = WORLD_CAPTIONS["kpop"]
    preserve = world_preserve("shape", hidden, captions["preserve"])
    pipe = load_pipeline(BUILTIN)
    defaults = family_config("small", 1, **settings)
    if previous is None:
        concepts = world_concepts("shape", hidden, captions["concept"])
        result = hide(pipe, concepts, defaults, preserve=preserve)
        vault = Vault.from_hiding(pipe, result)
    elif rotate:
        config = grown_config(previous, defaults, {})
        result = rotate_key(pipe, previous, rotate, config, preserve=preserve)
        vault = Vault.from_hiding(pipe, result, action="rotate", changed=[rotate], history=previous.manifest.history)
    else:
        concept = world_concepts("shape", hidden[-1:], captions["concept"])
        config = grown_config(previous, defaults, {})
        result = add_concepts(pipe, previous, concept, config, preserve=preserve)
        vault = Vault.from_hiding(pipe, result, action="add", changed=hidden[-1:], history=previous.manifest.history)
    vault.save(folder)
    return Vault.load(folder, keys="all")


def figures(vault: Vault, hidden: list[str], out: Path, size: int, originals: Path) -> dict:
    """Per hidden shape its ESR and RSR; pooled PSR and key PSR over the kept shapes (64 and 16 images)."""
    suite = world_suite("shape", hidden, size=size, kept_size=16)
    evaluation = run_suite(load_pipeline(BUILTIN), vault, suite, out, original_images=originals, progress=True)
    cells = {
        f"{name}: {figure}": evaluation.cell(figure, concept=name) for name in hidden for figure in ("esr", "rsr")
    }
    cells.update({figure: evaluation.cell(figure) for figure in ("psr", "key_psr")})
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="images of each hidden shape")
    parser.add_argument("--out", type=Path, default=Path("runs") / "grow")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", action="store_true", help="write the figures as a results record")
    parser.add_argument("--set", action="append", default=[], help="a hiding setting, name=value (a number)")
    args = parser.parse_args()
    settings = {name: json.loads(value) for name, value in (item.split("=", 1) for item in args.set)}
    torch.set_num_threads(args.threads)
    started, steps, previous = time.perf_counter(), [], None
    for i in range(len(SEQUENCE) + 1):
        rotation = i == len(SEQUENCE)
        hidden = list(SEQUENCE[: i + 1]) if not rotation else list(SEQUENCE)
        name = f"{i}-rotate-{SEQUENCE[0]}" if rotation else f"{i}-{SEQUENCE[i]}"
        began = time.perf_counter()
        rotate = SEQUENCE[0] if rotation else None
        vault = step_vault(args.out / name / "vault", hidden, previous, settings, rotate)
        print(f"{name}: vault ready ({time.perf_counter() - began:.0f} s)", flush=True)
        cells = figures(vault, hidden, args.out / name / "evaluation", args.size, args.out / "original")
        if rotation:  # the leaked key on the rotated public model: it must no longer bring the shape back
            old = Vault(None, vault.manifest, vault.public, {SEQUENCE[0]: previous.keys[SEQUENCE[0]]})
            leaked = figures(old, [SEQUENCE[0]], args.out / name / "old-key", args.size, args.out / "original")
            cells[f"{SEQUENCE[0]}: old key rsr"] = leaked[f"{SEQUENCE[0]}: rsr"]
        steps.append({"step": name, "hidden": hidden, "figures": cells, "stats": vault.manifest.stats})
        previous = vault
        print(json.dumps({k: round(v["value"], 3) for k, v in cells.items()}), flush=True)
    (args.out / "grow.json").write_text(json.dumps(steps, indent=1) + "\n")
    print_retention(steps)
    if args.record:
        last = steps[-2]["figures"]  # after the last addition
        record_figures = {k: share_figure(v) for k, v in last.items()}
        for step in steps[:-1]:
            shape = step["hidden"][-1]
            for figure in ("esr", "rsr"):
                record_figures[f"{shape}: {figure} when added"] = share_figure(step["figures"][f"{shape}: {figure}"])
        rotated = steps[-1]["figures"]
        for key, cell in rotated.items():
            record_figures[f"after rotation, {key}"] = share_figure(cell)
        write_record(
            builtin_record(
                id="-".join(["grow-five-shapes", *map(slug, args.set)]),
                title="Five shapes hidden one at a time on the built-in model, then the first one's key rotated",
                command=" ".join(
                    ["python bench/grow.py", f"--size {args.size}", *(f"--set {i}" for i in args.set), "--record"]
                ),
                settings={"sequence": list(SEQUENCE), "hide": family_config("small", 1, **settings).to_dict()},
                seeds=list(range(args.size)),
                n=args.size,
                figures=record_figures,
                wall_seconds=time.perf_counter() - started,
            )
        )


def print_retention(steps: list[dict]) -> None:
    """Each added shape's ESR and RSR right after it was added and after the last addition."""
    last = steps[-2]["figures"]
    print("\n| shape | ESR when added | ESR after the last | RSR when added | RSR after the last |")
    print("|---|---|---|---|---|")
    for step in steps[:-1]:
        shape, cells = step["hidden"][-1], step["figures"]
        row = [cells[f"{shape}: esr"], last[f"{shape}: esr"], cells[f"{shape}: rsr"], last[f"{shape}: rsr"]]
        print(f"| {shape} | " + " | ".join(f"{100 * c['value']:.1f} %" for c in row) + " |")
    rotated = steps[-1]["figures"]
    print(
        f"\nafter rotating {SEQUENCE[0]}: new key RSR {100 * rotated[f'{SEQUENCE[0]}: rsr']['value']:.1f} %, "
        f"old key {100 * rotated[f'{SEQUENCE[0]}: old key rsr']['value']:.1f} %, "
        f"public {100 * (1 - rotated[f'{SEQUENCE[0]}: esr']['value']):.1f} % recovered"
    )


if __name__ == "__main__":
    main()
