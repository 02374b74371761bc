"""Where hiding's time goes on a CPU, and which compute changes pay: the two UNet calls that make up hiding, timed
side by side in one run under each change.

    python bench/cpu_cuts.py --record            # the built-in model, torch.compile included (its compiling: minutes)
    python bench/cpu_cuts.py --model runwayml/stable-diffusion-v1-5 --no-compile --repeats 3   # any diffusers UNet

The calls: a training update (forward and backward at the training batch, 3 parts of ``batch_size`` latents, the
gradient reaching every cross-attention key and value, as a key's does) and a trajectory-caching call (a guided
forward on 2 x 16 latents, no gradient). The changes: channels-last memory, bfloat16 autocast, ``torch.compile``
(its compile time reported apart). Each change's time is the median over ``--repeats`` interleaved rounds, its
ratio to plain fp32 measured in the same rounds; bfloat16's error is its prediction's mean distance from fp32's
over the mean size of fp32's. ``--record`` writes the record ``cpu-cuts``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from conceptvault.backbone import BUILTIN, load_pipeline, unet_predict
from conceptvault.defaults import family_config
from conceptvault.latents import CachedLatents
from conceptvault.records import builtin_record, write_record

CHANGES = ("fp32", "channels-last", "bf16", "compiled")


def inputs(unet, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    size, width = unet.config.sample_size, unet.config.cross_attention_dim
    z = torch.randn(batch, unet.config.in_channels, size, size, generator=generator)
    t = torch.randint(1000, (batch,), generator=generator)
    return z, t, torch.randn(batch, 77, width, generator=generator)


def calls(unet, training_batch: int, compiled: bool) -> dict:
    """The calls: name -> a function of the change that makes the call once and returns the prediction. With
    ``compiled``, the change ``compiled`` calls ``torch.compile(unet)``, which compiles on its first call."""
    generator = torch.Generator().manual_seed(0)
    update, cache = (
        inputs(unet, training_batch, generator),
        inputs(unet, 2 * CachedLatents.TRAJECTORIES_PER_CALL, generator),
    )
    for name, parameter in unet.named_parameters():
        parameter.requires_grad_(".attn2.to_k." in name or ".attn2.to_v." in name)
    compiled_unet = torch.compile(unet) if compiled else None

    def model(change: str):
        return compiled_unet if change == "compiled" else unet

    def train(change: str):
        z, t, states = update
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=change == "bf16"):
            prediction = unet_predict(model(change), _layout(z, change), t, states)
        prediction.float().square().mean().backward()
        unet.zero_grad(set_to_none=True)
        return prediction.detach().float()

    @torch.no_grad()
    def sample(change: str):
        z, t, states = cache
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=change == "bf16"):
            return unet_predict(model(change), _layout(z, change), t, states).float()

    return {"training update": train, "caching call": sample}


def _layout(z: torch.Tensor, change: str) -> torch.Tensor:
    return z.contiguous(memory_format=torch.channels_last) if change == "channels-last" else z


def time_calls(unet, training_batch: int, repeats: int, compile_too: bool) -> tuple[dict, dict, float | None]:
    """Per call and change: the seconds of each round; bf16's relative error per call; the compile seconds."""
    work = calls(unet, training_batch, compile_too)
    changes = [c for c in CHANGES if c != "compiled" or compile_too]
    compile_seconds = None
    if compile_too:
        started = time.perf_counter()
        for call in work.values():
            call("compiled")  # the first call compiles
        compile_seconds = time.perf_counter() - started
    reference = {name: call("fp32") for name, call in work.items()}
    errors = {
        name: float((call("bf16") - reference[name]).abs().mean() / reference[name].abs().mean())
        for name, call in work.items()
    }
    seconds = {name: {change: [] for change in changes} for name in work}
    for _ in range(repeats):  # interleaved, so that a busy spell slows every change alike
        for name, call in work.items():
            for change in changes:
                if change == "channels-last":
                    unet.to(memory_format=torch.channels_last)
                started = time.perf_counter()
                call(change)
                seconds[name][change].append(time.perf_counter() - started)
                unet.to(memory_format=torch.contiguous_format)
    return seconds, errors, compile_seconds


def figures_of(seconds: dict, errors: dict, compile_seconds: float | None) -> dict:
    figures = {}
    for name, by_change in seconds.items():
        plain = statistics.median(by_change["fp32"])
        for change, rounds in by_change.items():
            median = statistics.median(rounds)
            figures[f"{name}, {change}: time"] = {
                "value": round(median * 1000, 1),
                "interval": None,  # a median of a few rounds: the rounds' spread is in the printout, not a 95 % one
                "n": len(rounds),
                "unit": "ms",
            }
            figures[f"{name}, {change}: speed-up"] = {
                "value": round(plain / median, 2),
                "interval": None,
                "n": len(rounds),
                "unit": "x",
            }
        figures[f"{name}, bf16: relative error"] = {
            "value": round(errors[name], 4),
            "interval": None,
            "n": 1,
            "unit": "",
        }
    if compile_seconds is not None:
        figures["compiling"] = {"value": round(compile_seconds, 1), "interval": None, "n": 1, "unit": "s"}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=BUILTIN)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out (it compiles for minutes)")
    parser.add_argument("--record", action="store_true", help="write the figures as the record cpu-cuts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    unet = load_pipeline(args.model).unet
    training_batch = 3 * family_config("small", 1).batch_size  # the key update's three parts
    seconds, errors, compile_seconds = time_calls(unet, training_batch, args.repeats, not args.no_compile)
    figures = figures_of(seconds, errors, compile_seconds)
    for name, figure in figures.items():
        print(f"{name:45s} {figure['value']:>9g} {figure['unit']}")
    for name, by_change in seconds.items():
        for change, rounds in by_change.items():
            print(f"{name}, {change}: rounds from {1000 * min(rounds):.1f} to {1000 * max(rounds):.1f} ms")
    if args.record:
        write_record(
            builtin_record(
                id="cpu-cuts",
                title="The two UNet calls of hiding on the built-in model under each compute change, side by side",
                command="python bench/cpu_cuts.py " + " ".join(sys.argv[1:]),
                settings={
                    "training_batch": training_batch,
                    "threads": args.threads,
                    "changes": list(seconds["training update"]),
                },
                seeds=[0],
                n=args.repeats,
                notes=f"Times are medians of {args.repeats} interleaved rounds; a speed-up is plain fp32's median "
                "over the change's. The compiled model's times leave its compiling out (a figure of its own).",
                figures=figures,
                wall_seconds=time.perf_counter() - started,
            )
        )


if __name__ == "__main__":
    main()
