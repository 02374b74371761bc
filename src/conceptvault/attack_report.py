"""An attack run as files: ``attacks.json``, ``attacks.md`` and ``attacks.png`` (recovery against attack steps).

Every figure sits beside the two it must be read against: the original model's rate on the same prompts
and seeds (what the concept looked like before hiding) and the key holder's RSR (authorised recovery).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .attacks import Attack, AttackResult
from .evaluate.report import format_ci, format_value
from .files import atomic_write_text
from .records import share_figure, steps_to_half_figure


@dataclass
class AttackRun:
    concept: str
    suite: str
    original: dict  # the original model's rate on the suite's prompts and seeds (Rate.as_dict)
    rsr: dict | None  # the key holder's rate, where the keys were at hand
    results: list[AttackResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "concept": self.concept,
            "suite": self.suite,
            "original": self.original,
            "rsr": self.rsr,
            "results": [r.to_dict() for r in self.results],
        }


def figures(run: AttackRun) -> dict[str, dict]:
    """The run as a results record's figures: the original model's rate and RSR, then each attack's last
    recovery on each model and, for the trained attacks, its steps to 50 %."""
    found = {"original model": share_figure(run.original)}
    if run.rsr:
        found["key holder (RSR)"] = share_figure(run.rsr)
    for result in run.results:
        found[f"{result.model}: {result.attack}"] = share_figure(result.recovery)
        if Attack(result.attack).trains:
            found[f"{result.model}: {result.attack}, steps to 50 %"] = steps_to_half_figure(
                result.steps_to(0.5), result.budget["steps"]
            )
    return found


def _rate(cell: dict | None) -> str:
    if not cell:
        return "not measured"
    return f"{format_value(cell['value'], 'rate')} ({format_ci(cell['ci'], 'rate')}, n={cell['n']})"


def markdown(run: AttackRun) -> str:
    lines = [
        f"Attacks on hidden '{run.concept}' ({run.suite}): unauthorised recovery, the share of images judged "
        "to show the concept.",
        "",
        f"- original model, same prompts and seeds: {_rate(run.original)}",
        f"- key holder (authorised RSR): {_rate(run.rsr)}",
        "",
        "| attack | model | recovery | steps to 50 % | steps | images | prompts | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in run.results:
        reached = r.steps_to(0.5)
        steps_to = (
            "–"
            if not Attack(r.attack).trains
            else (f"{reached:.0f}" if reached is not None else f"> {r.budget['steps']}")
        )
        lines.append(
            f"| {r.attack} | {r.model} | {_rate(r.recovery)} | {steps_to} | {r.budget['steps']} | "
            f"{r.budget['images']} | {r.budget['prompts']} | {r.budget['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(run: AttackRun, path: Path) -> None:
    """One panel per trained attack: recovery against steps for every attacked model, RSR and original marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [a for a in dict.fromkeys(r.attack for r in run.results) if Attack(a).trains]
    if not trained:
        return
    figure, axes = plt.subplots(1, len(trained), figsize=(4.6 * len(trained), 3.8), squeeze=False)
    for panel, attack in zip(axes[0], trained, strict=True):
        for r in (r for r in run.results if r.attack == attack):
            steps = [p["steps"] for p in r.curve]
            values = [100 * p["recovery"]["value"] for p in r.curve]
            low = [100 * p["recovery"]["ci"][0] for p in r.curve]
            high = [100 * p["recovery"]["ci"][1] for p in r.curve]
            line = panel.plot(steps, values, marker="o", label=r.model)[0]
            panel.fill_between(steps, low, high, color=line.get_color(), alpha=0.12)
        panel.axhline(100 * run.original["value"], color="black", ls=":", lw=1, label="original, by prompt")
        if run.rsr:
            panel.axhline(100 * run.rsr["value"], color="green", ls="--", lw=1, label="key holder (RSR)")
        panel.axhline(50, color="grey", lw=0.6)
        panel.set_title(attack)
        panel.set_xlabel("attack steps")
        panel.set_ylim(-2, 102)
        panel.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"'{run.concept}' recovered, %")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(run: AttackRun, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "attacks.json", "md": out / "attacks.md", "png": out / "attacks.png"}
    atomic_write_text(files["json"], json.dumps(run.to_dict(), indent=2) + "\n")
    atomic_write_text(files["md"], markdown(run))
    plot(run, files["png"])
    return files
