"""Making and using vaults: hide, erase, generate, inspect, export."""

from __future__ import annotations

import math
import shutil
from contextlib import nullcontext
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .. import parallel
from ..backbone import load_pipeline
from ..checkpoint import checkpoint_folder, output_lock
from ..defaults import family_config, model_family
from ..errors import ConceptVaultError
from ..generate import MAX_GUIDANCE, MAX_SAMPLER_STEPS, generate_images, image_grid
from ..key import Placement
from ..latents import LatentSource
from ..manifest import KEYS_DIR
from ..methods.kpop import HideConfig, KeyInit, add_concepts, grown_config, rotate_key
from ..profiles import profile_for
from ..registry import MethodSpec, choices, get_method, methods, variant_settings
from ..settings import LossSpace, TrainedLayers
from ..vault import MANIFEST_FILE, Vault, replace_vault, save_vault
from .common import (
    DeviceOption,
    ModelArgument,
    ModelOverride,
    PassphraseOption,
    ThreadsOption,
    VaultArgument,
    app,
    as_text,
    check_image_path,
    check_positive,
    check_range,
    check_writable_folder,
    checked,
    console,
    on_interrupt,
    parse_concepts,
    parse_seeds,
    parse_settings,
    read_passphrase,
    say,
    use_threads,
)

_HELP = {f.name: f.metadata["help"] for f in fields(HideConfig)}


def _setting(name: str) -> typer.models.OptionInfo:
    """A command-line option for a HideConfig field, with the field's help text; unset, the model family's
    default applies (see ``conceptvault.defaults``)."""
    scaled = name in get_method("kpop").per_concept.get("small", ())
    default = "per model family" + (", times the concepts hidden on small models" if scaled else "")
    # escaped: Rich reads an unescaped "[default: ...]" as markup and drops it
    return typer.Option(help=f"{_HELP[name]} \\[default: {default}]", rich_help_panel="Hiding settings")


def _method_option(with_keys: bool, default: str):
    """``--method``: a registered method's name (read from the registry when the command runs, so a method
    registered later is a choice too)."""
    listed = "; ".join(f"{spec.name}: {spec.summary}" for spec in methods() if spec.has_keys == with_keys)
    return typer.Option(help=f"One of {', '.join(choices(with_keys))} ({listed}).")


def _chosen_method(name: str, with_keys: bool) -> MethodSpec:
    """The method ``--method`` names, refused when it is of the other command's kind."""
    spec = get_method(name)
    if spec.has_keys != with_keys:
        other = "hide" if spec.has_keys else "erase"
        raise ConceptVaultError(
            f"--method {name} {'hides behind keys' if spec.has_keys else 'erases'}; "
            f"use conceptvault {other} --method {name}."
        )
    return spec


def _method_settings(spec: MethodSpec, name: str, explicit: dict, pairs: list[str]) -> dict:
    """The settings given on the command line (flags and ``--set NAME=VALUE``) for ``spec``, checked by its
    settings class before any model loads; a setting the method does not have is refused."""
    explicit = {**explicit, **parse_settings(pairs, spec.config_class)}
    known = {f.name for f in fields(spec.config_class)}
    foreign = sorted(set(explicit) - known)
    if foreign:
        kind = "hiding" if spec.has_keys else "erasure"
        raise ConceptVaultError(
            f"--{foreign[0].replace('_', '-')} is not a setting of {spec.name} {kind}; leave it out."
        )
    checked(lambda: spec.config_class(**{**variant_settings(name), **explicit}))
    return explicit


SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="NAME=VALUE: any setting of the method, flag or not (see inspect's settings of a vault). Repeatable.",
        rich_help_panel="Hiding settings",
    ),
]


@app.command("hide")
def hide_command(
    model: ModelArgument,
    concept: Annotated[
        list[str],
        typer.Option(
            help="A concept to hide: 'star', or phrasings 'star|five-pointed star' (the first names the key). "
            "On the built-in model a world name brings its other names and some world captions along. Repeatable."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Folder to write the vault to; it must not exist yet.")],
    preserve: Annotated[
        list[str] | None,
        typer.Option(
            help="A prompt the model must keep rendering as before. Repeatable. Built-in model, none given: "
            "the other concepts of the hidden one's kind, by name and some world captions."
        ),
    ] = None,
    preserve_captions: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Built-in model, no --preserve given: world captions of each kept concept among the preserve "
            "prompts \\[default: 4; sealed: 8].",
        ),
    ] = None,
    anchor: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=PROMPT: hide concept NAME toward PROMPT instead of the empty prompt. Repeatable. Built-in "
            'model: another concept of the same kind stands in for NAME in each caption (red=green: "a red heart" '
            'toward "a green heart").'
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the interrupted run whose checkpoint sits beside --out.")
    ] = False,
    passphrase_file: PassphraseOption = None,
    device: DeviceOption = None,
    method: Annotated[str, _method_option(with_keys=True, default="kpop")] = "kpop",
    set_: SetOption = None,
    key_rank: Annotated[
        int | None,
        typer.Option(
            help="Rank of the weight changes the key carries. kpop: changes of the cross-attention projections "
            "the key reaches, on only with the key (0: tokens only); sealed: each weight change kept to this rank "
            "(0: whole) \\[default: per model family and method].",
            rich_help_panel="Hiding settings",
        ),
    ] = None,
    key_change_lr: Annotated[float | None, _setting("key_change_lr")] = None,
    model_updates: Annotated[int | None, _setting("model_updates")] = None,
    k: Annotated[int | None, _setting("k")] = None,
    lr: Annotated[float | None, _setting("lr")] = None,
    key_lr: Annotated[float | None, _setting("key_lr")] = None,
    lambda_hide: Annotated[float | None, _setting("lambda_hide")] = None,
    lambda_rec: Annotated[float | None, _setting("lambda_rec")] = None,
    lambda_uncond: Annotated[float | None, _setting("lambda_uncond")] = None,
    lambda_pres: Annotated[float | None, _setting("lambda_pres")] = None,
    lambda_leak: Annotated[float | None, _setting("lambda_leak")] = None,
    eta: Annotated[float | None, _setting("eta")] = None,
    train: Annotated[TrainedLayers | None, _setting("train")] = None,
    loss_space: Annotated[LossSpace | None, _setting("loss_space")] = None,
    key_init: Annotated[KeyInit | None, _setting("key_init")] = None,
    m: Annotated[int | None, _setting("m")] = None,
    placement: Annotated[Placement | None, _setting("placement")] = None,
    latents: Annotated[LatentSource | None, _setting("latents")] = None,
    sampler_steps: Annotated[int | None, _setting("sampler_steps")] = None,
    guidance: Annotated[float | None, _setting("guidance")] = None,
    cache_trajectories: Annotated[int | None, _setting("cache_trajectories")] = None,
    batch_size: Annotated[int | None, _setting("batch_size")] = None,
    seed: Annotated[int | None, _setting("seed")] = None,
    key_updates: Annotated[int | None, _setting("key_updates")] = None,
    adversary_every: Annotated[int | None, _setting("adversary_every")] = None,
    adversary_steps: Annotated[int | None, _setting("adversary_steps")] = None,
    lambda_adversary: Annotated[float | None, _setting("lambda_adversary")] = None,
    adversarial_preserve: Annotated[float | None, _setting("adversarial_preserve")] = None,
    adversarial_preserve_steps: Annotated[int | None, _setting("adversarial_preserve_steps")] = None,
    checkpoint_every: Annotated[int | None, _setting("checkpoint_every")] = None,
    threads: ThreadsOption = None,
) -> None:
    """Hide concepts in MODEL behind keys and write a vault; MODEL may be a vault, to hide more on top of it."""
    use_threads(threads)
    settings = locals()
    spec = _chosen_method(method, with_keys=True)
    given = {f.name: settings[f.name] for f in fields(HideConfig) if settings[f.name] is not None}
    explicit = _method_settings(spec, method, given, set_ or [])
    passphrase = read_passphrase(passphrase_file)
    existing = _vault_to_grow(model, spec, passphrase, explicit)
    base = existing.manifest.base_model if existing else model
    concepts, preserve = parse_concepts(concept, anchor or []), preserve or []
    hidden = existing.concepts if existing else []
    concepts, preserve = profile_for(base).fill_in(concepts, preserve, spec.name, preserve_captions, hidden)
    parallel.start()  # under a launcher (accelerate launch, torchrun): one of several processes
    # the first process claims and writes the output; the others read its checkpoint when resuming
    claim = output_lock(out, resume) if parallel.is_main() else nullcontext(checkpoint_folder(out))
    with parallel.together(claim) as checkpoint_dir:
        pipe = load_pipeline(base, device=parallel.device(device))
        config = checked(lambda: family_config(model_family(pipe), len(concepts), method, **explicit))
        options = dict(checkpoint_dir=checkpoint_dir, resume=resume, passphrase=passphrase)
        options |= dict(preserve=preserve, progress=parallel.is_main())
        if existing:
            config = checked(lambda: grown_config(existing, config, explicit))
            result = add_concepts(pipe, existing, concepts, config, **options)
            grown = Vault.from_hiding(
                pipe, result, action="add", changed=[c.name for c in concepts], history=existing.manifest.history
            )
            if parallel.is_main():
                grown.save(out, passphrase=passphrase)
        else:
            result = spec.run(pipe, concepts, config, **options)
            if parallel.is_main():
                save_vault(out, pipe, result, passphrase=passphrase)
        if parallel.is_main():
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    if not parallel.is_main():
        return
    _print_losses(result.stats)
    say(f"wrote the vault {out} (keys in {out / KEYS_DIR})")


def _vault_to_grow(model: str, spec: MethodSpec, passphrase: str | None, explicit: dict) -> Vault | None:
    """The vault MODEL names, loaded with every key, when hiding goes on top of one (None for a model); the
    settings given are checked against its keys' before any key is read."""
    if not (Path(model) / MANIFEST_FILE).is_file():
        return None
    if spec.name != "kpop":
        raise ConceptVaultError(f"'{model}' is a vault; concepts are added to a vault with --method kpop only.")
    checked(lambda: grown_config(Vault.load(model, keys=None), HideConfig(), explicit))
    return Vault.load(model, keys="all", passphrase=passphrase)


@app.command("rotate")
def rotate_command(
    vault: VaultArgument,
    concept: Annotated[str, typer.Option(help="The concept whose key is replaced.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Write the rotated vault here instead of replacing VAULT (once it is complete)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the interrupted rotation whose checkpoint sits beside the output.")
    ] = False,
    passphrase_file: PassphraseOption = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Give CONCEPT a new key and change the public model so that its old key no longer unlocks it; every other
    concept and key stays as it was. Replaces VAULT only once the new one is complete."""
    use_threads(threads)
    explicit = _method_settings(get_method("kpop"), "kpop", {}, set_ or [])
    passphrase = read_passphrase(passphrase_file)
    existing = Vault.load(vault, keys="all", passphrase=passphrase)
    target = out or vault.with_name(f"{vault.name}.rotating")
    with output_lock(target, resume) as checkpoint_dir:
        pipe = load_pipeline(existing.manifest.base_model, device=device)
        defaults = checked(lambda: family_config(model_family(pipe), 1, "kpop"))
        config = checked(lambda: grown_config(existing, defaults, explicit))
        options = dict(checkpoint_dir=checkpoint_dir, resume=resume, passphrase=passphrase)
        result = rotate_key(pipe, existing, concept, config, preserve=existing.manifest.preserve, **options)
        rotated = Vault.from_hiding(
            pipe, result, action="rotate", changed=[concept], history=existing.manifest.history
        )
        rotated.save(target, passphrase=passphrase)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    if out is None:
        replace_vault(target, vault)
    _print_losses(result.stats)
    say(f"rotated the key of {concept!r}: the vault {out or vault} (keys in {(out or vault) / KEYS_DIR})")


@app.command("erase")
def erase_command(
    model: ModelArgument,
    concept: Annotated[list[str], typer.Option(help="A concept to erase, as for hide. Repeatable.")],
    out: Annotated[Path, typer.Option(help="Folder to write the vault to; it must not exist yet.")],
    method: Annotated[str, _method_option(with_keys=False, default="esd-x")] = "esd-x",
    preserve: Annotated[
        list[str] | None,
        typer.Option(
            help="A prompt kept as it was (methods that hold prompts: uce, rece, suppress, advpres). Repeatable. "
            "Built-in model, none given: the other concepts of its kind."
        ),
    ] = None,
    anchor: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=PROMPT: erase concept NAME toward PROMPT. Repeatable. Built-in model: another concept of "
            "the same kind stands in for NAME in each caption."
        ),
    ] = None,
    iterations: Annotated[
        int | None, typer.Option(help="Trained erasers: fine-tuning steps [default: per method and model family].")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Trained erasers: learning rate [default: per method and model family].")
    ] = None,
    eta: Annotated[float | None, typer.Option(help="ESD and its kin: negative-guidance strength.")] = None,
    lamb: Annotated[float | None, typer.Option(help="UCE, RECE: weight of staying close to the original.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the run [default: 0].")] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the interrupted run whose checkpoint sits beside --out.")
    ] = False,
    set_: SetOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Erase concepts from MODEL (ESD, UCE, RECE, AC, SDD, FMN, Receler, ...; other settings by --set), for
    comparison with hiding: a vault without keys."""
    use_threads(threads)
    spec = _chosen_method(method, with_keys=False)
    given = {"iterations": iterations, "lr": lr, "eta": eta, "lamb": lamb, "seed": seed}
    explicit = _method_settings(spec, method, {k: v for k, v in given.items() if v is not None}, set_ or [])
    concepts, preserve = parse_concepts(concept, anchor or []), preserve or []
    concepts, preserve = profile_for(model).fill_in(concepts, preserve, spec.name)
    with output_lock(out, resume) as checkpoint_dir:
        pipe = load_pipeline(model, device=device)
        config = checked(lambda: family_config(model_family(pipe), len(concepts), method, **explicit))
        result = spec.run(pipe, concepts, config, preserve=preserve, checkpoint_dir=checkpoint_dir, resume=resume)
        save_vault(out, pipe, result)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    say(f"wrote the vault {out} ({method}: erased, no keys)")


@app.command("generate")
def generate_command(
    vault: VaultArgument,
    prompt: Annotated[str, typer.Argument(help="The prompt to render.")],
    out: Annotated[Path, typer.Option(help="PNG file to write: a grid with one image per seed.")],
    key: Annotated[list[str] | None, typer.Option(help="Switch on the key of this concept. Repeatable.")] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds, one image each.")] = "0,1,2,3",
    steps: Annotated[int, typer.Option(help=f"Sampler steps (1 to {MAX_SAMPLER_STEPS}).")] = 25,
    guidance: Annotated[
        float, typer.Option(help=f"Classifier-free guidance scale (0 to {MAX_GUIDANCE:g}; 1 or less: none).")
    ] = 7.5,
    model: ModelOverride = None,
    passphrase_file: PassphraseOption = None,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Generate PROMPT from the vault's public model, with the named keys switched on."""
    use_threads(threads)
    seed_list = parse_seeds(seeds)
    check_positive(steps=steps)
    check_range("steps", steps, 1, MAX_SAMPLER_STEPS)
    check_range("guidance", guidance, 0, MAX_GUIDANCE)
    check_image_path(out)
    loaded = Vault.load(vault, keys=key or None, passphrase=read_passphrase(passphrase_file))
    with on_interrupt(f"nothing was written to '{out}'"):
        pipe = load_pipeline(model or loaded.manifest.base_model, device=device)
        loaded.apply(pipe)
        images = generate_images(pipe, [prompt] * len(seed_list), seed_list, keys=key, steps=steps, guidance=guidance)
    cols = min(len(images), 4)
    grid = image_grid(images, math.ceil(len(images) / cols), cols, labels=[f"seed {s}" for s in seed_list])
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    say(f"wrote {out} ({len(images)} images, keys: {', '.join(key or []) or 'none'})")


@app.command("inspect")
def inspect_command(vault: VaultArgument) -> None:
    """Show what a vault holds: base model, concepts and their keys, settings and training figures."""
    loaded = Vault.load(vault, keys=None)
    manifest = loaded.manifest
    summary = Table(title=as_text(f"vault {vault}"), show_header=False)
    rows = [
        ("method", manifest.method),
        ("model family", manifest.family or "?"),
        ("base model", manifest.base_model),
        ("base fingerprint", manifest.base_fingerprint[:16]),
        ("public fingerprint", manifest.public_fingerprint[:16]),
        ("created", manifest.created or "?"),
        ("made by", f"conceptvault {manifest.conceptvault_version or '?'}"),
        ("placement, m", f"{manifest.placement or '-'}, {manifest.m if manifest.m is not None else '-'}"),
        ("public tensors", str(manifest.public_tensors)),
        ("preserve", "; ".join(manifest.preserve) or "-"),
    ]
    for name, value in rows:
        summary.add_row(name, as_text(value))
    console.print(summary)
    console.print(_concepts_table(loaded))
    console.print(_settings_table(manifest))
    if manifest.history:
        console.print(_history_table(manifest.history))


def _history_table(history: list[dict]) -> Table:
    """What was done to the vault, oldest first: hidden, added, rotated; when, and the settings that differ
    from the run before."""
    table = Table(title="history")
    for column in ("when", "what", "concepts", "settings (changed)"):
        table.add_column(column)
    previous: dict = {}
    for event in history:
        settings = event.get("settings", {})
        changed = {k: v for k, v in settings.items() if previous.get(k) != v}
        shown = "first run" if not previous else ", ".join(f"{k}={v}" for k, v in sorted(changed.items())) or "-"
        table.add_row(
            as_text(event.get("created", "?")),
            as_text(event.get("action", "?")),
            as_text(", ".join(event.get("concepts", []))),
            as_text(shown),
        )
        previous = settings
    return table


class ExportFormat(str, Enum):
    DIFFUSERS = "diffusers"  # a pipeline folder for from_pretrained
    SINGLE_FILE = "single-file"  # one checkpoint in the original Stable Diffusion layout


@app.command("export")
def export_command(
    vault: VaultArgument,
    out: Annotated[Path, typer.Option(help="Where to write the public model; it must not exist yet.")],
    format: Annotated[
        ExportFormat, typer.Option(help="diffusers: a pipeline folder; single-file: one original-layout checkpoint.")
    ] = ExportFormat.DIFFUSERS,
    model: ModelOverride = None,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
) -> None:
    """Write the vault's public model (no keys), for from_pretrained or for from_single_file and common UIs."""
    use_threads(threads)
    loaded = Vault.load(vault, keys=None)
    if out.exists():
        raise ConceptVaultError(f"'{out}' already exists; choose another output path or delete it first.")
    if format == ExportFormat.SINGLE_FILE and out.suffix != ".safetensors":
        raise ConceptVaultError(f"--out '{out}' must end in .safetensors for a single-file export.")
    if format == ExportFormat.SINGLE_FILE and not out.absolute().parent.is_dir():
        raise ConceptVaultError(
            f"the folder '{out.absolute().parent}' does not exist; create it, or give --out in a folder that does."
        )
    check_writable_folder(out)
    pipe = load_pipeline(model or loaded.manifest.base_model, device=device)
    loaded.export(pipe, out, format=format.value)
    how = "StableDiffusionPipeline.from_pretrained" if format == ExportFormat.DIFFUSERS else "from_single_file"
    say(f"wrote the public model to {out}; load it with {how}")


def _print_losses(stats: dict) -> None:
    probe = stats.get("probe") or {}
    before, after = probe.get("before") or {}, probe.get("after") or {}
    table = Table(title=f"{stats['steps']} steps in {stats['seconds']:.0f} s: losses on fixed latents")
    for column in ("loss", "before", "after"):
        table.add_column(column)
    for name in after:
        table.add_row(name, f"{before.get(name, float('nan')):.4g}", f"{after[name]:.4g}")
    console.print(table)


def _concepts_table(loaded: Vault) -> Table:
    table = Table(title="concepts")
    for column in ("key", "prompts", "anchor", "key file"):
        table.add_column(column)
    for entry in loaded.manifest.concepts:
        present = entry.key_file and loaded.path and (loaded.path / entry.key_file).is_file()
        kind = "passphrase" if (entry.key_file or "").endswith(".key") else "plain"
        status = (
            f"{entry.key_file} ({kind})"
            if present
            else ("no key: erased" if not loaded.method.has_keys else "not here")
        )
        anchor = entry.anchor or "(empty)"
        if entry.anchors:  # one example shows what kind of anchors they are ("red" toward "green")
            prompt, own = next(iter(entry.anchors.items()))
            anchor += f"; per prompt: {len(entry.anchors)}, '{prompt}' toward '{own}', ..."
        table.add_row(*map(as_text, (entry.name, "; ".join(entry.prompts), anchor, status)))
    return table


def _settings_table(manifest) -> Table:
    table = Table(title="settings and figures", show_header=False)
    for name, value in sorted(manifest.config.items()):
        table.add_row(as_text(name), as_text(value))
    stats = manifest.stats
    for name in ("steps", "model_updates", "seconds"):
        if name in stats:
            table.add_row(f"trained {name}", as_text(stats[name]))
    probe = stats.get("probe") if isinstance(stats.get("probe"), dict) else {}
    for moment in ("before", "after"):
        losses = probe.get(moment) if isinstance(probe.get(moment), dict) else {}
        table.add_row(f"losses {moment}", as_text(", ".join(f"{k} {_number(v)}" for k, v in losses.items()) or "-"))
    return table


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
