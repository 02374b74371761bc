"""An evaluation's figures as files and tables: ``results.json``, ``images.json``, ``results.md``, a Rich table,
and the figures as JSON; ``html_report.write_report`` writes them all with the HTML report. Every file is written
atomically."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from conceptvault.evaluate.metrics import FIGURE_HELP, FIGURE_NAMES, figure_label
from conceptvault.evaluate.run import EvaluationResult
from conceptvault.files import atomic_write_text

RESULTS_FILE = "results.json"
IMAGES_FILE = "images.json"
MARKDOWN_FILE = "results.md"
HTML_FILE = "report.html"
SUITE_FILE = "suite.json"

_MODEL_OF = {
    "esr": "public",
    "never_learned_esr": "original, words removed",
    "psr": "public",
    "rsr": "with key",
    "key_psr": "with key",
    "hidden_score": "public",
    "kept_score": "public",
    "key_score": "with key",
    "key_kept_score": "with key",
}


@dataclass
class ReportFiles:
    json: Path
    images: Path
    markdown: Path
    html: Path
    suite: Path


@dataclass
class Row:
    """One line of a figure table."""

    figure: str  # the JSON key: "esr"
    measure: str  # "top-1"
    label: str  # "ESR-1"
    concept: str | None  # None for the average
    model: str
    cell: dict


def format_value(value: float | None, kind: str) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f} %" if kind == "rate" else f"{value:.2f}"


def format_ci(ci: list[float] | None, kind: str) -> str:
    if not ci:
        return "n/a"
    if kind == "rate":
        return f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f} %"
    return f"{ci[0]:.2f}–{ci[1]:.2f}"


def format_ratio(cell: dict) -> str:
    ratio = cell.get("of_original")
    return f"{100 * ratio:.0f} %" if ratio is not None else ""


def figure_rows(result: EvaluationResult, *, per_concept: bool = False) -> list[Row]:
    """The table rows: each figure at each measure, averaged (or, with ``per_concept``, for each concept)."""
    rows = []
    for figure, by_measure in result.figures.items():
        for measure, entry in by_measure.items():
            label = figure_label(figure, measure)
            if per_concept:
                rows += [
                    Row(figure, measure, label, c, _MODEL_OF[figure], cell) for c, cell in entry["concepts"].items()
                ]
            else:
                rows.append(Row(figure, measure, label, None, _MODEL_OF[figure], entry["average"]))
    return rows


def json_path(row: Row) -> str:
    tail = f'["concepts"]["{row.concept}"]' if row.concept else '["average"]'
    return f'{row.figure}["{row.measure}"]{tail}'


def write_json(result: EvaluationResult, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def write_images_json(result: EvaluationResult, path: str | Path) -> Path:
    path = Path(path)
    records = [r.as_dict(result.out_dir) for r in result.records]
    atomic_write_text(path, json.dumps(records, indent=1) + "\n")
    return path


def main_cells(r: Row, kind: str) -> list[str]:
    """A row of the main figure table: figure, model, value, 95 % CI, original, n, share of the original."""
    return [
        r.label,
        r.model,
        format_value(r.cell["value"], kind),
        format_ci(r.cell["ci"], kind),
        format_value(r.cell["original"]["value"], kind),
        str(r.cell["n"]),
        format_ratio(r.cell),
    ]


def _markdown_table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines]
    return "\n".join(out)


def markdown_report(result: EvaluationResult) -> str:
    """The figures as Markdown: the averaged table, what each figure means, and the per-concept table."""
    kind = result.kind
    meta = result.meta
    settings = meta["settings"]
    main = [main_cells(r, kind) for r in figure_rows(result)]
    per_concept = [
        [
            r.label,
            r.concept or "",
            format_value(r.cell["value"], kind),
            format_value(r.cell["original"]["value"], kind),
            str(r.cell["n"]),
            format_ci(r.cell["ci"], kind),
        ]
        for r in figure_rows(result, per_concept=True)
    ]
    helps = [f"- **{FIGURE_NAMES[figure]}** (`{figure}`): {FIGURE_HELP[figure]}." for figure in result.figures]
    parts = [
        f"# ConceptVault evaluation: {result.suite.name}",
        "",
        *([result.suite.description, ""] if result.suite.description else []),
        f"Judge `{result.suite.judge}`; hidden: {', '.join(c.name for c in result.suite.hidden)}; "
        f"kept: {', '.join(c.name for c in result.suite.kept) or 'none'}; {settings['steps']} steps, guidance "
        f"{settings['guidance']}; {meta['images']['total']} images ({meta['images']['generated']} generated, "
        f"{meta['images']['reused']} reused). "
        "Every figure is beside the original model's on the same prompts and seeds.",
        "",
        _markdown_table(["figure", "model", "value", "95 % CI", "original", "n", "of original"], main),
        "",
        *helps,
        "",
        "Model: *public* is the vault's public weights without the key, *with key* the same with the key on; "
        "*of original* is the value as a share of the original model's.",
        "",
        *(
            ["## Fidelity", "", _markdown_table(FIDELITY_HEADER, fidelity_lines(result)), "", FIDELITY_HELP, ""]
            if result.fidelity
            else []
        ),
        *(
            ["## Image quality", "", _markdown_table(FID_HEADER, fid_lines(result)), "", FID_HELP, ""]
            if result.fid
            else []
        ),
        "## Per concept",
        "",
        _markdown_table(["figure", "concept", "value", "original", "n", "95 % CI"], per_concept),
        "",
    ]
    return "\n".join(parts)


FIDELITY_TITLES = {
    "key_vs_original": ("hidden", "with key vs original"),
    "public_vs_original": ("kept", "public vs original (floor)"),
}
FIDELITY_FIGURES = {"agreement": "same label", "ssim": "SSIM", "psnr": "PSNR (dB)"}


def fidelity_lines(result: EvaluationResult) -> list[list[str]]:
    """Rows of the fidelity table: comparison, concepts, figure, value, 95 % CI, n."""
    lines = []
    for comparison, figures in result.fidelity.items():
        group, title = FIDELITY_TITLES[comparison]
        for figure, entry in figures.items():
            cell, kind = entry["average"], "rate" if figure == "agreement" else "score"
            lines.append(
                [
                    title,
                    group,
                    FIDELITY_FIGURES[figure],
                    format_value(cell["value"], kind),
                    format_ci(cell["ci"], kind),
                    str(cell["n"]),
                ]
            )
    return lines


def fid_lines(result: EvaluationResult) -> list[list[str]]:
    """Rows of the image-quality table: concepts, then the distance of each model and the floor."""
    return [
        [group, *(f"{d[v]:.2f}" if v in d else "n/a" for v in ("original", "public", "key", "floor")), str(d["n"])]
        for group, d in result.fid.items()
    ]


FIDELITY_HEADER = ["comparison", "concepts", "figure", "value", "95 % CI", "n"]
FID_HEADER = ["concepts", "original", "public", "with key", "floor (real vs real)", "n"]
FIDELITY_HELP = (
    "Per seed, the image is compared with the original model's image of the same prompt and seed: *same label* "
    "is the share the judge gives the same top label, SSIM and PSNR measure how alike the two images are. For "
    "hidden concepts the key holder's images are compared; for kept concepts the public model's, a floor that "
    "shows how far fine-tuning alone moves an image."
)
FID_HELP = (
    "Fréchet distance between each model's images and real images of the same concepts, in the judge's "
    "features (lower is closer to real); the floor is the distance between two sets of real images of the same size."
)


def rich_table(result: EvaluationResult) -> Table:
    """The averaged figures as a Rich table for the terminal."""
    kind = result.kind
    table = Table(title=f"{result.suite.name}: judge {result.suite.judge}, same prompts and seeds for every model")
    for column, justify in [
        ("figure", "left"),
        ("model", "left"),
        ("value", "right"),
        ("95 % CI", "right"),
        ("original", "right"),
        ("n", "right"),
        ("of original", "right"),
    ]:
        table.add_column(column, justify=justify, no_wrap=True)
    for r in figure_rows(result):
        table.add_row(*main_cells(r, kind))
    return table


def _small_table(title: str, header: list[str], lines: list[list[str]]) -> Table:
    table = Table(title=title)
    for column in header:
        table.add_column(column, no_wrap=True)
    for line in lines:
        table.add_row(*line)
    return table


def print_summary(result: EvaluationResult, console: Console | None = None) -> None:
    console = console or Console()
    console.print(rich_table(result))
    if result.fidelity:
        console.print(
            _small_table("fidelity: the same prompt and seed as the original", FIDELITY_HEADER, fidelity_lines(result))
        )
    if result.fid:
        console.print(_small_table("image quality: Fréchet distance to real images", FID_HEADER, fid_lines(result)))
