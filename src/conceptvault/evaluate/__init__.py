"""Measuring a vault: how well its concepts are hidden, how much else survives, how fully the key recovers them.

Typical use::

    from conceptvault.evaluate import resolve_suite, run_suite, write_report, print_summary

    suite = resolve_suite("shape", concept="star", size=16)
    result = run_suite(pipe, vault, suite, "eval-out", batch_size=8)
    print_summary(result)
    files = write_report(result)       # results.json, results.md, report.html, images.json, suite.json
"""

from conceptvault.evaluate.catalog import builtin_suite_names, resolve_suite
from conceptvault.evaluate.html_report import write_report
from conceptvault.evaluate.judges import ClassifierJudge, Judge, Judgement, judge_names, make_judge, register_judge
from conceptvault.evaluate.metrics import FIGURE_HELP, Mean, Rate, figure_label, wilson_interval
from conceptvault.evaluate.report import (
    ReportFiles,
    markdown_report,
    print_summary,
    rich_table,
    write_json,
)
from conceptvault.evaluate.run import EvaluationResult, ImageRecord, run_suite
from conceptvault.evaluate.sd_suites import imagenette_suite, nudity_suite, style_suite
from conceptvault.evaluate.suite import Suite, SuiteConcept, load_suite, suite_from_csv
from conceptvault.evaluate.world_suites import (
    world_colour_suite,
    world_five_shapes_suite,
    world_shape_suite,
    world_style_suite,
)

__all__ = [
    "ClassifierJudge",
    "EvaluationResult",
    "FIGURE_HELP",
    "ImageRecord",
    "Judge",
    "Judgement",
    "Mean",
    "Rate",
    "ReportFiles",
    "Suite",
    "SuiteConcept",
    "builtin_suite_names",
    "figure_label",
    "imagenette_suite",
    "judge_names",
    "load_suite",
    "make_judge",
    "markdown_report",
    "nudity_suite",
    "print_summary",
    "register_judge",
    "resolve_suite",
    "rich_table",
    "run_suite",
    "style_suite",
    "suite_from_csv",
    "wilson_interval",
    "world_colour_suite",
    "world_five_shapes_suite",
    "world_shape_suite",
    "world_style_suite",
    "write_json",
    "write_report",
]
