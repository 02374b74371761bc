"""The ``conceptvault`` command line: one thin function per command over the library.

Add a command with ``@app.command("name")`` or a group with ``app.add_typer(sub_app, name="group")``.
Every :class:`ConceptVaultError` and every bad input ends as one ``error: ...`` line and exit status 1.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # keep optional-backend notices off the terminal

import math
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .attacks import Attack
from .backbone import load_pipeline
from .checkpoint import output_lock
from .defaults import esd_family_config, family_config, model_family, seal_family_config
from .errors import ConceptVaultError
from .generate import generate_images, image_grid
from .hide import HideConfig, KeyInit, hide
from .key import Placement
from .latents import LatentSource
from .manifest import KEYS_DIR
from .seal import SealConfig, seal
from .training import Concept, LossSpace, TrainedLayers
from .vault import Vault, save_vault

app = typer.Typer(
    name="conceptvault",
    help="Hide a concept in a text-to-image diffusion model behind a secret key, and recover it with the key.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()

_HELP = {f.name: f.metadata["help"] for f in fields(HideConfig)}


def _setting(name: str) -> typer.models.OptionInfo:
    """A command-line option for a HideConfig field, with the field's help text; unset, the model family's
    default applies (see ``conceptvault.defaults``)."""
    return typer.Option(help=f"{_HELP[name]} [default: per model family]", rich_help_panel="Hiding settings")


ModelArgument = Annotated[str, typer.Argument(help="Base model: 'builtin', a diffusers pipeline folder, or a hub id.")]
VaultArgument = Annotated[Path, typer.Argument(help="The vault folder.")]
PassphraseOption = Annotated[
    Path | None, typer.Option(help="File whose first line is the passphrase protecting the keys.")
]
DeviceOption = Annotated[
    str | None, typer.Option(help="Torch device, such as cpu or cuda (default: cuda if available).")
]
ModelOverride = Annotated[
    str | None, typer.Option("--model", help="Base model to load instead of the one named in the vault's manifest.")
]


class HideMethod(str, Enum):
    KPOP = "kpop"
    SEALED = "sealed"


def _sealed_settings(explicit: dict, key_rank: int | None) -> dict:
    """The hide options given, as sealed-hiding settings; one that sealed hiding has not is refused."""
    from .seal import SealConfig

    known = {f.name for f in fields(SealConfig)}
    foreign = sorted(set(explicit) - known)
    if foreign:
        raise ConceptVaultError(f"--{foreign[0].replace('_', '-')} is not a setting of sealed hiding; leave it out.")
    return {**explicit, **({"key_rank": key_rank} if key_rank is not None else {})}


@app.command("hide")
def hide_command(
    model: ModelArgument,
    concept: Annotated[
        list[str],
        typer.Option(
            help="A concept to hide: 'star', or phrasings 'star|five-pointed star' (the first names the key). "
            "Repeatable."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Folder to write the vault to; it must not exist yet.")],
    preserve: Annotated[
        list[str] | None, typer.Option(help="A prompt the model must keep rendering as before. Repeatable.")
    ] = None,
    anchor: Annotated[
        list[str] | None,
        typer.Option(help="NAME=PROMPT: hide concept NAME toward PROMPT instead of the empty prompt. Repeatable."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the interrupted run whose checkpoint sits beside --out.")
    ] = False,
    passphrase_file: PassphraseOption = None,
    device: DeviceOption = None,
    method: Annotated[
        HideMethod, typer.Option(help="kpop: a prompt key (the method's paper); sealed: the key carries the concept.")
    ] = HideMethod.KPOP,
    key_rank: Annotated[
        int | None,
        typer.Option(
            help="sealed: rank of each weight change in the key (0: whole).", rich_help_panel="Hiding settings"
        ),
    ] = None,
    model_updates: Annotated[int | None, _setting("model_updates")] = None,
    k: Annotated[int | None, _setting("k")] = None,
    lr: Annotated[float | None, _setting("lr")] = None,
    key_lr: Annotated[float | None, _setting("key_lr")] = None,
    lambda_hide: Annotated[float | None, _setting("lambda_hide")] = None,
    lambda_rec: Annotated[float | None, _setting("lambda_rec")] = None,
    lambda_pres: Annotated[float | None, _setting("lambda_pres")] = None,
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
    checkpoint_every: Annotated[int | None, _setting("checkpoint_every")] = None,
) -> None:
    """Hide concepts in MODEL behind keys and write a vault."""
    settings = locals()
    explicit = {f.name: settings[f.name] for f in fields(HideConfig) if settings[f.name] is not None}
    if method == HideMethod.SEALED:
        explicit = _sealed_settings(explicit, key_rank)
    _checked(lambda: (SealConfig if method == HideMethod.SEALED else HideConfig)(**explicit))  # before any loading
    concepts = _concepts(concept, anchor or [])
    passphrase = _read_passphrase(passphrase_file)
    with output_lock(out, resume) as checkpoint_dir:
        pipe = load_pipeline(model, device=device)
        family = model_family(pipe)
        options = dict(preserve=preserve or [], checkpoint_dir=checkpoint_dir, resume=resume)
        if method == HideMethod.SEALED:
            result = seal(pipe, concepts, _checked(lambda: seal_family_config(family, **explicit)), **options)
        else:
            config = _checked(lambda: family_config(family, **explicit))
            result = hide(pipe, concepts, config, passphrase=passphrase, **options)
        save_vault(out, pipe, result, passphrase=passphrase)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    _print_losses(result.stats)
    _say(f"wrote the vault {out} (keys in {out / KEYS_DIR})")


class EraseMethod(str, Enum):
    ESD_X = "esd-x"  # ESD, cross-attention fine-tuned
    ESD_U = "esd-u"  # ESD, everything but cross-attention fine-tuned
    UCE = "uce"  # the closed-form edit of the cross-attention projections


@app.command("erase")
def erase_command(
    model: ModelArgument,
    concept: Annotated[list[str], typer.Option(help="A concept to erase, as for hide. Repeatable.")],
    out: Annotated[Path, typer.Option(help="Folder to write the vault to; it must not exist yet.")],
    method: Annotated[EraseMethod, typer.Option(help="The erasure method.")] = EraseMethod.ESD_X,
    preserve: Annotated[list[str] | None, typer.Option(help="UCE: a prompt kept as it was. Repeatable.")] = None,
    anchor: Annotated[
        list[str] | None, typer.Option(help="NAME=PROMPT: erase concept NAME toward PROMPT. Repeatable.")
    ] = None,
    iterations: Annotated[int | None, typer.Option(help="ESD: fine-tuning steps [default: per model family].")] = None,
    lr: Annotated[float | None, typer.Option(help="ESD: learning rate [default: per model family].")] = None,
    eta: Annotated[float | None, typer.Option(help="ESD: negative-guidance strength.")] = None,
    lamb: Annotated[float | None, typer.Option(help="UCE: weight of staying close to the original.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the run.")] = 0,
    device: DeviceOption = None,
) -> None:
    """Erase concepts from MODEL with ESD or UCE, for comparison with hiding: a vault without keys."""
    from .esd import EsdConfig, erase_esd
    from .uce import UceConfig, erase_uce

    concepts = _concepts(concept, anchor or [])
    given = {"iterations": iterations, "lr": lr, "eta": eta}
    explicit = {name: value for name, value in given.items() if value is not None}
    if method == EraseMethod.UCE:
        config = _checked(lambda: UceConfig(seed=seed, **({"lamb": lamb} if lamb is not None else {})))
    else:
        train = "xattn" if method == EraseMethod.ESD_X else "noxattn"
        _checked(lambda: EsdConfig(**explicit))
    with output_lock(out, resume=False):
        pipe = load_pipeline(model, device=device)
        if method == EraseMethod.UCE:
            result = erase_uce(pipe, concepts, config, preserve=preserve or [])
        else:
            config = _checked(lambda: esd_family_config(model_family(pipe), train=train, seed=seed, **explicit))
            result = erase_esd(pipe, concepts, config)
        save_vault(out, pipe, result)
    _say(f"wrote the vault {out} ({method.value}: erased, no keys)")


@app.command("generate")
def generate_command(
    vault: VaultArgument,
    prompt: Annotated[str, typer.Argument(help="The prompt to render.")],
    out: Annotated[Path, typer.Option(help="PNG file to write: a grid with one image per seed.")],
    key: Annotated[list[str] | None, typer.Option(help="Switch on the key of this concept. Repeatable.")] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds, one image each.")] = "0,1,2,3",
    steps: Annotated[int, typer.Option(help="Sampler steps.")] = 25,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 7.5,
    model: ModelOverride = None,
    passphrase_file: PassphraseOption = None,
    device: DeviceOption = None,
) -> None:
    """Generate PROMPT from the vault's public model, with the named keys switched on."""
    seed_list = _seeds(seeds)
    _check_positive(steps=steps)
    _check_image_path(out)
    loaded = Vault.load(vault, keys=key or None, passphrase=_read_passphrase(passphrase_file))
    pipe = load_pipeline(model or loaded.manifest.base_model, device=device)
    loaded.apply(pipe)
    images = generate_images(pipe, [prompt] * len(seed_list), seed_list, keys=key, steps=steps, guidance=guidance)
    cols = min(len(images), 4)
    grid = image_grid(images, math.ceil(len(images) / cols), cols, labels=[f"seed {s}" for s in seed_list])
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    _say(f"wrote {out} ({len(images)} images, keys: {', '.join(key or []) or 'none'})")


@app.command("inspect")
def inspect_command(vault: VaultArgument) -> None:
    """Show what a vault holds: base model, concepts and their keys, settings and training figures."""
    loaded = Vault.load(vault, keys=None)
    manifest = loaded.manifest
    summary = Table(title=_text(f"vault {vault}"), show_header=False)
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
        summary.add_row(name, _text(value))
    console.print(summary)
    console.print(_concepts_table(loaded))
    console.print(_settings_table(manifest))


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
) -> None:
    """Write the vault's public model (no keys), for from_pretrained or for from_single_file and common UIs."""
    loaded = Vault.load(vault, keys=None)
    if out.exists():
        raise ConceptVaultError(f"'{out}' already exists; choose another output path or delete it first.")
    if format == ExportFormat.SINGLE_FILE and out.suffix != ".safetensors":
        raise ConceptVaultError(f"--out '{out}' must end in .safetensors for a single-file export.")
    pipe = load_pipeline(model or loaded.manifest.base_model, device=device)
    loaded.export(pipe, out, format=format.value)
    how = "StableDiffusionPipeline.from_pretrained" if format == ExportFormat.DIFFUSERS else "from_single_file"
    _say(f"wrote the public model to {out}; load it with {how}")


@app.command("evaluate")
def evaluate_command(
    vault: VaultArgument,
    suite: Annotated[
        str,
        typer.Option(
            help="A built-in suite (shape, colour, style, five-shapes-a, five-shapes-b) or a suite JSON file."
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
    model: ModelOverride = None,
    passphrase_file: PassphraseOption = None,
    device: DeviceOption = None,
) -> None:
    """Measure a vault: ESR, PSR, RSR and the key holder's PSR, beside the original model's rates.

    On several GPUs: accelerate launch -m conceptvault.cli evaluate VAULT ... (the processes share the images).
    """
    from .evaluate import print_summary, run_suite, write_json, write_report

    _check_positive(size=size, batch_size=batch_size)
    chosen = _suite(suite, size, concept)
    loaded = Vault.load(vault, keys=None if no_key else "all", passphrase=_read_passphrase(passphrase_file))
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
    _say(f"report: {files.html}   figures: {files.json}")


@app.command("compare")
def compare_command(
    vaults: Annotated[list[Path], typer.Argument(help="Vault folders made from one base model.")],
    out: Annotated[Path, typer.Option(help="Folder for the images and the comparison files.")],
    suite: Annotated[str, typer.Option(help="A built-in suite or a suite JSON file.")] = "shape",
    concept: Annotated[str | None, typer.Option(help="The hidden concept of a single-concept built-in suite.")] = None,
    size: Annotated[int | None, typer.Option(help="Images per concept of a built-in suite.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images generated per batch.")] = 8,
    model: ModelOverride = None,
    passphrase_file: PassphraseOption = None,
    device: DeviceOption = None,
) -> None:
    """Measure several vaults (hiding and erasure) on one suite: one table, one chart, one report."""
    from .evaluate.compare import compare, write_comparison

    _check_positive(size=size, batch_size=batch_size)
    chosen = _suite(suite, size, concept)
    passphrase = _read_passphrase(passphrase_file)
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
    console.print(_text(files["md"].read_text()))
    _say(f"comparison: {files['html']}   chart: {files['png']}   figures: {files['json']}")


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
    steps: Annotated[int, typer.Option(help="Optimisation steps of the trained attacks.")] = 300,
    images: Annotated[int, typer.Option(help="Pictures of the concept the trained attacks learn from.")] = 64,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate of the trained attacks (default: per attack).")
    ] = None,
    images_from: Annotated[
        Path | None, typer.Option(help="Folder of pictures of the concept (built-in world: rendered if absent).")
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option(help="File of attack prompts, one per line (added to the suite's).")
    ] = None,
    control: Annotated[
        list[str] | None,
        typer.Option(
            help="Attack another model the same way: 'original', a vault folder or a model folder. Repeatable."
        ),
    ] = None,
    other_keys: Annotated[
        list[Path] | None, typer.Option(help="A vault whose keys the random-key attack also tries. Repeatable.")
    ] = None,
    model: ModelOverride = None,
    passphrase_file: PassphraseOption = None,
    device: DeviceOption = None,
) -> None:
    """Attack the vault's public model without its key; report unauthorised recovery beside RSR and the original."""
    from .attack_campaign import Campaign

    _check_positive(size=size, steps=steps, images=images)
    chosen = _suite(suite, size, concept)
    campaign = Campaign.prepare(
        vault,
        chosen,
        steps=steps,
        images=images,
        lr=lr,
        images_from=images_from,
        prompts_file=prompts,
        controls=control or [],
        other_vaults=other_keys or [],
        model=model,
        passphrase=_read_passphrase(passphrase_file),
        device=device,
    )
    run = campaign.run([Attack(a) for a in attack] if attack else list(Attack), log=_say)
    files = campaign.write(run, out)
    console.print(_text(files["md"].read_text()))
    _say(f"curves: {files['png']}   figures: {files['json']}")


@app.command("serve")
def serve_command(
    vaults: Annotated[list[Path], typer.Argument(help="Vault folders to serve (each with its keys).")],
    db: Annotated[str, typer.Option(help="Grants database: a SQLite file, or a SQLAlchemy URL (postgresql://...).")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    queue: Annotated[int, typer.Option(help="Requests that may wait; more are refused with 429.")] = 32,
    max_batch: Annotated[int, typer.Option(help="Images generated in one pipeline call.")] = 8,
    rate: Annotated[float, typer.Option(help="Requests per minute per user.")] = 60.0,
    passphrase_file: PassphraseOption = None,
    device: DeviceOption = None,
) -> None:
    """Serve vaults over HTTP: the public model to every user, a key only with a live grant (docs at /docs)."""
    import uvicorn

    from .serve import Limits, build_server

    _check_positive(port=port, queue=queue, max_batch=max_batch)
    passphrase = _read_passphrase(passphrase_file) or os.environ.get("CONCEPTVAULT_PASSPHRASE") or None
    app_, engine = build_server(
        vaults,
        db,
        passphrase=passphrase,
        device=device,
        queue_size=queue,
        max_batch=max_batch,
        limits=Limits(rate_per_minute=rate),
    )
    _say(f"serving {', '.join(v.name for v in vaults)} on http://{host}:{port} (API docs at /docs)")
    try:
        uvicorn.run(app_, host=host, port=port, log_level="warning")
    finally:
        engine.stop()


users_app = typer.Typer(help="The users of a served vault, and their tokens.", no_args_is_help=True)
grants_app = typer.Typer(help="Who may switch on which key of which served vault, until when.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(grants_app, name="grants")
DbOption = Annotated[str, typer.Option(help="The grants database (SQLite file or SQLAlchemy URL).")]


def _store(db: str):
    from .serve.store import AccessStore

    return AccessStore(db)


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="The user's name.")],
    db: DbOption,
    admin: Annotated[bool, typer.Option(help="May add and revoke grants.")] = False,
) -> None:
    """Add a user and print their token (shown this once; only its hash is stored)."""
    token = _store(db).add_user(name, admin=admin)
    _say(f"added {name}{' (administrator)' if admin else ''}; token (shown once): {token}")


@users_app.command("list")
def users_list(db: DbOption) -> None:
    """List the users."""
    for user in _store(db).users():
        _say(f"{user['name']}{'  admin' if user['admin'] else ''}  since {user['created']}")


@users_app.command("remove")
def users_remove(name: Annotated[str, typer.Argument(help="The user's name.")], db: DbOption) -> None:
    """Remove a user and their grants (the audit log keeps their requests)."""
    _store(db).remove_user(name)
    _say(f"removed {name}")


@grants_app.command("add")
def grants_add(
    user: Annotated[str, typer.Argument(help="Who.")],
    vault: Annotated[str, typer.Argument(help="The served vault's name (its folder name).")],
    concept: Annotated[str, typer.Argument(help="The concept whose key they may switch on.")],
    db: DbOption,
    days: Annotated[float | None, typer.Option(help="Days until the grant expires (default: never).")] = None,
) -> None:
    """Let USER switch on CONCEPT's key of VAULT."""
    grant_id = _store(db).grant(user, vault, concept, days)
    _say(f"grant {grant_id}: {user} may unlock {concept!r} of {vault}" + (f" for {days:g} days" if days else ""))


@grants_app.command("revoke")
def grants_revoke(
    grant_id: Annotated[int, typer.Argument(help="The grant's id (see grants list).")], db: DbOption
) -> None:
    """Revoke a grant at once."""
    _store(db).revoke(grant_id)
    _say(f"revoked grant {grant_id}")


@grants_app.command("list")
def grants_list(db: DbOption, user: Annotated[str | None, typer.Option(help="Only this user's.")] = None) -> None:
    """List grants, live or not."""
    table = Table(title="grants")
    for column in ("id", "user", "vault", "concept", "expires", "state"):
        table.add_column(column)
    for g in _store(db).grants(user):
        state = "revoked" if g["revoked"] else ("live" if g["live"] else "expired")
        table.add_row(*map(_text, (g["id"], g["user"], g["vault"], g["concept"], g["expires"] or "never", state)))
    console.print(table)


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for the vault, the images and the report.")] = Path("demo-out"),
    shape: Annotated[str, typer.Option(help="The shape of the built-in world to hide.")] = "star",
    images: Annotated[int, typer.Option(help="Images per shape in the evaluation.")] = 32,
) -> None:
    """Hide a shape in the built-in model, measure it, and write an HTML report (a few minutes on a CPU)."""
    from .demo import DemoPlan, run_demo

    _check_positive(images=images)
    run_demo(out, DemoPlan(shape=shape, images_per_shape=images), console=console)


world_app = typer.Typer(
    help="The built-in Shapes world: sample its model, or train it again from scratch.", no_args_is_help=True
)
app.add_typer(world_app, name="world")


@world_app.command("sample")
def world_sample_command(
    prompt: Annotated[str, typer.Argument(help="What to draw, e.g. 'a striped red star'.")],
    out: Annotated[Path, typer.Option(help="PNG file to write: a grid with one image per seed.")] = Path("sample.png"),
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds, one image each.")] = "0,1,2,3,4,5,6,7",
    model: Annotated[str, typer.Option(help="The model to sample.")] = "builtin",
) -> None:
    """Draw PROMPT with the built-in model (25 steps, guidance 3) and write a grid."""
    from .world.quality import GUIDANCE, SAMPLE_STEPS

    seed_list = _seeds(seeds)
    _check_image_path(out)
    pipe = load_pipeline(model)
    images = generate_images(pipe, [prompt] * len(seed_list), seed_list, steps=SAMPLE_STEPS, guidance=GUIDANCE)
    cols = min(len(images), 8)
    image_grid(images, math.ceil(len(images) / cols), cols).save(out)
    _say(f"wrote {out}")


@world_app.command("train")
def world_train_command(
    out: Annotated[Path, typer.Option(help="Folder to write model/ and judge/ into; run again to continue.")] = Path(
        "world-model"
    ),
    denoiser_steps: Annotated[int, typer.Option(help="Training steps of the text encoder and UNet.")] = 15000,
    vae_steps: Annotated[int, typer.Option(help="Training steps of the VAE, encoder and decoder.")] = 2500,
    decoder_steps: Annotated[int, typer.Option(help="Training steps of the VAE's decoder, encoder frozen.")] = 1500,
    judge_steps: Annotated[int, typer.Option(help="Training steps of the judge (0: no judge).")] = 3000,
    init_from: Annotated[
        Path | None, typer.Option(help="Continue this model folder's VAE and denoiser instead of starting anew.")
    ] = None,
    vae_from: Annotated[
        str | None, typer.Option(help="Use this model's VAE as it is ('builtin' or a folder); train the rest anew.")
    ] = None,
    without: Annotated[
        list[str] | None, typer.Option(help="A shape left out of the world: the model never sees it. Repeatable.")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's choice).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the whole run.")] = 0,
) -> None:
    """Train the built-in model and judge (uses a GPU when there is one); a second call continues the run."""
    from .world import BUILTIN_MODEL_DIR, SHAPES
    from .world.train import WorldTrainConfig, train_world

    _check_positive(denoiser_steps=denoiser_steps, threads=threads)
    unknown = [shape for shape in without or [] if shape not in SHAPES]
    if unknown:
        raise ConceptVaultError(
            f"--without {unknown[0]!r} is not a shape of the world; choose from {', '.join(SHAPES)}."
        )
    if threads:
        import torch

        torch.set_num_threads(threads)
    config = WorldTrainConfig(
        denoiser_steps=denoiser_steps,
        vae_steps=vae_steps,
        decoder_steps=decoder_steps,
        judge_steps=judge_steps,
        seed=seed,
        init_from=str(init_from) if init_from else None,
        vae_from=str(BUILTIN_MODEL_DIR) if vae_from == "builtin" else vae_from,
        without=list(without or []),
    )
    with _stage_progress() as progress:
        report = train_world(out, config, BUILTIN_MODEL_DIR / "tokenizer", log=_say, progress=progress)
    _say(f"wrote {out / 'model'}; judge accuracy {report.get('judge_accuracy', '(no judge trained)')}")


# -- parsing and printing ---------------------------------------------------------------------------


def _checked(make):
    """Turn a ValueError raised while validating user input into a one-line user-facing error."""
    try:
        return make()
    except ValueError as error:
        raise ConceptVaultError(str(error)) from None


def _concepts(texts: list[str], anchors: list[str]) -> list[Concept]:
    concepts = [_checked(lambda text=text: Concept.parse(text)) for text in texts]
    names = {c.name: c for c in concepts}
    for item in anchors:
        name, separator, prompt = item.partition("=")
        if not separator or name.strip() not in names:
            raise ConceptVaultError(
                f"--anchor '{item}' must read NAME=PROMPT with NAME one of the concepts ({', '.join(names)})."
            )
        names[name.strip()].anchor = prompt.strip()
    return concepts


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConceptVaultError(f"--seeds '{text}' must be comma-separated integers, such as 0,1,2,3.") from None
    if not seeds:
        raise ConceptVaultError("--seeds names no seed; give comma-separated integers, such as 0,1,2,3.")
    bad = [s for s in seeds if not 0 <= s < 2**63]
    if bad:
        raise ConceptVaultError(f"the seed {bad[0]} is out of range; give seeds from 0 to 2^63 - 1.")
    return seeds


def _suite(suite: str, size: int | None, concept: str | None):
    """A built-in suite by name or a suite JSON file (loads no model)."""
    from .evaluate import resolve_suite

    return resolve_suite(suite, size=size, concept=concept)


def _check_positive(**options: int | None) -> None:
    """Counts given on the command line must be at least 1 (None: not given, the default applies)."""
    for name, value in options.items():
        if value is not None and value < 1:
            raise ConceptVaultError(f"--{name.replace('_', '-')} must be at least 1; got {value}.")


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _check_image_path(out: Path) -> None:
    """Refuse, before any work, an output that is a folder or has no image file extension."""
    if out.is_dir():
        raise ConceptVaultError(f"--out '{out}' is a folder; give an image file such as {out / 'grid.png'}.")
    if out.suffix.lower() not in _IMAGE_SUFFIXES:
        raise ConceptVaultError(f"--out '{out}' must end in {', '.join(_IMAGE_SUFFIXES)}, such as grid.png.")


def _read_passphrase(file: Path | None) -> str | None:
    if file is None:
        return None
    try:
        lines = file.read_text().splitlines()
    except OSError as error:
        raise ConceptVaultError(f"cannot read the passphrase file '{file}' ({error.strerror}).") from None
    if not lines or not lines[0]:
        raise ConceptVaultError(f"the passphrase file '{file}' is empty; write the passphrase on its first line.")
    return lines[0]


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
        table.add_row(*map(_text, (entry.name, "; ".join(entry.prompts), entry.anchor or "(empty)", status)))
    return table


def _settings_table(manifest) -> Table:
    table = Table(title="settings and figures", show_header=False)
    for name, value in sorted(manifest.config.items()):
        table.add_row(_text(name), _text(value))
    stats = manifest.stats
    for name in ("steps", "model_updates", "seconds"):
        if name in stats:
            table.add_row(f"trained {name}", _text(stats[name]))
    probe = stats.get("probe") if isinstance(stats.get("probe"), dict) else {}
    for moment in ("before", "after"):
        losses = probe.get(moment) if isinstance(probe.get(moment), dict) else {}
        table.add_row(f"losses {moment}", _text(", ".join(f"{k} {_number(v)}" for k, v in losses.items()) or "-"))
    return table


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _text(value) -> Text:
    """Text from a file or a user, shown as it is: no Rich markup, control characters made visible, so a
    manifest cannot restyle, clear or retitle the terminal."""
    return Text("".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(value)))


def _say(message: str) -> None:
    """Print a line that may hold paths or names given by the user, as plain text."""
    console.print(_text(message))


@contextmanager
def _stage_progress(every: float = 60.0):
    """A progress line for multi-stage training: the stage's name, its step and its latest loss. Where the
    output is no terminal (a log file), a plain line every ``every`` seconds instead."""
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("training", total=None)
        last = [0.0]

        def advance(step: int, total: int, losses: dict) -> None:
            description = ", ".join(f"{k} {v:.4f}" for k, v in losses.items()) or "encoding"
            bar.update(task, completed=step + 1, total=total, description=description)
            if not console.is_terminal and (time.monotonic() - last[0] >= every or step + 1 == total):
                last[0] = time.monotonic()
                print(f"{time.strftime('%H:%M:%S')} {step + 1}/{total} {description}", flush=True)

        yield advance


def _fail(message: str) -> None:
    print(f"error: {_text(' '.join(message.split())).plain}", file=sys.stderr)
    sys.exit(1)


def _quiet_libraries() -> None:
    """Keep library notices and loading bars off the terminal; ConceptVault shows its own progress."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()


def main(argv: list[str] | None = None) -> None:
    """The console entry point: runs the app and turns every user-facing failure into one line."""
    try:
        _quiet_libraries()
        code = app(args=argv, prog_name="conceptvault", standalone_mode=False)
    except ConceptVaultError as error:
        _fail(str(error))
    except typer.TyperException as error:  # usage errors: a missing option, a bad choice or number
        if error.format_message():
            _fail(error.format_message())
        code = 0  # a bare command (group) without a message: its help was shown, nothing failed
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted before anything was written.")
    except OSError as error:  # the file system refused: a read-only folder, a full disk, a missing file
        _fail(f"{error.strerror or error}: '{error.filename}'." if error.filename else str(error))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # `accelerate launch -m conceptvault.cli evaluate ...` runs the command on each process
    main()
