"""The evaluation's files (``write_report``), and among them the single-file HTML report: every figure named and
explained, and image grids of the three models (original / public / public + key) on the same prompt and seed side
by side, images embedded as base64."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from PIL import Image

from conceptvault.evaluate.metrics import FIGURE_HELP, FIGURE_NAMES, KEY, ORIGINAL, PUBLIC, UNNAMED
from conceptvault.evaluate.report import (
    FID_HEADER,
    FID_HELP,
    FIDELITY_HEADER,
    FIDELITY_HELP,
    HTML_FILE,
    IMAGES_FILE,
    MARKDOWN_FILE,
    RESULTS_FILE,
    SUITE_FILE,
    ReportFiles,
    fid_lines,
    fidelity_lines,
    figure_rows,
    format_ci,
    format_ratio,
    format_value,
    json_path,
    markdown_report,
    write_images_json,
    write_json,
)
from conceptvault.evaluate.run import EvaluationResult, ImageRecord
from conceptvault.files import atomic_write_text

THUMBNAIL = 160  # pixels: small images are scaled up to this, pixelated; larger ones scaled down

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { width: THUMBNAILpx; height: auto; display: block; }
img.small { image-rendering: pixelated; }
.note { font-size: 12px; color: #555; }
.hit { color: #0a6b2a; } .miss { color: #a01818; }
code { background: #f6f6f6; padding: 0 3px; }
""".replace("THUMBNAIL", str(THUMBNAIL))

_VARIANT_TITLES = {
    ORIGINAL: "original",
    PUBLIC: "public (no key)",
    KEY: "public + key",
    UNNAMED: "original, words removed",
}


def _figures_table(result: EvaluationResult) -> str:
    kind = result.kind
    columns = ["figure", "model", "value", "95 % CI", "original", "n", "of original", "JSON"]
    head = "<tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"
    rows = []
    for r in figure_rows(result):
        cells = [
            f"<td><b>{escape(r.label)}</b></td>",
            f"<td>{escape(r.model)}</td>",
            f"<td class=num>{format_value(r.cell['value'], kind)}</td>",
            f"<td class=num>{format_ci(r.cell['ci'], kind)}</td>",
            f"<td class=num>{format_value(r.cell['original']['value'], kind)}</td>",
            f"<td class=num>{r.cell['n']}</td>",
            f"<td class=num>{format_ratio(r.cell)}</td>",
            f"<td><code>{escape(json_path(r))}</code></td>",
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def _concepts_table(result: EvaluationResult) -> str:
    kind = result.kind
    head = "<tr><th>figure</th><th>concept</th><th>value</th><th>original</th><th>n</th><th>95 % CI</th></tr>"
    rows = [
        f"<tr><td>{escape(r.label)}</td><td>{escape(r.concept or '')}</td>"
        f"<td class=num>{format_value(r.cell['value'], kind)}</td>"
        f"<td class=num>{format_value(r.cell['original']['value'], kind)}</td>"
        f"<td class=num>{r.cell['n']}</td><td class=num>{format_ci(r.cell['ci'], kind)}</td></tr>"
        for r in figure_rows(result, per_concept=True)
    ]
    return "<table>" + head + "".join(rows) + "</table>"


def _plain_table(header: list[str], lines: list[list[str]], help_text: str) -> str:
    head = "<tr>" + "".join(f"<th>{escape(c)}</th>" for c in header) + "</tr>"
    rows = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in line) + "</tr>" for line in lines)
    return f"<table>{head}{rows}</table><p class=note>{escape(help_text)}</p>"


def _image_cell(record: ImageRecord | None, first_measure: str, kind: str) -> str:
    if record is None or not record.path.is_file():
        return "<td>missing</td>"
    data = record.path.read_bytes()
    with Image.open(record.path) as image:
        small = image.width < THUMBNAIL
    source = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    mark = ""
    if kind == "rate" and first_measure in record.hits:
        shown = record.hits[first_measure]
        verdict = f"&#10003; reads as {escape(record.concept)}" if shown else f"&#10007; not {escape(record.concept)}"
        mark = f"<span class={'hit' if shown else 'miss'}>{verdict}</span><br>"
    alt = escape(f"{record.variant}: {record.prompt} (seed {record.seed})")
    return (
        f"<td><img class='{'small' if small else ''}' src='{source}' alt='{alt}' title='{alt}'>"
        f"<div class=note>{mark}{escape(record.note)}</div></td>"
    )


def _grids(result: EvaluationResult, images_per_concept: int) -> str:
    by_key = {(r.variant, r.concept, r.index): r for r in result.records}
    first = result.measures[0]
    parts = []
    for group, concepts in (("hidden", result.suite.hidden), ("kept", result.suite.kept)):
        for concept in concepts:
            variants = [v for v in _VARIANT_TITLES if (v, concept.name, 0) in by_key]
            header = (
                "<tr><th>prompt (seed)</th>" + "".join(f"<th>{_VARIANT_TITLES[v]}</th>" for v in variants) + "</tr>"
            )
            rows = []
            for index in range(min(images_per_concept, len(concept.prompts))):
                label = f"{escape(concept.prompts[index])}<br><span class=note>seed {concept.seeds[index]}</span>"
                cells = "".join(
                    _image_cell(by_key.get((v, concept.name, index)), first, result.kind) for v in variants
                )
                rows.append(f"<tr><td>{label}</td>{cells}</tr>")
            parts.append(f"<h3>{escape(concept.name)} ({group})</h3><table>{header}{''.join(rows)}</table>")
    return "\n".join(parts)


def html_report(result: EvaluationResult, *, images_per_concept: int = 8) -> str:
    """The whole report as one HTML string (no external files)."""
    meta, suite = result.meta, result.suite
    settings, vault, images = meta["settings"], meta["vault"], meta["images"]
    helps = "".join(
        f"<li><b>{escape(FIGURE_NAMES[f])}</b> (<code>{f}</code>): {escape(FIGURE_HELP[f])}.</li>"
        for f in result.figures
    )
    facts = [
        f"judge <code>{escape(suite.judge)}</code>, measures {escape(', '.join(result.measures))}",
        f"hidden: {escape(', '.join(c.name for c in suite.hidden))}; "
        f"kept: {escape(', '.join(c.name for c in suite.kept) or 'none')}",
        f"vault <code>{escape(str(vault.get('path') or ''))}</code> on base model "
        f"<code>{escape(str(vault.get('base_model')))}</code>",
        f"{settings['steps']} sampler steps, guidance {settings['guidance']}, batch {settings['batch_size']}, "
        f"device {escape(settings['device'])}",
        f"{images['total']} images ({images['generated']} generated, {images['reused']} reused); "
        f"{meta['seconds']['generate']} s generating, {meta['seconds']['judge']} s judging",
    ]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ConceptVault evaluation: {escape(suite.name)}</title>
<style>{_STYLE}</style></head><body>
<h1>ConceptVault evaluation: {escape(suite.name)}</h1>
<p>{escape(suite.description)}</p>
<ul>{"".join(f"<li>{fact}</li>" for fact in facts)}</ul>
<h2>Figures</h2>
<p>Every figure is computed on the same prompts and seeds for each model and shown beside the original
model's; intervals are 95 % (Wilson for shares, normal for mean scores).</p>
{_figures_table(result)}
<ul>{helps}</ul>
{"<h2>Fidelity</h2>" + _plain_table(FIDELITY_HEADER, fidelity_lines(result), FIDELITY_HELP) if result.fidelity else ""}
{"<h2>Image quality</h2>" + _plain_table(FID_HEADER, fid_lines(result), FID_HELP) if result.fid else ""}
<h2>Per concept</h2>
{_concepts_table(result)}
<h2>Images: the same prompt and seed through each model</h2>
<p>The judge's reading is under each image (first measure: {escape(result.measures[0])}).</p>
{_grids(result, images_per_concept)}
</body></html>
"""


def write_report(
    result: EvaluationResult, out_dir: str | Path | None = None, *, images_per_concept: int = 8
) -> ReportFiles:
    """Write results.json, images.json, results.md, report.html and suite.json into ``out_dir`` (default the run's)."""
    out = Path(out_dir) if out_dir is not None else result.out_dir
    files = ReportFiles(out / RESULTS_FILE, out / IMAGES_FILE, out / MARKDOWN_FILE, out / HTML_FILE, out / SUITE_FILE)
    write_json(result, files.json)
    write_images_json(result, files.images)
    atomic_write_text(files.markdown, markdown_report(result))
    atomic_write_text(files.html, html_report(result, images_per_concept=images_per_concept))
    result.suite.save(files.suite)
    return files
