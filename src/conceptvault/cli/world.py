"""The built-in Shapes world: sample its model, train it again."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from ..backbone import load_pipeline
from ..errors import ConceptVaultError
from ..generate import generate_images, image_grid
from ..world.train import WorldTrainConfig
from .common import (
    app,
    check_image_path,
    check_positive,
    parse_seeds,
    say,
    stage_progress,
)

world_app = typer.Typer(
    help="The built-in Shapes world: sample its model, or train it again from scratch.", no_args_is_help=True
)
app.add_typer(world_app, name="world")

RECIPE = WorldTrainConfig()  # the shipped model's training budget: the train command's defaults


@world_app.command("sample")
def world_sample_command(
    prompt: Annotated[str, typer.Argument(help="What to draw, e.g. 'a striped red star'.")],
    out: Annotated[Path, typer.Option(help="PNG file to write: a grid with one image per seed.")] = Path("sample.png"),
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds, one image each.")] = "0,1,2,3,4,5,6,7",
    model: Annotated[str, typer.Option(help="The model to sample.")] = "builtin",
) -> None:
    """Draw PROMPT with the built-in model (25 steps, guidance 3) and write a grid."""
    from ..world import GUIDANCE, SAMPLE_STEPS

    seed_list = parse_seeds(seeds)
    check_image_path(out)
    pipe = load_pipeline(model)
    images = generate_images(pipe, [prompt] * len(seed_list), seed_list, steps=SAMPLE_STEPS, guidance=GUIDANCE)
    cols = min(len(images), 8)
    image_grid(images, math.ceil(len(images) / cols), cols).save(out)
    say(f"wrote {out}")


@world_app.command("train")
def world_train_command(
    out: Annotated[Path, typer.Option(help="Folder to write model/ and judge/ into; run again to continue.")] = Path(
        "world-model"
    ),
    denoiser_steps: Annotated[
        int, typer.Option(help="Training steps of the text encoder and UNet (0: stop after VAE and judge).")
    ] = RECIPE.denoiser_steps,
    vae_steps: Annotated[int, typer.Option(help="Training steps of the VAE, encoder and decoder.")] = RECIPE.vae_steps,
    decoder_steps: Annotated[
        int, typer.Option(help="Training steps of the VAE's decoder, encoder frozen.")
    ] = RECIPE.decoder_steps,
    judge_steps: Annotated[int, typer.Option(help="Training steps of the judge (0: no judge).")] = RECIPE.judge_steps,
    init_from: Annotated[
        Path | None, typer.Option(help="Continue this model folder's VAE and denoiser instead of starting anew.")
    ] = None,
    vae_from: Annotated[
        str | None, typer.Option(help="Use this model's VAE as it is ('builtin' or a folder); train the rest anew.")
    ] = None,
    without: Annotated[
        list[str] | None, typer.Option(help="A shape left out of the world: the model never sees it. Repeatable.")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's choice).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the whole run.")] = 0,
) -> None:
    """Train the built-in model and judge (uses a GPU when there is one); a second call continues the run."""
    from ..world import BUILTIN_MODEL_DIR, SHAPES
    from ..world.train import train_world

    check_positive(threads=threads)
    if denoiser_steps < 0:
        raise ConceptVaultError(f"--denoiser-steps must be at least 0; got {denoiser_steps}.")
    unknown = [shape for shape in without or [] if shape not in SHAPES]
    if unknown:
        raise ConceptVaultError(
            f"--without {unknown[0]!r} is not a shape of the world; choose from {', '.join(SHAPES)}."
        )
    if threads:
        import torch

        torch.set_num_threads(threads)
    config = WorldTrainConfig(
        denoiser_steps=denoiser_steps,
        vae_steps=vae_steps,
        decoder_steps=decoder_steps,
        judge_steps=judge_steps,
        seed=seed,
        init_from=str(init_from) if init_from else None,
        vae_from=str(BUILTIN_MODEL_DIR) if vae_from == "builtin" else vae_from,
        without=list(without or []),
    )
    with stage_progress() as progress:
        report = train_world(out, config, BUILTIN_MODEL_DIR / "tokenizer", log=say, progress=progress)
    written = " and ".join(str(out / part) for part in ("model", "judge") if (out / part).exists())
    say(f"wrote {written}; judge accuracy {report.get('judge_accuracy', '(no judge trained)')}")
