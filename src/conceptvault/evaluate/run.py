"""Running a suite on a vault: the same prompts and seeds through three models, judged, turned into figures.

The three models: the original (the base pipeline as given), the public model (the vault's weights, no
key) and the public model with the key. A hidden concept is generated with its own key; kept concepts
with every key of the suite's hidden concepts switched on at once (the key holder's worst case). Where a
hidden concept carries unnamed prompts, the original model also makes those (the never-learned ESR).
Images are saved as they are made and reused on the next run (see ``store.py``), so an interrupted
evaluation continues where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import conceptvault.parallel as parallel
from conceptvault.backbone import unet_fingerprint
from conceptvault.digest import tensor_digest
from conceptvault.errors import ConceptVaultError
from conceptvault.evaluate.fidelity import frechet_distance, psnr, ssim
from conceptvault.evaluate.judges import Judge, make_judge
from conceptvault.evaluate.metrics import (
    KEY,
    ORIGINAL,
    PUBLIC,
    UNNAMED,
    Mean,
    Rate,
    pooled,
    rate_figures,
    score_figures,
)
from conceptvault.evaluate.store import ImageStore
from conceptvault.evaluate.suite import Suite, SuiteConcept
from conceptvault.generate import generate_images
from conceptvault.vault import Vault

FORMAT_VERSION = 1


@dataclass
class ImageRecord:
    """One image of the evaluation: which model made it, from what, and what the judge read in it."""

    variant: str
    concept: str
    group: str  # "hidden" or "kept"
    index: int
    prompt: str
    seed: int
    guidance: float
    keys: tuple[str, ...]
    path: Path
    note: str = ""
    label: str = ""  # the judge's top label, where it gives one
    hits: dict[str, bool] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)

    def as_dict(self, root: Path) -> dict:
        return {
            "variant": self.variant,
            "concept": self.concept,
            "group": self.group,
            "index": self.index,
            "prompt": self.prompt,
            "seed": self.seed,
            "guidance": self.guidance,
            "keys": list(self.keys),
            "path": str(self.path.relative_to(root)) if self.path.is_relative_to(root) else str(self.path),
            "note": self.note,
            "label": self.label,
            "hits": self.hits,
            "scores": self.scores,
        }


@dataclass
class EvaluationResult:
    """Everything an evaluation measured. ``to_dict()`` is the JSON written to ``results.json``."""

    suite: Suite
    kind: str  # "rate" or "score"
    measures: list[str]
    figures: dict[str, dict]  # figure -> measure -> {"average": cell, "concepts": {name: cell}}
    records: list[ImageRecord]
    meta: dict
    out_dir: Path
    fidelity: dict = field(default_factory=dict)  # comparison -> figure -> {"average": cell, "concepts": {...}}
    fid: dict = field(default_factory=dict)  # group -> variant (and "floor") -> Fréchet distance to real images

    def cell(self, figure: str, measure: str | None = None, concept: str | None = None) -> dict:
        """One figure's cell: ``result.cell("esr")`` is the pooled ESR at the first measure."""
        entry = self.figures[figure][measure or self.measures[0]]
        return entry["concepts"][concept] if concept else entry["average"]

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "suite": self.suite.name,
            "description": self.suite.description,
            "judge": self.suite.judge,
            "kind": self.kind,
            "measures": self.measures,
            "hidden": [c.name for c in self.suite.hidden],
            "kept": [c.name for c in self.suite.kept],
            **self.meta,
            **self.figures,
            "fidelity": self.fidelity,
            "fid": self.fid,
        }


def run_suite(
    pipe: Any,
    vault: Vault,
    suite: Suite,
    out_dir: str | Path,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    steps: int | None = None,
    guidance: float | None = None,
    with_key: bool = True,
    judge: Judge | None = None,
    original_images: str | Path | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> EvaluationResult:
    """Evaluate ``vault`` on ``suite``: generate (or reuse) every image, judge it, compute every figure.

    Args:
        pipe: the base pipeline the vault was made for, as loaded (no vault applied); it is left as it was
            given (moved to ``device`` if one is named).
        vault: the vault to measure; loaded with its keys unless ``with_key=False``.
        suite: prompts and seeds per concept, the judge, which labels count (:class:`Suite`).
        out_dir: images go under ``out_dir/images`` and are reused by the next run with the same settings.
        device: where to run; None keeps the pipeline where it is.
        batch_size: images generated and judged per batch.
        steps: sampler steps, overriding the suite's (for a quick run).
        guidance: guidance scale, overriding the suite's (a prompt's own guidance, as I2P rows carry, wins).
        with_key: False measures the public model only (no RSR, no key PSR, no fidelity).
        judge: a judge to use instead of the one the suite names.
        original_images: a folder for the original model's images, shared by evaluations of several vaults
            of one base model (made once, then reused); default: inside ``out_dir``.
        progress: show progress bars; console: where to draw them.

    Returns:
        An :class:`EvaluationResult`; write the reports with ``write_report(result)``. Launched on several
        processes (``accelerate launch``), each process makes its share of the images and the main process
        alone judges them and returns the result (the others return None): the figures equal a
        single-process run's, since every image depends only on its prompt and seed.
    """
    if batch_size < 1 or (steps is not None and steps < 1):
        raise ConceptVaultError(
            f"batch_size and steps must be at least 1, got batch_size={batch_size}, steps={steps}."
        )
    out_dir = Path(out_dir)
    processes = Processes.current()
    if device is not None or processes.device is not None:
        pipe.to(device or processes.device)
    key_plan = _key_plan(suite, vault) if with_key else {}
    base_fingerprint = _check_base(pipe, vault)
    if processes.main:
        judge = judge or make_judge(suite, device=str(pipe.device))
    settings = {
        "steps": int(steps or suite.steps),
        "guidance": float(guidance if guidance is not None else suite.guidance),
        "height": suite.height,
        "width": suite.width,
    }
    variants = [ORIGINAL, PUBLIC, KEY] if with_key else [ORIGINAL, PUBLIC]
    store = ImageStore(out_dir, {ORIGINAL: Path(original_images)} if original_images else None)
    records = _plan(suite, variants, key_plan, store, settings["guidance"])
    made_with = {**settings, "dtype": str(pipe.unet.dtype)}
    if processes.main:
        for variant, identity in _identities(vault, base_fingerprint, key_plan, made_with).items():
            if variant in variants:
                store.claim(variant, identity)
    processes.wait()

    started = time.perf_counter()
    with _progress_bars(progress and processes.main, console) as bars:
        missing = list({r.path: r for r in records if not store.has(r.path)}.values())
        made = _generate(pipe, vault, missing[processes.index :: processes.count], store, settings, batch_size, bars)
        processes.wait()  # every process's images are on disk
        if not processes.main:
            return None
        made = len(missing)
        generated_at = time.perf_counter()
        _judge(judge, suite, records, store, batch_size, bars)
    judged_at = time.perf_counter()

    figures = _figures(judge, suite, records)
    fidelity = _fidelity(suite, records, store)
    fid = _fid(judge, suite, records, store)
    meta = {
        "settings": {**settings, "batch_size": batch_size, "device": str(pipe.device)},
        "vault": _vault_summary(vault, base_fingerprint),
        "images": {"total": len(records), "generated": made, "reused": len(records) - made},
        "seconds": {"generate": round(generated_at - started, 2), "judge": round(judged_at - generated_at, 2)},
    }
    return EvaluationResult(suite, judge.kind, list(judge.measures), figures, records, meta, out_dir, fidelity, fid)


def _key_plan(suite: Suite, vault: Vault) -> dict[str, tuple[str, ...]]:
    """Concept name -> the vault keys switched on for its 'with key' images."""
    available = list(getattr(vault, "keys", {}) or {})
    if not available:
        raise ConceptVaultError(
            "the vault was loaded without its keys, so recovery cannot be measured; load it with keys='all' "
            "(or evaluate with with_key=False)."
        )

    def resolve(name: str) -> str:
        for candidate in available:
            if candidate == name or candidate.lower() == name.lower():
                return candidate
        raise ConceptVaultError(
            f"the vault has no key for the suite's hidden concept {name!r}; its keys are {', '.join(available)}. "
            "Evaluate with a suite that hides the vault's concepts, or set the concept's key."
        )

    own = {c.name: (resolve(c.key_name),) for c in suite.hidden}
    every = tuple(dict.fromkeys(k for keys in own.values() for k in keys))
    return {**own, **{c.name: every for c in suite.kept}}


def _check_base(pipe: Any, vault: Vault) -> str:
    """The pipeline's UNet fingerprint, checked against the base model the vault was made for."""
    fingerprint = unet_fingerprint(pipe.unet)
    expected = vault.manifest.base_fingerprint
    if expected != fingerprint:
        raise ConceptVaultError(
            f"this vault was made for {vault.manifest.base_model!r} (fingerprint "
            f"{expected[:12]}..), but the pipeline given has fingerprint {fingerprint[:12]}..; evaluate with the "
            "base model the vault was made for, loaded fresh (no vault applied)."
        )
    return fingerprint


def _identities(vault: Vault, base_fingerprint: str, key_plan: dict, settings: dict) -> dict[str, dict]:
    """What makes each variant's images: a folder holding images made otherwise is refused, never mixed."""
    public = vault.public_fingerprint
    used = sorted({k for keys in key_plan.values() for k in keys})
    keys = {name: tensor_digest(vault.keys[name].state_dict(), cast=torch.float32) for name in used}
    return {
        ORIGINAL: {"base_unet": base_fingerprint, **settings},
        PUBLIC: {"base_unet": base_fingerprint, "public_weights": public, **settings},
        KEY: {"base_unet": base_fingerprint, "public_weights": public, "keys": keys, **settings},
    }


def _plan(
    suite: Suite, variants: list[str], key_plan: dict, store: ImageStore, default_guidance: float
) -> list[ImageRecord]:
    records = []
    groups: list[tuple[str, SuiteConcept]] = [("hidden", c) for c in suite.hidden] + [("kept", c) for c in suite.kept]
    for variant in variants:
        for group, concept in groups:
            keys = key_plan.get(concept.name, ()) if variant == KEY else ()
            for index, (prompt, seed) in enumerate(zip(concept.prompts, concept.seeds, strict=False)):
                path = store.path(variant, concept.name, index, seed, prompt)
                guidance = concept.guidance_at(index, default_guidance)
                records.append(ImageRecord(variant, concept.name, group, index, prompt, seed, guidance, keys, path))
    return records + _unnamed_records(suite, store, default_guidance)


def _unnamed_records(suite: Suite, store: ImageStore, default_guidance: float) -> list[ImageRecord]:
    """The original model's images of each hidden prompt without the concept's words, kept with its other
    images (a prompt that names nothing to take out is the same image)."""
    records = []
    for concept in suite.hidden:
        for index, (prompt, seed) in enumerate(zip(concept.unnamed or [], concept.seeds, strict=False)):
            path = store.path(ORIGINAL, concept.name, index, seed, prompt)
            guidance = concept.guidance_at(index, default_guidance)
            records.append(ImageRecord(UNNAMED, concept.name, "hidden", index, prompt, seed, guidance, (), path))
    return records


@contextmanager
def _progress_bars(enabled: bool, console: Console | None) -> Iterator[Progress]:
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )
    with bars:
        yield bars


def _generate(
    pipe: Any,
    vault: Vault,
    missing: list[ImageRecord],
    store: ImageStore,
    settings: dict,
    batch_size: int,
    bars: Progress,
) -> int:
    """Make the missing images, the original model's first, then the vault's; returns how many were made."""
    if not missing:
        return 0
    task = bars.add_task("generating", total=len(missing))
    base_model = (ORIGINAL, UNNAMED)  # variants made by the pipeline as given, no vault applied
    original = [r for r in missing if r.variant in base_model]
    vaulted = [r for r in missing if r.variant not in base_model]
    try:
        _generate_batches(pipe, original, store, settings, batch_size, bars, task)
        if vaulted:
            with vault.applied(pipe):
                _generate_batches(pipe, vaulted, store, settings, batch_size, bars, task)
    except KeyboardInterrupt:
        made = sum(store.has(r.path) for r in missing)
        raise ConceptVaultError(
            f"interrupted after {made} new images, which are saved; run the same evaluation with the same output "
            "folder to continue."
        ) from None
    return len(missing)


def _generate_batches(
    pipe: Any,
    records: list[ImageRecord],
    store: ImageStore,
    settings: dict,
    batch_size: int,
    bars: Progress,
    task: Any,
) -> None:
    groups: dict[tuple, list[ImageRecord]] = {}
    for record in records:
        groups.setdefault((record.variant, record.keys, record.guidance), []).append(record)
    for (_, keys, guidance), group in groups.items():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            images = generate_images(
                pipe,
                [r.prompt for r in chunk],
                [r.seed for r in chunk],
                keys=list(keys) or None,
                steps=settings["steps"],
                guidance=guidance,
                batch_size=batch_size,
                height=settings["height"],
                width=settings["width"],
                progress=False,
            )
            for record, image in zip(chunk, images, strict=False):
                store.save(record.path, image)
            bars.advance(task, len(chunk))


def _judge(
    judge: Judge, suite: Suite, records: list[ImageRecord], store: ImageStore, batch_size: int, bars: Progress
) -> None:
    labels = {c.name: c.labels for c in suite.concepts}
    task = bars.add_task("judging", total=len(records))
    groups: dict[tuple[str, str], list[ImageRecord]] = {}
    for record in records:
        groups.setdefault((record.variant, record.concept), []).append(record)
    for (_, concept), group in groups.items():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            reading = judge.judge([store.load(r.path) for r in chunk], [r.prompt for r in chunk], labels[concept])
            for row, record in enumerate(chunk):
                record.hits = {m: bool(values[row]) for m, values in reading.hits.items()}
                record.scores = {m: float(values[row]) for m, values in reading.scores.items()}
                record.note = reading.notes[row] if reading.notes else ""
                record.label = reading.labels[row] if reading.labels else ""
            bars.advance(task, len(chunk))


def _figures(judge: Judge, suite: Suite, records: list[ImageRecord]) -> dict[str, dict]:
    per_image: dict[tuple[str, str], dict[str, list]] = {}
    for record in records:
        values = record.hits if judge.kind == "rate" else record.scores
        slot = per_image.setdefault((record.variant, record.concept), {m: [] for m in judge.measures})
        for measure in judge.measures:
            slot[measure].append(values[measure])
    arrays = {k: {m: np.asarray(v) for m, v in slots.items()} for k, slots in per_image.items()}
    hidden, kept = [c.name for c in suite.hidden], [c.name for c in suite.kept]
    compute = rate_figures if judge.kind == "rate" else score_figures
    return compute(arrays, hidden, kept, list(judge.measures))


@dataclass
class Processes:
    """This process's place among the processes a launcher (``accelerate launch``, ``torchrun``) started (one
    process: index 0 of 1), as :mod:`conceptvault.parallel` joins them."""

    index: int = 0
    count: int = 1
    device: Any = None
    wait: Any = lambda: None

    @property
    def main(self) -> bool:
        return self.index == 0

    @classmethod
    def current(cls) -> Processes:
        parallel.start()
        if parallel.size() == 1:
            return cls()
        return cls(parallel.rank(), parallel.size(), parallel.device(None), parallel.barrier)


# comparison -> (the concepts it covers, the model compared with the original on the same prompt and seed)
FIDELITY_COMPARISONS = {"key_vs_original": ("hidden", KEY), "public_vs_original": ("kept", PUBLIC)}


def _fidelity(suite: Suite, records: list[ImageRecord], store: ImageStore) -> dict:
    """Per seed, how close an image is to the original model's image of the same prompt and seed: whether the
    judge gives both the same label (agreement), and their SSIM and PSNR. For hidden concepts the key holder's
    image is compared (does the key give the concept back faithfully?); for kept concepts the public model's,
    the floor that says how much fine-tuning alone moves an image."""
    by_slot = {(r.variant, r.concept, r.index): r for r in records}
    groups = {"hidden": [c.name for c in suite.hidden], "kept": [c.name for c in suite.kept]}
    out = {}
    for comparison, (group, variant) in FIDELITY_COMPARISONS.items():
        per_concept: dict[str, dict[str, list]] = {}
        for record in records:
            original = by_slot.get((ORIGINAL, record.concept, record.index))
            if record.variant != variant or record.concept not in groups[group] or original is None:
                continue
            slot = per_concept.setdefault(record.concept, {"agreement": [], "ssim": [], "psnr": []})
            if record.label and original.label:
                slot["agreement"].append(record.label == original.label)
            image, reference = store.load(record.path), store.load(original.path)
            slot["ssim"].append(ssim(image, reference))
            slot["psnr"].append(psnr(image, reference))
        if per_concept:
            out[comparison] = {
                figure: _summary(kind({c: v[figure] for c, v in per_concept.items()}))
                for figure, kind in (("agreement", _rates), ("ssim", _means), ("psnr", _means))
                if all(v[figure] for v in per_concept.values())
            }
    return out


def _rates(values: dict[str, list]) -> dict:
    return {c: Rate.of(v) for c, v in values.items()}


def _means(values: dict[str, list]) -> dict:
    return {c: Mean.of(v) for c, v in values.items()}


def _summary(cells: dict) -> dict:
    return {"average": pooled(list(cells.values())).as_dict(), "concepts": {c: v.as_dict() for c, v in cells.items()}}


def _fid(judge: Judge, suite: Suite, records: list[ImageRecord], store: ImageStore) -> dict:
    """Fréchet distance between each model's images of a group and real images of the same concepts, in the
    judge's features, with the floor (two independent sets of real images at the same count). Only for
    judges that offer features and real images (the built-in world's)."""
    embed, reference = getattr(judge, "embed", None), getattr(judge, "reference", None)
    if embed is None or reference is None:
        return {}
    out = {}
    for group, concepts in (("hidden", suite.hidden), ("kept", suite.kept)):
        labels = [label for c in concepts for label in c.labels]
        chosen = {v: [r for r in records if r.variant == v and r.group == group] for v in (ORIGINAL, PUBLIC, KEY)}
        chosen = {v: rs for v, rs in chosen.items() if len(rs) >= 2}
        if not chosen:
            continue
        count = len(next(iter(chosen.values())))
        real = reference(labels, count, 1)
        out[group] = {v: frechet_distance(embed([store.load(r.path) for r in rs]), real) for v, rs in chosen.items()}
        out[group]["floor"] = frechet_distance(reference(labels, count, 2), real)
        out[group]["n"] = count
    return out


def _vault_summary(vault: Vault, base_fingerprint: str) -> dict:
    manifest = vault.manifest
    return {
        "path": str(vault.path or ""),
        "method": manifest.method,
        "base_model": manifest.base_model,
        "base_fingerprint": base_fingerprint,
        "concepts": manifest.concept_names,
        "placement": manifest.placement,
        "public_fingerprint": manifest.public_fingerprint,
    }
