"""Measuring vaults: evaluate, compare, attack, and the demo that does it all on the built-in model."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from ..attacks import MAX_ATTACK_LR, MAX_PROMPT_TOKENS, MAX_STRENGTH, Attack
from ..attacks_prompt_search import RING_A_BELL_STRENGTH
from ..backbone import load_pipeline
from ..errors import ConceptVaultError
from ..vault import Vault
from .common import (
    DeviceOption,
    ModelOverride,
    PassphraseOption,
    RecordOption,
    ThreadsOption,
    VaultArgument,
    app,
    as_lines,
    check_positive,
    check_range,
    check_record_file,
    check_writable_folder,
    checked,
    command_line,
    console,
    on_interrupt,
    parse_seeds,
    read_passphrase,
    say,
    suite_named,
    use_threads,
)


@app.command("evaluate")
def evaluate_command(
    vault: VaultArgument,
    suite: Annotated[
        str,
        typer.Option(
            help="A built-in suite (shape, colour, style, five-shapes-a, five-shapes-b; mixed: star, heart, red "
            "and striped together) or a suite JSON file."
        ),
    ] = "shape",
    concept: Annotated[
        str | None, typer.Option(help="The hidden shape, colour or style of a single-concept built-in suite.")
    ] = None,
    size: Annotated[int | None, typer.Option(help="Images per concept of a built-in suite.")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for images and the report (default: VAULT.eval).")] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Also write every figure to this JSON file.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images generated per batch.")] = 8,
    no_key: Annotated[bool, typer.Option(help="Measure the public model only (no key needed).")] = False,
    record: RecordOption = None,
    model: ModelOverride = None,
    passphrase_file: PassphraseOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Measure a vault: ESR, PSR, RSR and the key holder's PSR, beside the original model's rates.

    On several GPUs: accelerate launch -m conceptvault.cli evaluate VAULT ... (the processes share the images).
    """
    use_threads(threads)
    from ..evaluate import print_summary, run_suite, write_json, write_report

    started = time.perf_counter()
    check_positive(size=size, batch_size=batch_size)
    for output in filter(None, (json_file, (out or vault.with_name(vault.name + ".eval")) / "report.html")):
        check_writable_folder(output)  # before the images are made, not after
    check_record_file(record)
    chosen = suite_named(suite, size, concept)
    loaded = Vault.load(vault, keys=None if no_key else "all", passphrase=read_passphrase(passphrase_file))
    pipe = load_pipeline(model or loaded.manifest.base_model, device=device)
    result = run_suite(
        pipe,
        loaded,
        chosen,
        out or vault.with_name(vault.name + ".eval"),
        batch_size=batch_size,
        with_key=not no_key and loaded.method.has_keys,
        console=console,
    )
    if result is None:  # one of several processes (accelerate launch): the main one reports
        return
    print_summary(result, console=console)
    files = write_report(result)
    if json_file:
        write_json(result, json_file)
    say(f"report: {files.html}   figures: {files.json}")
    if record:
        say(f"record: {write_evaluation_record(result, loaded.manifest.config, record, started)}")


@app.command("compare")
def compare_command(
    vaults: Annotated[list[Path], typer.Argument(help="Vault folders made from one base model.")],
    out: Annotated[Path, typer.Option(help="Folder for the images and the comparison files.")],
    suite: Annotated[str, typer.Option(help="A built-in suite or a suite JSON file.")] = "shape",
    concept: Annotated[str | None, typer.Option(help="The hidden concept of a single-concept built-in suite.")] = None,
    size: Annotated[int | None, typer.Option(help="Images per concept of a built-in suite.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images generated per batch.")] = 8,
    record: RecordOption = None,
    model: ModelOverride = None,
    passphrase_file: PassphraseOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Measure several vaults (hiding and erasure) on one suite: one table, one chart, one report."""
    use_threads(threads)
    from ..evaluate.compare import compare, write_comparison

    started = time.perf_counter()
    check_positive(size=size, batch_size=batch_size)
    check_record_file(record)
    chosen = suite_named(suite, size, concept)
    passphrase = read_passphrase(passphrase_file)
    loaded = {}
    for path in vaults:
        name = path.name if path.name not in loaded else f"{path.name}-{len(loaded)}"
        loaded[name] = Vault.load(path, keys="all", passphrase=passphrase)
    bases = {v.manifest.base_fingerprint for v in loaded.values()}
    if len(bases) != 1:
        raise ConceptVaultError("the vaults were made from different base models; compare vaults of one model.")
    first = next(iter(loaded.values()))
    pipe = load_pipeline(model or first.manifest.base_model, device=device)
    comparison = compare(pipe, loaded, chosen, out, batch_size=batch_size, console=console)
    files = write_comparison(comparison)
    console.print(as_lines(files["md"].read_text()))
    say(f"comparison: {files['html']}   chart: {files['png']}   figures: {files['json']}")
    if record:
        say(f"record: {write_comparison_record(comparison, record, started)}")


@app.command("attack")
def attack_command(
    vault: VaultArgument,
    out: Annotated[Path, typer.Option(help="Folder for attacks.json, attacks.md and attacks.png.")],
    attack: Annotated[
        list[Attack] | None, typer.Option(help="An attack to run (default: every one). Repeatable.")
    ] = None,
    suite: Annotated[str, typer.Option(help="A built-in suite or a suite JSON file.")] = "shape",
    concept: Annotated[str | None, typer.Option(help="The hidden concept of a single-concept built-in suite.")] = None,
    size: Annotated[int, typer.Option(help="Images of the hidden concept per measurement.")] = 32,
    steps: Annotated[int, typer.Option(help="Optimisation or search steps of the trained attacks.")] = 300,
    images: Annotated[
        int, typer.Option(help="Pictures the trained attacks learn from (benign-finetune: of kept concepts).")
    ] = 64,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate of the trained attacks (default: per attack).")
    ] = None,
    images_from: Annotated[
        Path | None, typer.Option(help="Folder of pictures of the concept (built-in world: rendered if absent).")
    ] = None,
    benign_from: Annotated[
        Path | None,
        typer.Option(
            help="benign-finetune: a folder of pictures of other, kept concepts, each with a same-named .txt "
            "caption (default: the built-in world's renders, else the public model's own pictures of the "
            "suite's kept prompts)."
        ),
    ] = None,
    tokens: Annotated[
        int | None,
        typer.Option(help="Words of ring-a-bell's searched prompts (16) or of unlearndiff's prefix (5)."),
    ] = None,
    strength: Annotated[
        float, typer.Option(help="ring-a-bell: how far its targets lie along the concept's direction.")
    ] = RING_A_BELL_STRENGTH,
    prompts: Annotated[
        Path | None, typer.Option(help="File of attack prompts, one per line (added to the suite's).")
    ] = None,
    control: Annotated[
        list[str] | None,
        typer.Option(
            help="Attack another model the same way: 'original', a vault folder, a model folder or name "
            "(builtin-without-star: the built-in model never shown a star). Repeatable."
        ),
    ] = None,
    other_keys: Annotated[
        list[Path] | None, typer.Option(help="A vault whose keys the random-key attack also tries. Repeatable.")
    ] = None,
    sweep: Annotated[
        bool,
        typer.Option(
            help="Fine-tune with every setting of the sweep instead of one (learning rates x trained weights x "
            "pictures x seeds, recovery measured along the way) and name each model's best; writes OUT/sweep/.",
            rich_help_panel="Fine-tuning sweep",
        ),
    ] = False,
    sweep_lr: Annotated[
        str, typer.Option(help="Learning rates, comma-separated.", rich_help_panel="Fine-tuning sweep")
    ] = "1e-5,1e-4,1e-3",
    sweep_weights: Annotated[
        str,
        typer.Option(
            help="What the attacker trains, comma-separated: xattn (cross-attention), lora (an adapter on every "
            "attention projection), unet (every weight).",
            rich_help_panel="Fine-tuning sweep",
        ),
    ] = "xattn,lora,unet",
    sweep_images: Annotated[
        str, typer.Option(help="Picture counts, comma-separated.", rich_help_panel="Fine-tuning sweep")
    ] = "64,256",
    sweep_seeds: Annotated[
        str, typer.Option(help="Attack seeds, comma-separated.", rich_help_panel="Fine-tuning sweep")
    ] = "0,1,2",
    record: RecordOption = None,
    model: ModelOverride = None,
    passphrase_file: PassphraseOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Attack the vault's public model without its key; report unauthorised recovery beside RSR and the original.

    prompt: paraphrases, synonyms, misspellings and the --prompts file.
    random-key: keys of the real key's shape and norm, and the --other-keys.
    key-inversion, token-inversion: a key, or a new input token, learned on pictures of the concept.
    finetune: the UNet fine-tuned on pictures of the concept.
    ring-a-bell: prompts of vocabulary words searched with the text encoder toward the concept's text states.
    unlearndiff: words prepended to the concept's prompts, learned on its pictures, kept to vocabulary words.
    benign-finetune: the UNet fine-tuned on captioned pictures of other, kept concepts only (--benign-from).
    All but the first two are measured along the way: recovery against --steps.
    """
    use_threads(threads)
    from ..attack_campaign import Campaign
    from ..attack_report import figures as attack_figures
    from ..attack_sweep import SweepPlan, run_sweep, sweep_figures

    started = time.perf_counter()
    check_positive(size=size, steps=steps, images=images)
    check_record_file(record)
    check_range("lr", lr, 0, MAX_ATTACK_LR, above=True)
    check_range("tokens", tokens, 1, MAX_PROMPT_TOKENS)
    check_range("strength", strength, 0, MAX_STRENGTH, above=True)
    plan = None
    if sweep:
        plan = checked(
            lambda: SweepPlan(
                lrs=tuple(_numbers("--sweep-lr", sweep_lr, float)),
                weights=tuple(part.strip() for part in sweep_weights.split(",") if part.strip()),
                images=tuple(_numbers("--sweep-images", sweep_images, int)),
                seeds=tuple(parse_seeds(sweep_seeds)),
                steps=steps,
            )
        )
    chosen = suite_named(suite, size, concept)
    campaign = Campaign.prepare(
        vault,
        chosen,
        steps=steps,
        images=max(images, *plan.images) if plan else images,
        lr=lr,
        tokens=tokens,
        strength=strength,
        images_from=images_from,
        benign_from=benign_from,
        prompts_file=prompts,
        controls=control or [],
        other_vaults=other_keys or [],
        model=model,
        passphrase=read_passphrase(passphrase_file),
        device=device,
    )
    chosen_attacks = [Attack(a) for a in attack] if attack else list(Attack)
    if plan:  # the sweep is the fine-tuning attack
        chosen_attacks = [a for a in chosen_attacks if a != Attack.FINETUNE]
    figures = {}
    if chosen_attacks:
        with on_interrupt(f"the attacks that finished are in {out}"):
            run = campaign.run(chosen_attacks, log=say, out=out)
        files = campaign.write(run, out)
        console.print(as_lines(files["md"].read_text()))
        say(f"curves: {files['png']}   figures: {files['json']}")
        figures |= attack_figures(run)
    if plan:
        files = run_sweep(campaign, plan, out / "sweep", log=say)
        console.print(as_lines(files["md"].read_text()))
        say(f"best curves: {files['png']}   figures: {files['json']}")
        figures |= sweep_figures(json.loads(files["json"].read_text()))
    if record:
        say(f"record: {write_attack_record(campaign, chosen_attacks, plan, figures, record, started)}")


def write_evaluation_record(result, hide: dict, path: Path, started: float) -> Path:
    """The evaluation as a results record in ``path``; ``hide``: the settings that made the vault."""
    from ..records import evaluation_record

    vault = result.meta["vault"]
    return _write_record(
        path,
        started,
        partial(evaluation_record, result),
        title=f"{vault['method']} vault {Path(vault['path']).name} on the suite {result.suite.name}",
        settings={"vault": vault, "hide": hide},
    )


def write_comparison_record(comparison, path: Path, started: float) -> Path:
    """The comparison as a results record in ``path``."""
    from ..evaluate.compare import figures
    from ..records import judge_fingerprint, make_record

    first = comparison.entries[0]
    return _write_record(
        path,
        started,
        make_record,
        title=f"{', '.join(e.name for e in comparison.entries)} compared on the suite {comparison.suite.name}",
        settings={
            "suite": comparison.suite.name,
            "vaults": {e.name: {"method": e.method, "hide": e.vault.manifest.config} for e in comparison.entries},
        },
        seeds=sorted({r.seed for r in first.result.records}),
        n=len(first.result.records),
        figures=figures(comparison),
        model_fingerprint=first.vault.manifest.base_fingerprint,
        judge_fingerprint=judge_fingerprint(comparison.suite.judge),
        device=first.result.meta["settings"]["device"],
    )


def write_attack_record(campaign, attacks: list, plan, figures: dict, path: Path, started: float) -> Path:
    """The attacks' figures (and the sweep's, where one ran) as a results record in ``path``."""
    from dataclasses import asdict

    from ..records import judge_fingerprint, make_record
    from ..vault import read_manifest

    manifest = read_manifest(campaign.vault_path)
    concept = campaign.suite.hidden[0]
    return _write_record(
        path,
        started,
        make_record,
        title=f"Attacks on the public model of {campaign.vault_path.name}: {concept.name}",
        settings={
            "suite": campaign.suite.name,
            "attacks": [attack.value for attack in attacks],
            "sweep": asdict(plan) if plan else None,
            "models": [target.name for target in campaign.targets],
            "attack": asdict(campaign.config),
            "method": manifest.method,
            "hide": manifest.config,
        },
        seeds=list(concept.seeds),
        n=len(concept.seeds),
        figures=figures,
        model_fingerprint=manifest.base_fingerprint,
        judge_fingerprint=judge_fingerprint(campaign.suite.judge),
        device=str(campaign.targets[0].pipe.device),
    )


def _write_record(path: Path, started: float, make, **fields) -> Path:
    """A record made by ``make`` (a record maker of :mod:`conceptvault.records`) from ``fields`` and what every
    command's record shares: the id (the file's name), the command as typed and the wall time since ``started``."""
    from ..records import record_id, write_record

    made = make(id=record_id(path), command=command_line(), wall_seconds=time.perf_counter() - started, **fields)
    return write_record(made, path.parent)


def _numbers(option: str, text: str, kind: type) -> list:
    """A comma-separated list of numbers given to ``option``; anything else is one clear line."""
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConceptVaultError(f"{option} '{text}' must be comma-separated numbers, such as 1e-4,1e-3.") from None
    if not values:
        raise ConceptVaultError(f"{option} names no value; give comma-separated numbers.")
    return values


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for the vault, the images and the report.")] = Path("demo-out"),
    shape: Annotated[str, typer.Option(help="The shape of the built-in world to hide.")] = "star",
    images: Annotated[int, typer.Option(help="Images of the hidden shape in the evaluation.")] = 64,
    kept_images: Annotated[int, typer.Option(help="Images of each kept shape in the evaluation.")] = 16,
    threads: ThreadsOption = None,
) -> None:
    """Hide a shape in the built-in model, measure it, and write an HTML report (a few minutes on a CPU)."""
    use_threads(threads)
    from ..demo import DemoPlan, run_demo

    check_positive(images=images, kept_images=kept_images)
    run_demo(out, DemoPlan(shape=shape, hidden_images=images, kept_images=kept_images), console=console)
