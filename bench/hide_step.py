"""Benchmark: one hiding step with `sample` vs `cache` latents, and the key's inference overhead.

Measured side by side in one run, on the CPU:
  1. the tiny SD 1.x shaped test pipeline (16 x 16 latents);
  2. the full SD 1.5 UNet architecture, randomly initialised (860 M parameters, 64 x 64 latents);
  3. inference with keys attached (none active, and one active) against the plain pipeline / UNet.
Each hiding measurement runs in its own process so that peak memory figures do not leak between them.

    python bench/hide_step.py            # the full run (minutes: the SD 1.5 UNet is slow on a CPU)
    python bench/hide_step.py --quick    # a smoke run of every code path (SD 1.5 UNet at 8 x 8 latents)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tiny pipelines the tests use
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SD15_UNET = dict(
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
MIB = 2**20


# -- measuring ----------------------------------------------------------------------------------------


class ResidentMemory:
    """Samples this process's resident memory every few milliseconds in a background thread."""

    def __init__(self, every: float = 0.005):
        self.samples: list[tuple[float, int]] = []
        self.every, self.running = every, True
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            with open("/proc/self/statm") as statm:
                self.samples.append((time.perf_counter(), int(statm.read().split()[1]) * self.page))
            time.sleep(self.every)

    def window(self, start: float, end: float) -> tuple[int, int]:
        """(resident bytes just before ``start``, peak resident bytes within ``[start, end]``)."""
        before = [rss for t, rss in self.samples if t <= start]
        inside = [rss for t, rss in self.samples if start <= t <= end] or before[-1:]
        return (before[-1] if before else inside[0]), max(inside)

    def stop(self) -> None:
        self.running = False
        self.thread.join()


def build_pipeline(model: str, latent_size: int):
    from diffusers import UNet2DConditionModel

    from tiny_models import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd1")
    if model == "sd15":  # the full SD 1.5 UNet beside the tiny text encoder (same 768 width) and VAE
        pipe.register_modules(unet=UNet2DConditionModel(sample_size=latent_size, **SD15_UNET))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hide_worker(spec: dict) -> dict:
    """Run a short hide and time each step; returns per-step seconds, sampler calls and memory."""
    import torch

    from conceptvault.concepts import Concept
    from conceptvault.methods.kpop import HideConfig, hide

    torch.set_num_threads(spec["threads"])
    pipe = build_pipeline(spec["model"], spec["latent_size"])
    config = HideConfig(
        model_updates=spec["model_updates"],
        sampler_steps=spec["sampler_steps"],
        latents=spec["source"],
        cache_trajectories=spec["trajectories"],
        checkpoint_every=0,
    )
    memory = ResidentMemory()
    steps = []

    def on_step(step: int, info: dict) -> None:
        end = time.perf_counter()
        start_rss, peak_rss = memory.window(end - info["seconds"], end)
        steps.append(
            dict(
                model_step=info["model_step"],
                seconds=info["seconds"],
                sampler_calls=info["sampler_calls"],
                step_peak_mib=(peak_rss - start_rss) / MIB,
                peak_rss_mib=peak_rss / MIB,
            )
        )

    result = hide(pipe, [Concept("star")], config, progress=False, measure=False, on_step=on_step)
    memory.stop()
    return dict(steps=steps, setup_seconds=result.stats["setup_seconds"], guided_call=guided_call_seconds(pipe, 5))


def guided_call_seconds(pipe, repeats: int) -> list[float]:
    """Seconds of one guided sampler call (the UNet on a batch of 2), measured ``repeats`` times."""
    import torch

    size = pipe.unet.config.sample_size
    z = torch.randn(2, 4, size, size)
    states = torch.randn(2, 77, pipe.unet.config.cross_attention_dim)
    seconds = []
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            pipe.unet(z, torch.tensor([500, 500]), states)
            seconds.append(time.perf_counter() - started)
    return seconds


def overhead_worker(spec: dict) -> dict:
    """Seconds per call of the plain model, with keys attached but off, and with one key on."""
    import torch

    from conceptvault.key import Key, Placement, attach_keys, detach_keys

    torch.set_num_threads(spec["threads"])
    pipe = build_pipeline(spec["model"], spec["latent_size"])
    width = pipe.unet.config.cross_attention_dim
    key = Key(10, width, init=torch.randn(10, width, generator=torch.Generator().manual_seed(0)))
    size = pipe.unet.config.sample_size
    z, states = torch.randn(2, 4, size, size), torch.randn(2, 77, width)  # one guided step: two branches

    def call(keys):
        with torch.no_grad():
            if spec["model"] == "tiny":  # the whole pipeline: text encoder, sampler loop, VAE
                pipe(
                    "a star",
                    num_inference_steps=spec["steps"],
                    generator=torch.Generator().manual_seed(0),
                    output_type="np",
                    cross_attention_kwargs={"keys": keys} if keys else None,
                )
            else:  # the UNet alone, on a guided batch
                pipe.unet(z, torch.tensor([500, 500]), states, cross_attention_kwargs={"keys": keys} if keys else None)

    timings = {"plain": [], "attached, no key": [], "one key on": []}
    call(None)  # warm up
    for _ in range(spec["repeats"]):
        for mode in timings:
            if mode != "plain":
                attach_keys(pipe.unet, {"star": key}, Placement.MID)
            started = time.perf_counter()
            call(["star"] if mode == "one key on" else None)
            timings[mode].append(time.perf_counter() - started)
            detach_keys(pipe.unet)
    return {mode: statistics.median(values) for mode, values in timings.items()}


# -- orchestrating ------------------------------------------------------------------------------------


def run_worker(kind: str, spec: dict) -> dict:
    """Run one measurement in a fresh process (clean memory figures) and read back its JSON result."""
    command = [sys.executable, __file__, "--worker", kind, json.dumps(spec)]
    environment = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=ROOT)
    lines = [line for line in finished.stdout.splitlines() if line.startswith("RESULT ")]
    if finished.returncode != 0 or not lines:
        raise SystemExit(f"the {kind} worker failed:\n{finished.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def summarise(steps: list[dict]) -> dict:
    """Medians, not means: one step slowed by another process on the machine must not move the figure."""
    model = [s["seconds"] for s in steps if s["model_step"]]
    key = [s["seconds"] for s in steps if not s["model_step"]]
    return dict(
        model_step=statistics.median(model),
        key_step=statistics.median(key),
        pair=statistics.median(model) + statistics.median(key),
        sampler_calls=statistics.mean(s["sampler_calls"] for s in steps),
        step_peak_mib=max(s["step_peak_mib"] for s in steps),
        peak_rss_mib=max(s["peak_rss_mib"] for s in steps),
    )


def hiding_section(title: str, base: dict) -> None:
    print(f"\n== one hiding step: {title} ==")
    print(
        f"   sampler_steps {base['sampler_steps']}, cache {base['trajectories']} trajectories, batch 1, "
        f"{base['model_updates'] * 2} steps (k=2), {base['threads']} threads"
    )
    figures = {}
    for source in ("sample", "cache"):
        result = run_worker("hide", dict(base, source=source))
        figures[source] = dict(summarise(result["steps"]), setup=result["setup_seconds"], calls=result["guided_call"])
    print(
        f"   {'source':8}{'model step s':>14}{'key step s':>12}{'pair s':>10}{'sampler calls':>15}"
        f"{'step peak MiB':>15}{'peak RSS MiB':>14}{'setup s':>9}"
    )
    for source, f in figures.items():
        print(
            f"   {source:8}{f['model_step']:14.3f}{f['key_step']:12.3f}{f['pair']:10.3f}{f['sampler_calls']:15.1f}"
            f"{f['step_peak_mib']:15.1f}{f['peak_rss_mib']:14.0f}{f['setup']:9.2f}"
        )
    sample, cache = figures["sample"], figures["cache"]
    print(
        f"   ratio sample / cache: time per step pair {sample['pair'] / cache['pair']:.2f}x, "
        f"step peak memory {sample['step_peak_mib'] / max(cache['step_peak_mib'], 1e-9):.2f}x"
    )
    if base["sampler_steps"] != 50:
        print(f"   {projection(cache['pair'] / 2, cache['calls'])}")


MAX_SPREAD = 0.5  # (slowest - fastest) / median of the repeated sampler-call timings above which we do not project


def projection(train_step: float, guided_call: list[float]) -> str:
    """The sample-mode step at the paper's 50 sampler steps, projected from the cache-mode step and a directly
    measured guided sampler call; refused when the repeated call timings disagree too much to extrapolate."""
    per_call = statistics.median(guided_call)
    spread = (max(guided_call) - min(guided_call)) / per_call if per_call > 0 else float("inf")
    if train_step <= 0 or spread > MAX_SPREAD:
        return f"too noisy to project to sampler_steps 50 (sampler-call timings spread {spread:.0%} of their median)"
    projected = train_step + (50 - 1) / 2 * per_call  # the sampler stops at a uniformly drawn step
    return (
        f"projected at the paper's sampler_steps 50: sample {projected:.3f} s/step vs cache {train_step:.3f} s/step "
        f"= {projected / train_step:.1f}x (one guided sampler call {per_call:.3f} s, median of {len(guided_call)})"
    )


def overhead_section(title: str, spec: dict) -> None:
    print(f"\n== key inference overhead: {title} ==")
    timings = run_worker("overhead", spec)
    plain = timings["plain"]
    for mode, seconds in timings.items():
        print(f"   {mode:18}{seconds:10.4f} s   {seconds / plain:6.3f}x plain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: few steps, SD 1.5 UNet at 8 x 8 latents")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per measurement")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, spec = args.worker[0], json.loads(args.worker[1])
        result = hide_worker(spec) if kind == "hide" else overhead_worker(spec)
        print("RESULT " + json.dumps(result))
        return

    quick, threads = args.quick, args.threads
    started = time.perf_counter()
    print(f"ConceptVault hiding-step benchmark ({'quick' if quick else 'full'} run, CPU, {threads} threads)")
    tiny = dict(
        model="tiny",
        latent_size=16,
        threads=threads,
        trajectories=4,
        sampler_steps=8 if quick else 50,
        model_updates=2 if quick else 10,
    )
    hiding_section("tiny SD 1.x pipeline, 16 x 16 latents", tiny)
    size = 8 if quick else 64
    sd15 = dict(
        model="sd15",
        latent_size=size,
        threads=threads,
        trajectories=1,
        sampler_steps=4 if quick else 8,
        model_updates=1,
    )
    hiding_section(f"SD 1.5 UNet architecture (random weights), {size} x {size} latents", sd15)
    overhead_section(
        "tiny pipeline, 10-step guided generation",
        dict(model="tiny", latent_size=16, threads=threads, steps=10, repeats=3 if quick else 10),
    )
    overhead_section(
        f"SD 1.5 UNet, one guided call (batch 2, {size} x {size})",
        dict(model="sd15", latent_size=size, threads=threads, repeats=1 if quick else 3),
    )
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
