"""Several vaults of one base model on one suite: hiding beside erasure, on the same prompts, seeds and judge.

The original model's images are made once and shared by every vault's evaluation. The comparison is
written as ``comparison.json`` (a block per vault), ``comparison.md`` (one table: each figure with n and
95 % interval, the run's time and peak memory), ``comparison.png`` (a bar chart, intervals as error bars)
and ``comparison.html`` (for each concept, a column per vault beside the original, same prompt and seed).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from html import escape
from pathlib import Path

from conceptvault.evaluate.metrics import KEY, ORIGINAL, PUBLIC
from conceptvault.evaluate.report import format_ci, format_value
from conceptvault.evaluate.run import EvaluationResult, run_suite
from conceptvault.evaluate.suite import Suite
from conceptvault.files import atomic_write_text
from conceptvault.records import evaluation_figures
from conceptvault.vault import Vault

FIGURES = ("esr", "psr", "rsr", "key_psr")
LABELS = {"esr": "ESR", "psr": "PSR", "rsr": "RSR", "key_psr": "key PSR"}


@dataclass
class Entry:
    """One vault's evaluation in a comparison."""

    name: str
    vault: Vault
    result: EvaluationResult

    @property
    def method(self) -> str:
        return self.vault.manifest.method

    def cost(self) -> dict:
        stats = self.vault.manifest.stats
        return {
            "seconds": round(float(stats.get("seconds", 0.0)) + float(stats.get("setup_seconds", 0.0)), 1),
            "peak_rss_mib": stats.get("peak_rss_mib"),
            "peak_gpu_mib": stats.get("peak_gpu_mib"),
        }


@dataclass
class Comparison:
    suite: Suite
    entries: list[Entry]
    out_dir: Path

    def to_dict(self) -> dict:
        return {
            "suite": self.suite.name,
            "judge": self.suite.judge,
            "hidden": [c.name for c in self.suite.hidden],
            "kept": [c.name for c in self.suite.kept],
            "vaults": {
                e.name: {
                    "method": e.method,
                    "path": str(e.vault.path),
                    "cost": e.cost(),
                    **{f: e.result.figures[f] for f in FIGURES if f in e.result.figures},
                    "fidelity": e.result.fidelity,
                    "fid": e.result.fid,
                }
                for e in self.entries
            },
        }


def compare(
    pipe,
    vaults: dict[str, Vault],
    suite: Suite,
    out_dir: str | Path,
    *,
    batch_size: int = 8,
    progress: bool = True,
    console=None,
) -> Comparison:
    """Evaluate every vault (by name) on ``suite`` with ``pipe`` (their common base model, as loaded)."""
    out_dir = Path(out_dir)
    entries = []
    for name, vault in vaults.items():
        result = run_suite(
            pipe,
            vault,
            suite,
            out_dir / name,
            batch_size=batch_size,
            with_key=vault.method.has_keys and bool(vault.keys),
            original_images=out_dir / ORIGINAL,
            progress=progress,
            console=console,
        )
        entries.append(Entry(name, vault, result))
    return Comparison(suite, entries, out_dir)


def figures(comparison: Comparison) -> dict[str, dict]:
    """The comparison as a results record's figures: each vault's evaluation figures, then its time and memory to
    make."""
    found = {}
    for entry in comparison.entries:
        found |= {f"{entry.name}: {name}": figure for name, figure in evaluation_figures(entry.result).items()}
        found |= {f"{entry.name}: {name}": figure for name, figure in cost_figures(entry).items()}
    return found


def cost_figures(entry: Entry) -> dict[str, dict]:
    """What making the vault cost, as record figures: its time (the run and its setup, as the manifest records
    them) and, where recorded, its peak memory."""
    cost = entry.cost()
    found = {"time": {"value": cost["seconds"], "interval": None, "n": 1, "unit": "s"}}
    if cost["peak_rss_mib"] is not None:
        found["peak memory"] = {"value": cost["peak_rss_mib"], "interval": None, "n": 1, "unit": "MiB"}
    return found


def markdown(comparison: Comparison) -> str:
    first = comparison.entries[0].result
    header = ["vault", "method", *(LABELS[f] for f in FIGURES), "time s", "peak memory MiB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    originals = {f: first.figures[f]["top-1"]["average"]["original"] for f in FIGURES if f in first.figures}
    lines.append("| original model | | " + " | ".join(_cell(originals.get(f), "rate") for f in FIGURES) + " | | |")
    for entry in comparison.entries:
        cells = [_cell(_average(entry.result, f), "rate") for f in FIGURES]
        cost = entry.cost()
        lines.append(
            f"| {entry.name} | {entry.method} | " + " | ".join(cells) + f" | {cost['seconds']:.0f} | "
            f"{cost['peak_rss_mib'] or 'n/a'} |"
        )
    notes = (
        f"Suite `{comparison.suite.name}`, judge `{comparison.suite.judge}`; each cell: value (95 % interval, n). "
        "RSR and key PSR exist only for vaults with keys. Time is the hiding or erasing run; memory the peak "
        "resident memory of the process that made the vault."
    )
    return "\n".join(lines) + "\n\n" + notes + "\n"


def _average(result: EvaluationResult, figure: str) -> dict | None:
    return result.figures[figure][result.measures[0]]["average"] if figure in result.figures else None


def _cell(cell: dict | None, kind: str) -> str:
    if not cell or cell.get("value") is None:
        return "–"
    return f"{format_value(cell['value'], kind)} ({format_ci(cell['ci'], kind)}, n={cell['n']})"


def chart(comparison: Comparison, path: Path) -> None:
    """Grouped bars: each figure, a bar per vault (and the original model), 95 % intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = comparison.entries[0].result
    series = [
        (
            "original model",
            {f: first.figures[f]["top-1"]["average"]["original"] for f in FIGURES if f in first.figures},
        )
    ]
    series += [(f"{e.name} ({e.method})", {f: _average(e.result, f) for f in FIGURES}) for e in comparison.entries]
    width = 0.8 / len(series)
    figure, axes = plt.subplots(figsize=(2.2 + 1.6 * len(FIGURES) * len(series) / 3, 4.5))
    for i, (label, cells) in enumerate(series):
        xs, values, errors = [], [], [[], []]
        for j, name in enumerate(FIGURES):
            cell = cells.get(name)
            if not cell or cell.get("value") is None:
                continue
            xs.append(j + (i - (len(series) - 1) / 2) * width)
            values.append(100 * cell["value"])
            low, high = cell["ci"] or (cell["value"], cell["value"])
            errors[0].append(100 * (cell["value"] - low))
            errors[1].append(100 * (high - cell["value"]))
        axes.bar(xs, values, width, yerr=errors, capsize=3, label=label)
    axes.set_xticks(range(len(FIGURES)), [LABELS[f] + "-1" for f in FIGURES])
    axes.set_xlim(-0.5, len(FIGURES) - 0.5)  # every group's full width, even where its last bars are absent
    axes.set_ylabel("%")
    axes.set_ylim(0, 105)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(3, len(series)))
    axes.set_title(f"{comparison.suite.name}: same prompts, seeds and judge")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def html(comparison: Comparison, images_per_concept: int = 6) -> str:
    """For each concept, rows of prompts and a column per model: original, then each vault (and its key)."""
    columns = [("original", comparison.entries[0], ORIGINAL)]
    for entry in comparison.entries:
        columns.append((f"{entry.name}", entry, PUBLIC))
        if any(r.variant == KEY for r in entry.result.records):
            columns.append((f"{entry.name} + key", entry, KEY))
    lookup = {(id(e), r.variant, r.concept, r.index): r for e in comparison.entries for r in e.result.records}
    parts = []
    for group, concepts in (("hidden", comparison.suite.hidden), ("kept", comparison.suite.kept)):
        for concept in concepts:
            head = "<tr><th>prompt (seed)</th>" + "".join(f"<th>{escape(t)}</th>" for t, _, _ in columns) + "</tr>"
            rows = []
            for index in range(min(images_per_concept, len(concept.prompts))):
                cells = "".join(_image(lookup.get((id(e), v, concept.name, index))) for _, e, v in columns)
                rows.append(
                    f"<tr><td>{escape(concept.prompts[index])}<br><small>seed {concept.seeds[index]}</small>"
                    f"</td>{cells}</tr>"
                )
            parts.append(f"<h3>{escape(concept.name)} ({group})</h3><table>{head}{''.join(rows)}</table>")
    table = markdown(comparison).split("\n\n")[0]
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>ConceptVault comparison</title><style>"
        "body{font:14px system-ui,sans-serif;margin:2em auto;max-width:1200px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}img{width:112px;image-rendering:pixelated}"
        "</style></head><body>"
        f"<h1>Comparison: {escape(comparison.suite.name)}</h1><pre>{escape(table)}</pre>"
        "<img src='comparison.png' style='width:auto;image-rendering:auto' alt='bar chart'>"
        + "".join(parts)
        + "</body></html>"
    )


def _image(record) -> str:
    if record is None or not record.path.is_file():
        return "<td>–</td>"
    data = base64.b64encode(record.path.read_bytes()).decode("ascii")
    verdict = escape(record.note)
    return (
        f"<td><img src='data:image/png;base64,{data}' alt='{escape(record.prompt)}'><br><small>{verdict}</small></td>"
    )


def write_comparison(comparison: Comparison) -> dict[str, Path]:
    out = comparison.out_dir
    files = {name: out / f"comparison.{name}" for name in ("json", "md", "png", "html")}
    atomic_write_text(files["json"], json.dumps(comparison.to_dict(), indent=2, sort_keys=True) + "\n")
    atomic_write_text(files["md"], markdown(comparison))
    chart(comparison, files["png"])
    atomic_write_text(files["html"], html(comparison))
    return files
