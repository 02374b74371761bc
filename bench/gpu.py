"""Time and peak memory of one training update of every method on Stable Diffusion shaped pipelines with random
weights (a step costs the same whatever the weights' values), and each run's length projected from them.

    python bench/gpu.py --record      # SD 1.5 and SDXL shapes on the GPU, fp32 and bf16, checkpointing off and on
    python bench/gpu.py --toy         # tiny shapes on the CPU (plumbing only: the test runs two methods of it)

Each cell runs the method twice on a fresh pipeline, its length settings at n and at 2n: one update costs
(T(2n) - T(n)) / n, which cancels the setup (building the frozen copy, caching trajectories, the closing
steps). ``--repeats`` such pairs give the spread; a full run's time is the setup plus the family's default
number of updates times the update's cost, with the spread carried through. A method that refuses a shape or
a precision is a row that says why, so the table shows what does not run as plainly as what does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import fields
from pathlib import Path

import diffusers
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

import conceptvault
from conceptvault.concepts import Concept
from conceptvault.defaults import family_config, model_family
from conceptvault.errors import ConceptVaultError
from conceptvault.records import make_record, write_record
from conceptvault.registry import get_method

diffusers.utils.logging.set_verbosity_error()  # each cast to bf16 would warn about modules kept in fp32 (none)
TOKENIZER = Path(conceptvault.__file__).parent / "world/weights/model/tokenizer"  # the real CLIP BPE, shipped
METHODS = ("kpop", "sealed", "esd", "uce")
LENGTHS = {"kpop": ("model_updates", "key_updates"), "sealed": ("model_updates",), "esd": ("iterations",), "uce": ()}
CHEAP = dict(sampler_steps=2, cache_trajectories=1, checkpoint_every=0)  # setup only: cancelled out by T(2n) - T(n)
CONCEPT = Concept("Van Gogh", ["a painting by Van Gogh", "Van Gogh's starry night"], anchor="a painting")
PRESERVE = ["a painting by Monet", "a photo of a cat"]

# (UNet, text encoders as (width, layers, heads, mlp), VAE channels); SDXL's second encoder has a projection
SHAPES = {
    "sd1.5": (
        dict(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        ),
        [(768, 12, 12, 3072)],
        (128, 256, 512, 512),
    ),
    "sdxl": (
        dict(
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ),
        [(768, 12, 12, 3072), (1280, 32, 20, 5120)],
        (128, 256, 512, 512),
    ),
    "toy-sd1": (
        dict(
            sample_size=8,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768,
            attention_head_dim=4,
            norm_num_groups=8,
        ),
        [(768, 1, 4, 32)],
        (8, 8),
    ),
    "toy-sdxl": (
        dict(
            sample_size=8,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=64,
            attention_head_dim=4,
            norm_num_groups=8,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=32 + 6 * 8,
        ),
        [(32, 1, 4, 32), (32, 1, 4, 32)],
        (8, 8),
    ),
}


def text_encoder(width: int, layers: int, heads: int, mlp: int, projection: bool):
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=width,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def build_pipeline(shape: str, device: str, dtype: torch.dtype, checkpointing: bool):
    """A pipeline of ``shape`` with random weights, on ``device`` in ``dtype``."""
    unet_config, encoders, vae_channels = SHAPES[shape]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **unet_config)
    vae = AutoencoderKL(
        block_out_channels=vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
        latent_channels=4,
        norm_num_groups=min(32, vae_channels[0]),
    )
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    schedule = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    if len(encoders) == 1:
        pipe = StableDiffusionPipeline(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder(*encoders[0], projection=False),
            tokenizer=tokenizer,
            scheduler=DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **schedule),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        pipe = StableDiffusionXLPipeline(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder(*encoders[0], projection=False),
            text_encoder_2=text_encoder(*encoders[1], projection=True),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            scheduler=EulerDiscreteScheduler(**schedule),
        )
    if checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    return pipe.to(device=device, dtype=dtype)


def timed_run(shape, method, device, dtype, checkpointing, updates: int) -> tuple[float, float | None, str]:
    """Seconds, peak GPU memory (GiB; None on a CPU) and the model family of one run with every length setting
    at ``updates``."""
    pipe = build_pipeline(shape, device, dtype, checkpointing)
    spec = get_method(method)
    known = {f.name for f in fields(spec.config_class)}
    settings = {name: value for name, value in CHEAP.items() if name in known}
    settings.update({name: updates for name in LENGTHS[method]})
    family = model_family(pipe).value
    config = family_config(family, 1, method=method, **settings)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    spec.run(pipe, [CONCEPT], config, preserve=PRESERVE, progress=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return time.perf_counter() - started, torch.cuda.max_memory_allocated() / 2**30, family
    return time.perf_counter() - started, None, family


def measure(shape, method, device, dtype, checkpointing, updates: int, repeats: int) -> dict:
    """One cell: the cost of an update (mean and spread over ``repeats``), the setup, the peak memory and the
    projected length of a run at the family's defaults; or why the method refused."""
    try:
        pairs = [
            (
                timed_run(shape, method, device, dtype, checkpointing, updates),
                timed_run(shape, method, device, dtype, checkpointing, 2 * updates),
            )
            for _ in range(repeats)
        ]
    except (ConceptVaultError, ValueError, RuntimeError, NotImplementedError) as error:
        return {"refused": " ".join(str(error).split())[:160]}
    per_update = [max(0.0, (long[0] - short[0]) / updates) for short, long in pairs]
    setup = [short[0] - updates * cost for (short, _), cost in zip(pairs, per_update, strict=True)]
    peaks = [run[1] for pair in pairs for run in pair if run[1] is not None]
    defaults = family_config(pairs[0][0][2], 1, method=method).to_dict()
    full_updates = sum(defaults[name] for name in LENGTHS[method])
    spread = statistics.stdev(per_update) if repeats > 1 else float("inf")
    mean, base = statistics.fmean(per_update), statistics.fmean(setup)
    if full_updates and (repeats < 2 or base < 0 or spread > mean / 2):  # another job's noise, not the method's
        return {"too noisy": f"one update {mean:.3f} ± {spread:.3f} s, setup {base:.1f} s over {repeats} repeats"}
    return {
        "update_seconds": mean,
        "update_spread": spread,
        "setup_seconds": base,
        "peak_gib": max(peaks) if peaks else None,
        "default_updates": full_updates,
        "projected_minutes": (base + full_updates * mean) / 60,
        "projected_spread_minutes": full_updates * spread / 60,
        "short_run_seconds": statistics.fmean(short[0] for short, _ in pairs),  # what a method without updates costs
    }


def print_table(cells: dict) -> None:
    print("\n| shape | method | precision | checkpointing | one update | setup | peak memory | full run (projected) |")
    print("|---|---|---|---|---|---|---|---|")
    for key, cell in cells.items():
        shape, method, precision, checkpointing = key.split("/")
        row = f"| {shape} | {method} | {precision} | {checkpointing} | "
        if "refused" in cell or "too noisy" in cell:
            reason = next(iter(cell))
            print(row + f"{reason}: {cell[reason]} | | | |")
            continue
        memory = "-" if cell["peak_gib"] is None else f"{cell['peak_gib']:.1f} GiB"
        if cell["default_updates"]:
            update = f"{cell['update_seconds']:.3f} ± {cell['update_spread']:.3f} s"
            run = f"{cell['projected_minutes']:.1f} ± {cell['projected_spread_minutes']:.1f} min"
        else:
            update, run = "(closed form)", f"{cell['short_run_seconds'] / 60:.2f} min"
        print(row + f"{update} | {cell['setup_seconds']:.1f} s | {memory} | {run} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", action="store_true", help="tiny shapes on the CPU, fp32 only")
    parser.add_argument("--shape", action="append", default=[], help="sd1.5 or sdxl (default: both)")
    parser.add_argument("--method", action="append", default=[], help=f"one of {', '.join(METHODS)} (default: all)")
    parser.add_argument("--updates", type=int, default=3, help="n: the short run's length (the long one's is 2n)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("runs") / "gpu")
    parser.add_argument("--record", action="store_true", help="write the figures as a results record")
    args = parser.parse_args()
    shapes = ["toy-sd1", "toy-sdxl"] if args.toy else (args.shape or ["sd1.5", "sdxl"])
    precisions = {"fp32": torch.float32} if args.toy else {"fp32": torch.float32, "bf16": torch.bfloat16}
    started, cells = time.perf_counter(), {}
    for shape in shapes:
        for method in args.method or METHODS:
            for precision, dtype in precisions.items():
                for checkpointing in (False, True):
                    key = f"{shape}/{method}/{precision}/{'on' if checkpointing else 'off'}"
                    cells[key] = measure(shape, method, args.device, dtype, checkpointing, args.updates, args.repeats)
                    print(key, json.dumps(cells[key]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(cells, indent=1) + "\n")
    print_table(cells)
    if args.record:
        figures = {
            f"{key}: one update (s)": {"value": cell["update_seconds"], "interval": None, "n": args.repeats}
            for key, cell in cells.items()
            if "update_seconds" in cell and cell["default_updates"]
        }
        figures |= {
            f"{key}: peak memory (GiB)": {"value": cell["peak_gib"], "interval": None, "n": 2 * args.repeats}
            for key, cell in cells.items()
            if "update_seconds" in cell and cell["peak_gib"] is not None
        }
        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        write_record(
            make_record(
                id="gpu-bench" + ("-toy" if args.toy else ""),
                title="One training update of each method on Stable Diffusion shaped pipelines with random weights",
                command="python bench/gpu.py" + (" --toy" if args.toy else "") + " --record",
                settings={"updates": args.updates, "repeats": args.repeats, "cells": cells},
                seeds=[0],
                n=args.repeats,
                figures=figures,
                wall_seconds=time.perf_counter() - started,
                model_fingerprint="random weights",
                judge_fingerprint=None,
                device=device,
            )
        )


if __name__ == "__main__":
    main()
