"""Does a sealed public model forget the star, or only refuse it? Sealing variants on the built-in model, each
fine-tuned by an attacker, beside the original model (and a never-trained one, with ``--control``).

    python bench/forget.py                                   # every candidate, fine-tuned, the table
    python bench/forget.py --control runs/world-without-star/model --record
    python bench/forget.py --only perturb-all-0.1 --hide-only   # one candidate, beside a run of the others
    python bench/forget.py --out runs/forget-quick --size 8 --steps 12 --set model_updates=4 --only distil

Each candidate seals the star with ``sealed``'s built-in defaults and its own settings; without the attacker
key and token inside sealing (``adversary_every=0``), so that the candidates differ only in where the public
weights start: the original (``distil``), or the original moved toward noise (``perturb``; all weights, or the
cross-attention alone, half-way or all the way) and distilled back on the kept prompts; ``finetune-sim`` starts from
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

from conceptvault.attack_campaign import Campaign
from conceptvault.attacks import Attack
from conceptvault.backbone import BUILTIN, load_pipeline
from conceptvault.checkpoint import CHECKPOINT_FILE
from conceptvault.defaults import family_config
from conceptvault.evaluate import run_suite
from conceptvault.evaluate.world_suites import world_suite
from conceptvault.methods.sealed import seal
from conceptvault.records import (
    builtin_model_fingerprint,
    make_record,
    share_figure,
    shipped_judge_fingerprint,
    write_record,
)
from conceptvault.vault import Vault
from conceptvault.world.profile import WORLD_CAPTIONS, world_concepts, world_preserve

SHAPE = "star"
CANDIDATES = {
    "distil": dict(adversary_every=0),
    "perturb-all-0.1": dict(adversary_every=0, perturb=0.1),
    "perturb-xattn-0.5": dict(adversary_every=0, perturb=0.5, train="xattn"),
    "perturb-xattn-1.0": dict(adversary_every=0, perturb=1.0, train="xattn"),
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


def attack_all(
    folders: list[Path], controls: list[str], out: Path, attacks: list[Attack], steps: int, size: int
) -> dict:
    """The attacks on every candidate's public model and the controls, as one campaign."""
    if (out / "attacks.json").exists():
        return json.loads((out / "attacks.json").read_text())
    others = [str(vault_path(folder)) for folder in folders[1:]]
    campaign = Campaign.prepare(
        vault_path(folders[0]), world_suite("shape", [SHAPE], size=size), steps=steps, controls=[*others, *controls]
    )
    run = campaign.run(attacks)
    for result in run.results:  # the campaign calls its first vault "public": name it after its candidate
        if result.model == "public":
            result.model = f"{folders[0].name}.vault (sealed)"
    campaign.write(run, out)
    return json.loads((out / "attacks.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs") / "forget")
    parser.add_argument("--size", type=int, default=64, help="images of the star in each evaluation")
    parser.add_argument("--steps", type=int, default=300, help="steps of each attack")
    parser.add_argument("--attack-size", type=int, default=32, help="images of the star per attack measurement")
    parser.add_argument(
        "--control", action="append", default=[], help="another attacked model: a model folder, or original"
    )
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
    started, figures, seconds = time.perf_counter(), {}, {}
    for name, settings in chosen.items():
        vault = sealed_vault(args.out / name, settings)
        seconds[name] = vault.manifest.stats.get("wall_seconds")
        cells = hiding_figures(vault, args.out / name / "evaluation", args.size, args.out / "original")
        figures.update({f"{name}: {figure}": cell for figure, cell in cells.items()})
        print(name, json.dumps({k: round(v["value"], 3) for k, v in cells.items()}), flush=True)
    if args.hide_only:
        return
    attacks = attack_all(
        [args.out / name for name in chosen],
        args.control,
        args.out / "attacks",
        [Attack.FINETUNE, *(Attack(a) for a in args.attack)],
        args.steps,
        args.attack_size,
    )
    print("\n| model | attack | recovery at the end | steps to 50 % |\n|---|---|---|---|")
    for result in attacks["results"]:
        end, to_half = result["curve"][-1]["recovery"], result["steps_to_50"]
        model = result["model"]
        figures[f"{model}: {result['attack']} at {args.steps} steps"] = end
        if to_half is not None:  # interpolated between measurements; one attack seed, so no interval
            figures[f"{model}: {result['attack']}, steps to 50 %"] = {
                "value": to_half,
                "interval": None,
                "n": 1,
                "unit": "steps",
            }
        print(
            f"| {model} | {result['attack']} | {100 * end['value']:.1f} % | "
            f"{'-' if to_half is None else f'{to_half:.0f}'} |"
        )
    if args.record:
        write_record(
            make_record(
                id="forget-candidates",
                title="Sealing variants that start the public weights from noise, fine-tuned by an attacker",
                command="python bench/forget.py " + " ".join(sys.argv[1:]),
                settings={
                    name: family_config("small", 1, method="sealed", **s).to_dict() for name, s in chosen.items()
                }
                | {"attack_steps": args.steps, "hide_seconds": seconds},
                seeds=list(range(args.size)),
                n=args.size,
                figures={name: cell if "steps to" in name else share_figure(cell) for name, cell in figures.items()},
                wall_seconds=time.perf_counter() - started,
                model_fingerprint=builtin_model_fingerprint(),
                judge_fingerprint=shipped_judge_fingerprint(),
            )
        )


if __name__ == "__main__":
    main()
