"""Generating images with or without keys, and laying them out in a labelled grid."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .errors import ConceptVaultError
from .key import attached_keys

MAX_SAMPLER_STEPS = 500  # half the schedulers' 1000 training timesteps (1000 steps overran the DDIM schedule)
MAX_GUIDANCE = 30.0  # far above any useful scale; beyond it images saturate (1e300 drew black images)


def generate_images(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    keys: Sequence[str] | None = None,
    steps: int = 25,
    guidance: float = 7.5,
    batch_size: int = 8,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    progress: bool = True,
) -> list[Image.Image]:
    """One image per ``(prompt, seed)`` pair, made by the diffusers pipeline itself; deterministic per seed.

    ``keys`` names the attached keys to switch on (both guidance branches receive them).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"give one seed per prompt; got {len(prompts)} prompts and {len(seeds)} seeds.")
    if batch_size < 1 or not 1 <= steps <= MAX_SAMPLER_STEPS:
        raise ValueError(
            f"batch_size must be positive and steps 1 to {MAX_SAMPLER_STEPS}; got batch_size={batch_size}, "
            f"steps={steps}."
        )
    if not (math.isfinite(guidance) and 0 <= guidance <= MAX_GUIDANCE):
        raise ValueError(f"guidance must be a finite number from 0 to {MAX_GUIDANCE:g}; got {guidance}.")
    keys = list(keys or [])
    missing = [name for name in keys if name not in attached_keys(pipe.unet)]
    if missing:
        attached = ", ".join(map(repr, attached_keys(pipe.unet))) or "none"
        raise ConceptVaultError(f"no key named {missing[0]!r} is attached to this model; attached keys: {attached}.")
    options = {"cross_attention_kwargs": {"keys": keys}} if keys else {}
    images: list[Image.Image] = []
    columns = (TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("generating", total=len(prompts))
        for start in range(0, len(prompts), batch_size):
            batch_prompts = list(prompts[start : start + batch_size])
            generators = [torch.Generator(pipe.device).manual_seed(int(s)) for s in seeds[start : start + batch_size]]
            with torch.no_grad():
                output = pipe(
                    batch_prompts,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    height=height,
                    width=width,
                    negative_prompt=[negative_prompt] * len(batch_prompts) if negative_prompt else None,
                    generator=generators,
                    output_type="pil",
                    **options,
                )
            images.extend(output.images)
            bar.update(task, advance=len(batch_prompts))
    return images


def image_grid(
    images: Sequence[Image.Image], rows: int, cols: int, labels: Sequence[str] | None = None, min_size: int = 128
) -> Image.Image:
    """Images in a ``rows x cols`` grid, each with its label underneath when labels are given.

    Images smaller than ``min_size`` pixels are enlarged by a whole factor (nearest neighbour) so that
    small models' images stay legible next to their labels.
    """
    if not images or rows * cols < len(images):
        raise ValueError(f"a {rows} x {cols} grid cannot hold {len(images)} images.")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"give one label per image; got {len(labels)} labels for {len(images)} images.")
    factor = max(1, math.ceil(min_size / min(images[0].size)))
    width, height = images[0].size[0] * factor, images[0].size[1] * factor
    strip = 14 if labels else 0
    grid = Image.new("RGB", (cols * width, rows * (height + strip)), "white")
    draw = ImageDraw.Draw(grid)
    for index, image in enumerate(images):
        x, y = (index % cols) * width, (index // cols) * (height + strip)
        grid.paste(image.convert("RGB").resize((width, height), Image.NEAREST), (x, y))
        if labels:
            draw.text((x + 2, y + height + 1), labels[index], fill="black")
    return grid
