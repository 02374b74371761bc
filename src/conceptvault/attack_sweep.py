"""The fine-tuning attacker's best setting: a sweep over learning rates, trained weights, pictures and seeds.

A public model resists fine-tuning only as well as it resists the attacker's *best* fine-tune, and a
never-trained model is the floor to hold it against. The sweep fine-tunes every attacked model (the
public one and the controls) with every setting of the plan, on several attack seeds, measuring recovery
along the way; for each model it names the setting that reaches 50 % recovery in the fewest steps, with an
interval over the seeds. Each run is written as it finishes (``runs/<model>/<setting>-seed<k>.json``), so
an interrupted sweep continues where it stopped.

```
OUT/sweep.json   every setting of every model: steps to 50 % per seed, mean and interval; the best per model
OUT/sweep.md     the same as tables, best first
OUT/sweep.png    recovery against steps of each model's best setting, every seed
```
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .attacks import Attack, AttackConfig, AttackResult, FinetuneWeights, run_attack
from .errors import ConceptVaultError
from .files import atomic_write_text, slug

# two-sided 95 % quantiles of Student's t by degrees of freedom (1 to 9); above that, the normal one
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


@dataclass(frozen=True)
class Setting:
    """One fine-tuning attacker: what it trains, at which rate, from how many pictures."""

    weights: str
    lr: float
    images: int

    @property
    def name(self) -> str:
        return f"{self.weights}-lr{self.lr:g}-{self.images}img"


@dataclass
class SweepPlan:
    """The attacker settings to try, on which seeds, for how long, and where recovery is measured."""

    lrs: tuple[float, ...] = (1e-5, 1e-4, 1e-3)
    weights: tuple[str, ...] = tuple(w.value for w in FinetuneWeights)
    images: tuple[int, ...] = (64, 256)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 1000
    measurements: int = 8  # points of each recovery curve besides step 0

    def __post_init__(self) -> None:
        for lr in self.lrs:
            AttackConfig(lr=lr)  # the attacks' own check: finite, above 0, at most 1
        for weights in self.weights:
            AttackConfig(weights=weights)
        if not (self.lrs and self.weights and self.images and self.seeds):
            raise ValueError("a sweep needs at least one learning rate, kind of weights, picture count and seed.")
        if min(self.images) < 1 or self.steps < 1 or self.measurements < 1:
            raise ValueError("a sweep needs images >= 1, steps >= 1 and measurements >= 1.")

    def settings(self) -> list[Setting]:
        return [Setting(w, lr, n) for w, lr, n in itertools.product(self.weights, self.lrs, self.images)]

    def measure_at(self) -> tuple[int, ...]:
        return tuple(sorted({0, *(round(self.steps * (i + 1) / self.measurements) for i in range(self.measurements))}))


@dataclass
class SettingSummary:
    """One setting on one model: steps to 50 % per seed (None: not within the budget) and their mean."""

    model: str
    setting: Setting
    budget: int
    steps: dict[int, float | None] = field(default_factory=dict)

    @property
    def reached(self) -> int:
        return sum(v is not None for v in self.steps.values())

    @property
    def mean(self) -> float | None:
        """The mean steps to 50 % over seeds, a seed that never reached it counted at the budget (so the mean is a
        lower bound then); None when no seed reached it."""
        if not self.reached:
            return None
        return statistics.fmean(v if v is not None else self.budget for v in self.steps.values())

    @property
    def interval(self) -> tuple[float, float] | None:
        """A 95 % t-interval of the mean over seeds, where every seed reached 50 % and there are at least two."""
        values = list(self.steps.values())
        if len(values) < 2 or None in values:
            return None
        half = _T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
        return (max(0.0, self.mean - half), self.mean + half)

    def rank(self) -> tuple[float, float]:
        """Fewer steps to 50 % is stronger; a setting that reaches it on more seeds beats one on fewer."""
        return (-self.reached, self.mean if self.mean is not None else math.inf)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "setting": self.setting.name,
            "weights": self.setting.weights,
            "lr": self.setting.lr,
            "images": self.setting.images,
            "budget": self.budget,
            "steps_to_50": {str(seed): value for seed, value in self.steps.items()},
            "reached": self.reached,
            "seeds": len(self.steps),
            "mean": self.mean,
            "interval": list(self.interval) if self.interval else None,
        }


def best_settings(summaries: list[SettingSummary]) -> dict[str, SettingSummary]:
    """Each model's strongest setting: the one with the fewest steps to 50 % recovery."""
    best: dict[str, SettingSummary] = {}
    for summary in summaries:
        if summary.model not in best or summary.rank() < best[summary.model].rank():
            best[summary.model] = summary
    return best


def run_sweep(campaign, plan: SweepPlan, out: Path, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Fine-tune every model of ``campaign`` with every setting and seed of ``plan`` (runs already written in
    ``out`` are read, not repeated), then write the sweep's files."""
    out = Path(out)
    _claim(out, plan)
    summaries, curves = [], {}
    for target in campaign.targets:
        for setting in plan.settings():
            summary = SettingSummary(target.name, setting, plan.steps)
            for seed in plan.seeds:
                result = _run_once(campaign, target, setting, seed, plan, out, log)
                summary.steps[seed] = result.steps_to(0.5)
                curves[(target.name, setting.name, seed)] = result.curve
            summaries.append(summary)
    return write_sweep(summaries, curves, plan, out)


def _claim(out: Path, plan: SweepPlan) -> None:
    """Record the plan in ``out``; a folder holding another plan's runs is refused (they would not compare)."""
    file, wanted = out / "plan.json", {"steps": plan.steps, "measure_at": list(plan.measure_at())}
    if file.is_file():
        if json.loads(file.read_text()) != wanted:
            raise ConceptVaultError(
                f"'{out}' holds sweep runs of another length or measurement plan; give another `out`, or the "
                "same `steps` as before."
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(file, json.dumps(wanted) + "\n")


def _run_once(campaign, target, setting: Setting, seed: int, plan: SweepPlan, out: Path, log) -> AttackResult:
    file = out / "runs" / slug(target.name) / f"{setting.name}-seed{seed}.json"
    if file.is_file():
        return AttackResult.from_dict(json.loads(file.read_text()))
    log(f"fine-tuning {target.name}: {setting.name}, seed {seed} ...")
    config = AttackConfig(
        steps=plan.steps,
        images=setting.images,
        lr=setting.lr,
        seed=seed,
        weights=setting.weights,
        measure_at=plan.measure_at(),
    )
    result = run_attack(
        Attack.FINETUNE,
        target.pipe,
        campaign.recovery(target.pipe),
        config,
        model=target.name,
        images=campaign.images[: setting.images],
    )
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(file, json.dumps(result.to_dict(), indent=1) + "\n")
    reached = result.steps_to(0.5)
    log(f"  steps to 50 %: {f'{reached:.0f}' if reached is not None else f'> {plan.steps}'}")
    return result


def write_sweep(summaries: list[SettingSummary], curves: dict, plan: SweepPlan, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "sweep.json", "md": out / "sweep.md", "png": out / "sweep.png"}
    best = best_settings(summaries)
    data = {
        "plan": {
            "lrs": list(plan.lrs),
            "weights": list(plan.weights),
            "images": list(plan.images),
            "seeds": list(plan.seeds),
            "steps": plan.steps,
            "measure_at": list(plan.measure_at()),
        },
        "best": {model: s.to_dict() for model, s in best.items()},
        "settings": [s.to_dict() for s in summaries],
    }
    atomic_write_text(files["json"], json.dumps(data, indent=2) + "\n")
    atomic_write_text(files["md"], sweep_markdown(summaries, plan))
    _plot(best, curves, plan, files["png"])
    return files


BEST = "best setting"


def sweep_figures(sweep: dict) -> dict[str, dict]:
    """A sweep (as ``sweep.json`` holds it) as a results record's figures: every setting's steps to 50 % on every
    model, then each model's best. A seed that never got there counts at the budget and the figure is a lower
    bound (censored)."""

    def figure(summary: dict) -> dict:
        return {
            "value": round(summary["mean"] if summary["mean"] is not None else summary["budget"], 1),
            "interval": summary["interval"],
            "n": summary["seeds"],
            "unit": "steps",
            "censored": summary["reached"] < summary["seeds"],
        }

    found = {f"{s['model']}: {s['setting']}": figure(s) for s in sweep["settings"]}
    return found | {f"{model}: {BEST}": figure(s) for model, s in sweep["best"].items()}


def _steps(summary: SettingSummary) -> str:
    if summary.mean is None:
        return f"> {summary.budget}"
    bound = "≥ " if summary.reached < len(summary.steps) else ""
    interval = f" ({summary.interval[0]:.0f}–{summary.interval[1]:.0f})" if summary.interval else ""
    return f"{bound}{summary.mean:.0f}{interval}"


def sweep_markdown(summaries: list[SettingSummary], plan: SweepPlan) -> str:
    best = best_settings(summaries)
    lines = [
        f"Fine-tuning sweep: {len(plan.settings())} settings x {len(plan.seeds)} seeds per model, up to "
        f"{plan.steps} steps. Steps to 50 % recovery: the mean over seeds (a seed that never got there counted at "
        "the budget, marked ≥) and its 95 % t-interval.",
        "",
        "| model | best setting | steps to 50 % | seeds that reached 50 % | per seed |",
        "|---|---|---|---|---|",
    ]
    for model, s in best.items():
        per_seed = ", ".join(f"{v:.0f}" if v is not None else "–" for v in s.steps.values())
        lines.append(f"| {model} | {s.setting.name} | {_steps(s)} | {s.reached} of {len(s.steps)} | {per_seed} |")
    lines += ["", "| model | setting | steps to 50 % | reached |", "|---|---|---|---|"]
    for s in sorted(summaries, key=lambda s: (s.model, s.rank())):
        lines.append(f"| {s.model} | {s.setting.name} | {_steps(s)} | {s.reached} of {len(s.steps)} |")
    return "\n".join(lines) + "\n"


def _plot(best: dict[str, SettingSummary], curves: dict, plan: SweepPlan, path: Path) -> None:
    """Recovery against steps for each model's best setting, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    for colour, (model, summary) in enumerate(best.items()):
        for seed in summary.steps:
            curve = curves[(model, summary.setting.name, seed)]
            label = f"{model}: {summary.setting.name}" if seed == next(iter(summary.steps)) else None
            steps = [p["steps"] for p in curve]
            axis.plot(
                steps, [100 * p["recovery"]["value"] for p in curve], color=f"C{colour}", marker=".", label=label
            )
    axis.axhline(50, color="grey", lw=0.6)
    axis.set_xlabel("fine-tuning steps")
    axis.set_ylabel("recovered, %")
    axis.set_ylim(-2, 102)
    axis.set_title("each model's strongest fine-tuning attacker, every seed")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
