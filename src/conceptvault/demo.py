"""The demo: the whole story on the built-in model, in a few minutes on a laptop CPU.

Hide one shape (under every name it has) while holding the other shapes to the original, save the
vault, then measure it with the world suite: original, public and key-holder images from the same
prompts and seeds, judged, tabulated and written as an HTML report.
"""

from __future__ import annotations

import multiprocessing
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from conceptvault.backbone import BUILTIN, load_pipeline
from conceptvault.checkpoint import CHECKPOINT_FILE, checkpoint_folder, output_lock
from conceptvault.concepts import Concept
from conceptvault.defaults import Family, family_config
from conceptvault.errors import ConceptVaultError
from conceptvault.evaluate import print_summary, resolve_suite, run_suite, write_report
from conceptvault.methods.kpop import HideConfig, hide
from conceptvault.records import evaluation_record, write_record
from conceptvault.registry import get_method
from conceptvault.vault import Vault, save_vault
from conceptvault.world.profile import WORLD_CAPTIONS, world_prompts


def make_world_vault(
    method: str, folder: Path, hidden: list[str], settings: dict | None = None, own_process: bool = False
) -> Path:
    """A vault of the built-in model hiding or erasing the shapes ``hidden`` with ``method``'s default
    settings (any registered method or variant) and ``settings`` on top, made once: a folder that exists
    already is reused (how the benches resume), and a run that was interrupted continues from the checkpoint it
    left beside the folder (``<folder>.checkpoint``).

    ``hardened`` is ``kpop`` with an attacker key re-learned every second model update (``adversary_every``).
    ``own_process``: make it in a process of its own (with this one's thread count), so that the peak memory
    its manifest records is its own, not that of everything this process did before.
    """
    name = "kpop" if method == "hardened" else method
    spec = get_method(name)
    if folder.exists():
        return folder
    if own_process:
        args = (method, folder, hidden, settings, torch.get_num_threads())
        child = multiprocessing.get_context("spawn").Process(target=_make_world_vault_with_threads, args=args)
        child.start()
        child.join()
        if child.exitcode != 0:
            raise ConceptVaultError(
                f"making the {method} vault failed in its own process (exit code {child.exitcode})."
            )
        return folder
    concepts, preserve = world_prompts(hidden, WORLD_CAPTIONS.get(spec.name, {}))  # erasure: names only
    explicit = {**({"adversary_every": 2} if method == "hardened" else {}), **(settings or {})}
    pipe = load_pipeline(BUILTIN)
    config = family_config(Family.SMALL, len(hidden), name, **explicit)
    checkpoints = checkpoint_folder(folder)
    resume = (checkpoints / CHECKPOINT_FILE).is_file()
    result = spec.run(pipe, concepts, config, preserve=preserve, checkpoint_dir=checkpoints, resume=resume)
    save_vault(folder, pipe, result)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return folder


def _make_world_vault_with_threads(method: str, folder: Path, hidden: list[str], settings, threads: int) -> None:
    torch.set_num_threads(threads)
    make_world_vault(method, folder, hidden, settings)


def hide_and_evaluate(
    out: Path,
    concepts: list[Concept],
    preserve: list[str],
    config: HideConfig,
    suite,
    console: Console | None = None,
    progress: bool = True,
    original_images: Path | None = None,
):
    """Hide ``concepts`` in the built-in model (or reuse the vault in ``out``), evaluate with ``suite``, report.

    ``original_images``: a folder for the original model's images shared with other runs (made once)."""
    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    vault_path = out / "vault"
    if not vault_path.exists():
        console.print(f"[bold]1/2[/] hiding {', '.join(repr(c.name) for c in concepts)} in the built-in model")
        resume = (vault_path.with_name("vault.checkpoint") / CHECKPOINT_FILE).is_file()
        with output_lock(vault_path, resume) as checkpoint_dir:
            pipe = load_pipeline(BUILTIN)
            result = hide(
                pipe,
                concepts,
                config,
                preserve=preserve,
                checkpoint_dir=checkpoint_dir,
                resume=resume,
                progress=progress,
            )
            Vault.from_hiding(pipe, result).save(vault_path)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    console.print("[bold]2/2[/] evaluating: original, public and key-holder images, same prompts and seeds")
    vault = Vault.load(vault_path, keys="all")
    evaluation = run_suite(
        load_pipeline(BUILTIN),
        vault,
        suite,
        out / "evaluation",
        original_images=original_images,
        progress=progress,
        console=console,
    )
    print_summary(evaluation, console=console)
    files = write_report(evaluation)
    console.print(f"report: {files.html}   figures: {files.json}   vault: {vault_path}", markup=False)
    return evaluation, files


@dataclass
class DemoPlan:
    """What the demo hides and how many images it judges: of the hidden shape (64, so that ESR and RSR
    move by 1.6 points an image), and of each of the nine kept shapes (16 each: PSR rests on 144)."""

    shape: str = "star"
    hidden_images: int = 64
    kept_images: int = 16
    config: HideConfig = field(default_factory=lambda: family_config(Family.SMALL))


def run_demo(out: Path, plan: DemoPlan | None = None, console: Console | None = None, progress: bool = True):
    """Hide one shape under all its names, keep the other nine, measure and report; the figures are also
    written as a measurement record, ``out/demo-<shape>.json`` (publish it with ``bench/render_results.py --add``)."""
    plan = plan or DemoPlan()
    started = time.perf_counter()
    suite = resolve_suite("shape", concept=plan.shape, size=plan.hidden_images, kept_size=plan.kept_images)
    concepts, preserve = world_prompts([plan.shape], WORLD_CAPTIONS["kpop"])
    evaluation, files = hide_and_evaluate(out, concepts, preserve, plan.config, suite, console, progress)
    record = evaluation_record(
        evaluation,
        id=f"demo-{plan.shape}",
        title=f"The demo: {plan.shape} hidden in the built-in model, the other nine shapes kept",
        command=f"conceptvault demo --shape {plan.shape} --images {plan.hidden_images} "
        f"--kept-images {plan.kept_images}",
        settings={"hide": plan.config, "captions": WORLD_CAPTIONS["kpop"], "preserve": len(preserve)},
        wall_seconds=time.perf_counter() - started,
    )
    (console or Console()).print(f"record: {write_record(record, out)}", markup=False)
    return evaluation, files
