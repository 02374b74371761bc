"""Measurement records: each published figure as data, one JSON file per measurement, checked when read.

A record holds what made its figures (the command, the commit, the model's and the judge's fingerprints,
every setting, the seeds, the machine, the wall time) beside the figures themselves, each with its 95 %
interval and the n it rests on. Records live in ``bench/results/<id>.json``; ``bench/render_results.py``
renders ``docs/results.md`` from them, and a test keeps page and records equal.

History is data too: a record replaced by a newer one stays, with ``status`` "superseded" and
``superseded_by`` naming its successor; a figure quoted from earlier prose that has not been measured again
under the current code stays with ``status`` "not re-run".
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path

from conceptvault.errors import ConceptVaultError
from conceptvault.files import atomic_write_text

SCHEMA_VERSION = 1
MEASURED, SUPERSEDED, NOT_RE_RUN = "measured", "superseded", "not re-run"
STATUSES = (MEASURED, SUPERSEDED, NOT_RE_RUN)
REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "bench" / "results"

# Every field a record must hold, with the JSON types its value may take (None: the value may be null).
FIELDS: dict[str, tuple] = {
    "schema_version": (int,),
    "id": (str,),
    "title": (str,),
    "status": (str,),
    "superseded_by": (str, type(None)),
    "command": (str,),
    "commit": (str,),
    "model_fingerprint": (str,),
    "judge_fingerprint": (str, type(None)),
    "settings": (dict,),
    "seeds": (list,),
    "n": (int,),
    "figures": (dict,),
    "machine": (dict,),
    "wall_seconds": (int, float, type(None)),
    "created": (str,),
    "notes": (str,),
}
FIGURE_FIELDS: dict[str, tuple] = {"value": (int, float), "interval": (list, type(None)), "n": (int,)}
MACHINE_FIELDS: dict[str, tuple] = {"cores": (int, type(None)), "device": (str,)}
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class RecordError(ConceptVaultError):
    """A record that does not hold to the schema; the message names the field and the fix."""


def make_record(
    *,
    id: str,
    title: str,
    command: str,
    settings: dict,
    seeds: list[int],
    n: int,
    figures: dict[str, dict],
    wall_seconds: float | None,
    model_fingerprint: str,
    judge_fingerprint: str | None,
    device: str = "cpu",
    status: str = MEASURED,
    notes: str = "",
) -> dict:
    """A record of a measurement just made on this machine, the commit and the time filled in, checked.

    Args:
        figures: name -> ``{"value", "interval" ([low, high] or None), "n"}``, optionally ``"unit"``
            ("share" for a fraction shown as a percentage) and ``"original"`` (the original model's figure,
            the same three fields) and ``"censored"`` (true: the figure was not reached within ``value``, as
            an attack that never recovered half the images within its steps).
        judge_fingerprint: the judge's fingerprint, or None where no judge made the figures.
    """
    record = {
        "schema_version": SCHEMA_VERSION,
        "id": id,
        "title": title,
        "status": status,
        "superseded_by": None,
        "command": command,
        "commit": current_commit(),
        "model_fingerprint": model_fingerprint,
        "judge_fingerprint": judge_fingerprint,
        "settings": settings,
        "seeds": list(seeds),
        "n": n,
        "figures": figures,
        "machine": machine(device),
        "wall_seconds": None if wall_seconds is None else round(float(wall_seconds), 1),
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "notes": notes,
    }
    check_record(record)
    return record


def builtin_record(**fields) -> dict:
    """A record (:func:`make_record`'s fields) of a measurement on the shipped built-in model by the shipped judge."""
    return make_record(
        model_fingerprint=builtin_model_fingerprint(), judge_fingerprint=shipped_judge_fingerprint(), **fields
    )


def write_record(record: dict, folder: Path = RESULTS_DIR) -> Path:
    """Check ``record`` and write it atomically to ``folder/<id>.json``; returns the path."""
    check_record(record)
    path = Path(folder) / f"{record['id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return path


def read_record(path: Path) -> dict:
    """The record in ``path``, checked against the schema; a file named other than its id is refused."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise RecordError(f"the record '{path}' is not JSON ({error}); write it with write_record.") from None
    check_record(record, where=str(path))
    if path.stem != record["id"]:
        raise RecordError(f"the record '{path}' has id {record['id']!r}; name the file '{record['id']}.json'.")
    return record


def read_records(folder: Path = RESULTS_DIR) -> list[dict]:
    """Every record in ``folder``, checked, in the order of their ids; a successor that is missing is refused."""
    records = [read_record(path) for path in sorted(Path(folder).glob("*.json"))]
    ids = {r["id"] for r in records}
    for record in records:
        if record["superseded_by"] is not None and record["superseded_by"] not in ids:
            raise RecordError(
                f"the record {record['id']!r} is superseded by {record['superseded_by']!r}, which is not in "
                f"'{folder}'; add that record or correct superseded_by."
            )
    return records


def check_record(record: dict, where: str = "the record") -> None:
    """Raise :class:`RecordError` naming the first field that is missing or of the wrong type."""
    if not isinstance(record, dict):
        raise RecordError(f"{where} is a {type(record).__name__}, not a JSON object; write it with write_record.")
    _check_fields(record, FIELDS, where, "the record")
    if record["schema_version"] != SCHEMA_VERSION:
        raise RecordError(
            f"{where} has schema_version {record['schema_version']}; this code reads version {SCHEMA_VERSION}."
        )
    if not ID_PATTERN.match(record["id"]):
        raise RecordError(f"{where} has id {record['id']!r}; an id is lower-case letters, digits and hyphens.")
    _check_status(record, where)
    _check_fields(record["machine"], MACHINE_FIELDS, where, "its field 'machine'")
    if not all(isinstance(seed, int) for seed in record["seeds"]):
        raise RecordError(f"{where} has seeds {record['seeds']!r}; give the seeds as a list of integers.")
    if not record["figures"]:
        raise RecordError(f"{where} has no figures; a record holds at least one figure.")
    for name, figure in record["figures"].items():
        _check_figure(figure, where, f"figure {name!r}")
        if "original" in figure:
            _check_figure(figure["original"], where, f"figure {name!r}'s 'original'")


def _check_status(record: dict, where: str) -> None:
    status, successor = record["status"], record["superseded_by"]
    if status not in STATUSES:
        raise RecordError(f"{where} has status {status!r}; one of {', '.join(map(repr, STATUSES))}.")
    if (status == SUPERSEDED) != (successor is not None):
        raise RecordError(
            f"{where} has status {status!r} and superseded_by {successor!r}; a superseded record names its "
            "successor in superseded_by, and only a superseded record does."
        )


def _check_figure(figure, where: str, what: str) -> None:
    if not isinstance(figure, dict):
        raise RecordError(f"{where}: {what} is not an object; give it value, interval and n.")
    _check_fields(figure, FIGURE_FIELDS, where, what)
    interval = figure["interval"]
    if interval is not None and (len(interval) != 2 or not all(isinstance(x, (int, float)) for x in interval)):
        raise RecordError(f"{where}: {what} has interval {interval!r}; give [low, high] or null.")
    if figure["n"] < 1:
        raise RecordError(f"{where}: {what} has n {figure['n']}; n counts the images (or samples), at least 1.")
    if not isinstance(figure.get("censored", False), bool):
        raise RecordError(f"{where}: {what} has censored={figure['censored']!r}; it must be true or false.")


def _check_fields(data: dict, fields: dict[str, tuple], where: str, what: str) -> None:
    if not isinstance(data, dict):
        raise RecordError(f"{where}: {what} is not an object.")
    for name, types in fields.items():
        if name not in data:
            raise RecordError(f"{where}: {what} has no field {name!r}; give it {', '.join(fields)}.")
        value = data[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            allowed = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise RecordError(f"{where}: {what} has {name}={value!r}; it must be {allowed}.")


def share_figure(cell: dict, unit: str = "share") -> dict:
    """A record figure from an evaluation cell (``{"value", "n", "ci", "original"?}``)."""
    figure = {"value": cell["value"], "interval": cell.get("ci"), "n": cell["n"], "unit": unit}
    if isinstance(cell.get("original"), dict):
        figure["original"] = share_figure(cell["original"], unit)
    return figure


def current_commit(root: Path = REPO_ROOT) -> str:
    """The checked-out commit (with ``+dirty`` when tracked files differ from it), or "unknown"."""
    try:
        sha = _git(root, "rev-parse", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


def _git(root: Path, *args: str) -> str:
    run = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=30)
    return run.stdout.strip()


def machine(device: str = "cpu") -> dict:
    """This machine as a record holds it: CPU cores usable by this process and the device measured on."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {"cores": cores, "device": device}


@cache
def builtin_model_fingerprint() -> str:
    """The shipped built-in model's UNet fingerprint (as a vault's manifest names its base model)."""
    from diffusers import UNet2DConditionModel

    from conceptvault.backbone import unet_fingerprint
    from conceptvault.world import BUILTIN_MODEL_DIR

    return unet_fingerprint(UNet2DConditionModel.from_pretrained(Path(BUILTIN_MODEL_DIR) / "unet"))


@cache
def shipped_judge_fingerprint() -> str:
    """The shipped world judge's fingerprint: SHA-256 over its weights and labels files, names and bytes."""
    from conceptvault.world.judge import JUDGE_DIR

    return folder_fingerprint(JUDGE_DIR)


def folder_fingerprint(folder: Path) -> str:
    """SHA-256 over every file in ``folder`` (its name, then its bytes), in name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def evaluation_record(
    evaluation, *, id: str, title: str, command: str, settings: dict, wall_seconds: float, notes: str = ""
) -> dict:
    """A record of an evaluation (:class:`~conceptvault.evaluate.run.EvaluationResult`): each figure pooled
    over its concepts at each measure, beside the original model's, with the evaluation's own settings.

    ``settings``: what made the vault (the hiding configuration and prompts), added to the evaluation's."""
    meta = evaluation.meta
    judge = evaluation.suite.judge
    return make_record(
        id=id,
        title=title,
        command=command,
        settings=_as_json({**settings, "suite": evaluation.suite.name, "judge": judge, **meta["settings"]}),
        seeds=sorted({r.seed for r in evaluation.records}),
        n=len(evaluation.records),
        figures=evaluation_figures(evaluation),
        wall_seconds=wall_seconds,
        model_fingerprint=meta["vault"]["base_fingerprint"],
        judge_fingerprint=judge_fingerprint(judge),
        device=meta["settings"]["device"],
        notes=notes,
    )


def evaluation_figures(evaluation) -> dict[str, dict]:
    """An evaluation's figures as a record holds them: each rate or score pooled over its concepts, beside the
    original model's, then fidelity and FID."""
    from conceptvault.evaluate.report import FIDELITY_TITLES, figure_rows

    figures = {
        f"{row.label} ({row.model})": share_figure(row.cell, "share" if evaluation.kind == "rate" else "score")
        for row in figure_rows(evaluation)
    }
    units = {"agreement": "share", "ssim": "SSIM", "psnr": "dB"}
    for comparison, by_figure in evaluation.fidelity.items():
        group, title = FIDELITY_TITLES[comparison]
        for figure, entry in by_figure.items():
            name = "same label" if figure == "agreement" else units[figure]
            figures[f"{name}, {title} ({group} concepts)"] = share_figure(entry["average"], units[figure])
    for group, distances in evaluation.fid.items():
        for variant in ("original", "public", "key", "floor"):
            if variant in distances:
                figures[f"world FID, {group} concepts, {variant}"] = {
                    "value": round(float(distances[variant]), 2),
                    "interval": None,
                    "n": distances["n"],
                    "unit": "FID",
                }
    return figures


def steps_to_half_figure(steps: float | None, budget: int) -> dict:
    """An attack's steps to 50 % recovery as a figure; never reached within ``budget`` steps, the budget itself,
    marked censored (a lower bound)."""
    return {
        "value": budget if steps is None else round(steps, 1),
        "interval": None,
        "n": 1,
        "unit": "steps",
        "censored": steps is None,
    }


def judge_fingerprint(judge: str) -> str:
    """The fingerprint of the judge named ``judge``: the shipped world judge's for the world judges, which are
    heads of it; any other judge is named, not fingerprinted."""
    return shipped_judge_fingerprint() if judge.startswith("world-") else f"{judge}, not fingerprinted"


def record_id(path: Path) -> str:
    """The id of a record to be written to ``path``: its name without ``.json``. Checked before any work, so a
    name that cannot be an id is one clear line and not a measurement lost at its end."""
    path = Path(path)
    if path.suffix != ".json" or not ID_PATTERN.match(path.stem):
        raise RecordError(
            f"cannot write a record to '{path}': its name is the record's id, so it must be lowercase letters, "
            "digits and dashes, ending in .json (for example attack-star.json)."
        )
    return path.stem


def _as_json(value):
    """``value`` as plain JSON (dataclasses, paths and enums written as their text)."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))
