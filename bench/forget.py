"""Does a sealed public model forget the star, or only refuse it? Sealing variants on the built-in model, each
fine-tuned by an attacker, beside the original model (and a never-trained one, with ``--control``).

    python bench/forget.py                                   # every candidate, fine-tuned, the table
    python bench/forget.py --control builtin-without-star --record
    python bench/forget.py --only perturb-all-0.1 --hide-only   # one candidate, beside a run of the others
    python bench/forget.py --out runs/forget-quick --size 8 --steps 12 --set model_updates=4 --only distil

Each candidate seals the star with ``sealed``'s built-in defaults and its own settings; without the attacker
key and token inside sealing (``adversary_every=0``), so that the candidates differ only in where the public
weights start: the original (``distil``), or the original moved toward noise (``perturb``; all weights, or the
cross-attention alone, half-way or all the way) and distilled back on the kept prompts (``perturb-xattn-0.5-keyed``:
half-way, with the attacker key and token inside as by default); ``finetune-sim`` starts from
the original and trains against a simulated fine-tuning attacker instead; ``reset-xattn-0.1`` re-draws only the
cross-attention units that answer the star more than the kept shapes. Then ESR, RSR, PSR
and key PSR, and the fine-tuning attack (cross-attention; ``--attack`` adds others) on every public model and
the controls, with the same pictures and seeds. Each candidate's vault, evaluation and the attacks stay in
``--out``; a second call resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from conceptvault.backbone import BUILTIN, load_pipeline
from conceptvault.checkpoint import CHECKPOINT_FILE
from conceptvault.defaults import family_config
from conceptvault.evaluate import run_suite
from conceptvault.evaluate.compare import LABELS
from conceptvault.evaluate.world_suites import world_suite
from conceptvault.methods.sealed import seal
from conceptvault.records import builtin_record, share_figure, write_record
from conceptvault.vault import Vault
from conceptvault.world.profile import WORLD_CAPTIONS, world_concepts, world_preserve
from leaderboard import NEVER_TRAINED_ROW, ORIGINAL_ROW, attack_figures  # bench/, beside this script

SHAPE = "star"
CANDIDATES = {
    "distil": dict(adversary_every=0),
    "perturb-all-0.1": dict(adversary_every=0, perturb=0.1),
    "perturb-xattn-0.5": dict(adversary_every=0, perturb=0.5, train="xattn"),
    "perturb-xattn-1.0": dict(adversary_every=0, perturb=1.0, train="xattn"),
    # the half-noise start as a user gets it: with sealing's attacker key and token inside, as by default
    "perturb-xattn-0.5-keyed": dict(perturb=0.5, train="xattn"),
    # a tenth of the cross-attention key and value units, those answering the star most, re-drawn from noise
    "reset-xattn-0.1": dict(adversary_every=0, reset_units=0.1),
    # trained against an attacker who fine-tunes the cross-attention 8 steps at 2e-3 every second update
    "finetune-sim": dict(adversary_every=0, finetune_every=2, finetune_steps=8, finetune_lr=2e-3),
}


def vault_path(folder: Path) -> Path:
    """Where a candidate's vault lies: named after the candidate, which names it in the attack report."""
    return folder / f"{folder.name}.vault"


def sealed_vault(folder: Path, settings: dict) -> Vault:
    """The candidate's vault, made once (its checkpoints let an interrupted run continue)."""
    if vault_path(folder).exists():
        return Vault.load(vault_path(folder), keys="all")
    captions = WORLD_CAPTIONS["sealed"]
    pipe = load_pipeline(BUILTIN)
    config = family_config("small", 1, method="sealed", **settings)
    concepts = world_concepts("shape", [SHAPE], captions["concept"])
    preserve = world_preserve("shape", [SHAPE], captions["preserve"])
    started = time.perf_counter()
    result = seal(
        pipe,
        concepts,
        config,
        preserve=preserve,
        checkpoint_dir=folder / "checkpoint",
        resume=(folder / "checkpoint" / CHECKPOINT_FILE).exists(),
    )
    result.stats["wall_seconds"] = round(time.perf_counter() - started, 1)
    Vault.from_hiding(pipe, result).save(vault_path(folder))
    return Vault.load(vault_path(folder), keys="all")


def hiding_figures(vault: Vault, out: Path, size: int, originals: Path) -> dict:
    """ESR and RSR of the star (``size`` images), PSR and key PSR over the kept shapes (16 images each)."""
    if (out / "figures.json").exists():
        return json.loads((out / "figures.json").read_text())
    suite = world_suite("shape", [SHAPE], size=size, kept_size=16)
    evaluation = run_suite(load_pipeline(BUILTIN), vault, suite, out, original_images=originals, progress=True)
    cells = {figure: evaluation.cell(figure, concept=SHAPE) for figure in ("esr", "rsr")}
    cells.update({figure: evaluation.cell(figure) for figure in ("psr", "key_psr")})
    (out / "figures.json").write_text(json.dumps(cells, indent=1) + "\n")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs") / "forget")
    parser.add_argument("--size", type=int, default=64, help="images of the star in each evaluation")
    parser.add_argument("--steps", type=int, default=300, help="steps of each attack")
    parser.add_argument("--attack-size", type=int, default=32, help="images of the star per attack measurement")
    parser.add_argument("--control", help="a model that never learned the star: a name or a folder")
    parser.add_argument("--attack", action="append", default=[], help="an attack beside fine-tuning (repeatable)")
    parser.add_argument("--only", action="append", default=[], help="run only this candidate (repeatable)")
    parser.add_argument("--set", action="append", default=[], help="a setting for every candidate, name=value")
    parser.add_argument(
        "--hide-only", action="store_true", help="hide and evaluate, leave the attacks to a later call"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", action="store_true", help="write the figures as a results record")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shared = {name: json.loads(value) for name, value in (item.split("=", 1) for item in args.set)}
    chosen = {
        name: {**settings, **shared} for name, settings in CANDIDATES.items() if not args.only or name in args.only
    }
    started, figures, vaults = time.perf_counter(), {}, {}
    for name, settings in chosen.items():
        vault = sealed_vault(args.out / name, settings)
        vaults[name] = vault_path(args.out / name)
        cells = hiding_figures(vault, args.out / name / "evaluation", args.size, args.out / "original")
        figures |= {f"{ORIGINAL_ROW}: {LABELS[f]}": share_figure(cells[f]["original"]) for f in ("esr", "psr", "rsr")}
        figures |= {f"{name}: {LABELS[figure]}": share_figure(cell) for figure, cell in cells.items()}
        seconds = vault.manifest.stats.get("wall_seconds")
        figures[f"{name}: time"] = {"value": seconds, "interval": None, "n": 1, "unit": "s"}
        print(name, json.dumps({k: round(v["value"], 3) for k, v in cells.items()}), flush=True)
    if args.hide_only:
        return
    attacks = ["finetune", *args.attack]
    figures |= attack_figures(vaults, args.control, attacks, args.out / "attacks", SHAPE, args.steps, args.attack_size)
    for name, figure in figures.items():
        print(f"{name}: {figure['value']:g} {figure['unit']}{' (not reached)' if figure.get('censored') else ''}")
    if args.record:
        rows = [ORIGINAL_ROW, *([NEVER_TRAINED_ROW] if args.control else []), *chosen]
        write_record(
            builtin_record(
                id="forget-candidates",
                title="Sealing variants that start the public weights from noise, fine-tuned by an attacker",
                command="python bench/forget.py " + " ".join(sys.argv[1:]),
                settings={
                    "leaderboard": {
                        "rows": rows,
                        "hidden": [SHAPE],
                        "attacks": attacks,
                        "original": ORIGINAL_ROW,
                        "never_trained": NEVER_TRAINED_ROW if args.control else None,
                    },
                    "candidates": {
                        name: family_config("small", 1, method="sealed", **s).to_dict() for name, s in chosen.items()
                    },
                    "attack_steps": args.steps,
                    "attack_size": args.attack_size,
                },
                seeds=list(range(args.size)),
                n=args.size,
                figures=figures,
                wall_seconds=time.perf_counter() - started,
            )
        )


if __name__ == "__main__":
    main()
