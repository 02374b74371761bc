"""The demo: the whole story on the built-in model, in a few minutes on a laptop CPU.

Hide one shape (under every name it has) while holding the other shapes to the original, save the
vault, then measure it with the world suite: original, public and key-holder images from the same
prompts and seeds, judged, tabulated and written as an HTML report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from conceptvault.backbone import BUILTIN, load_pipeline
from conceptvault.evaluate import print_summary, resolve_suite, run_suite, write_report
from conceptvault.hide import Concept, HideConfig, hide
from conceptvault.vault import Vault
from conceptvault.world import SHAPES


@dataclass
class DemoPlan:
    """What the demo hides, what it keeps, and how hard it looks."""

    shape: str = "star"
    images_per_shape: int = 16
    config: HideConfig | None = None

    def concept(self) -> Concept:
        return Concept(self.shape, list(SHAPES[self.shape]))

    def preserve(self) -> list[str]:
        """Every other shape by each of its names: the small preserve set."""
        return [f"a {name}" for shape, names in SHAPES.items() if shape != self.shape for name in names]

    def hide_config(self) -> HideConfig:
        return self.config or world_hide_config()


def world_hide_config(**overrides) -> HideConfig:
    """Settings that hide a shape of the built-in model in a couple of minutes on two CPU cores.

    The model is small and its text encoder narrow, so it takes a larger learning rate and far fewer
    updates than Stable Diffusion's defaults; cached trajectories keep each step cheap.
    """
    settings = dict(
        model_updates=150,
        lr=3e-4,
        key_lr=3e-3,
        latents="cache",
        sampler_steps=25,
        cache_trajectories=4,
        batch_size=4,
        checkpoint_every=100,
    )
    settings.update(overrides)
    return HideConfig(**settings)


def run_demo(out: Path, plan: DemoPlan = DemoPlan(), console: Console | None = None, progress: bool = True):
    """Hide, save, evaluate and report; returns the evaluation result and the report's files."""
    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    vault_path = out / "vault"
    concept = plan.concept()
    if not vault_path.exists():
        console.print(f"[bold]1/2[/] hiding '{concept.name}' (as {', '.join(map(repr, concept.prompts))}) in the built-in model")
        pipe = load_pipeline(BUILTIN)
        result = hide(pipe, [concept], plan.hide_config(), preserve=plan.preserve(), checkpoint_dir=out / "checkpoint",
                      resume=(out / "checkpoint" / "checkpoint.pt").is_file(), progress=progress)
        Vault.from_hiding(pipe, [concept], plan.hide_config(), result, plan.preserve()).save(vault_path)
    console.print(f"[bold]2/2[/] evaluating: original, public and key-holder images of every shape, same seeds")
    vault = Vault.load(vault_path, keys="all")
    suite = resolve_suite("shape", concept=plan.shape, size=plan.images_per_shape)
    evaluation = run_suite(load_pipeline(BUILTIN), vault, suite, out / "evaluation", progress=progress, console=console)
    print_summary(evaluation, console=console)
    files = write_report(evaluation)
    console.print(f"report: [bold]{files.html}[/]   figures: {files.json}   vault: {vault_path}")
    return evaluation, files
