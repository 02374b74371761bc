"""Judge-measured quality of a Shapes world model, and the time to generate 8 images.

    python bench/world_quality.py [--model FOLDER] [--per-shape 32] [--grid docs/images/world-samples.png]
    python bench/world_quality.py --per-shape 64 --misses docs/images/world-misses.png
    python bench/world_quality.py --per-shape 32 --record       # the figures as the record builtin-model-quality
    python bench/world_quality.py --model builtin-without-star --record   # as builtin-without-star-quality

Prints shape accuracy per shape, colour accuracy where the caption names a colour, and style accuracy
where it names a style, over captions with fixed seeds, 25 sampler steps, guidance 3; the share the judge
rejects as no clear shape; and the world FID of the samples beside its floor (renders against renders).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from conceptvault.backbone import load_pipeline, unet_fingerprint
from conceptvault.evaluate.metrics import Rate
from conceptvault.files import slug
from conceptvault.generate import generate_images, image_grid
from conceptvault.records import folder_fingerprint, make_record, write_record
from conceptvault.world import GUIDANCE, SAMPLE_STEPS
from conceptvault.world.judge import JUDGE_DIR, load_judge
from conceptvault.world.quality import quality_requests, score_requests, world_fid
from conceptvault.world.vocabulary import SHAPES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--per-shape", type=int, default=32)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--grid", help="also write a grid of samples: a row per shape ('a {shape}', seeds 0-7)")
    parser.add_argument("--misses", help="also write a grid of the images whose shape the judge misses, labelled")
    parser.add_argument("--judge", type=Path, default=JUDGE_DIR, help="a judge folder (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", action="store_true", help="write the figures as the record builtin-model-quality")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, device="cpu")
    judge = load_judge(args.judge)

    start = time.perf_counter()
    generate_images(pipe, ["a red star"] * 8, list(range(8)), steps=SAMPLE_STEPS, guidance=GUIDANCE, progress=False)
    eight = time.perf_counter() - start

    requests = quality_requests(args.per_shape)
    images = generate_images(
        pipe,
        [r.prompt for r in requests],
        [r.seed for r in requests],
        steps=SAMPLE_STEPS,
        guidance=GUIDANCE,
        batch_size=32,
    )
    scores = score_requests(judge, requests, images)
    scores.update(world_fid(judge, requests, images))
    scores["seconds_for_8_images"] = eight
    print(f"{'shape':<10} accuracy")
    for shape, accuracy in scores["per_shape"].items():
        print(f"{shape:<10} {100 * accuracy:6.1f} %")
    print(
        f"{'mean':<10} {100 * scores['shape_accuracy']:6.1f} %   (lowest {100 * scores['shape_accuracy_min']:.1f} %)"
    )
    print(f"colour accuracy where named: {100 * scores['colour_accuracy']:.1f} %")
    print(f"style accuracy where named:  {100 * scores['style_accuracy']:.1f} %")
    print(f"rejected as no clear shape: {100 * scores['rejected']:.1f} %")
    print(f"world FID {scores['world_fid']:.2f} (floor, renders against renders: {scores['world_fid_floor']:.2f})")
    print(f"8 images, {SAMPLE_STEPS} steps, guidance {GUIDANCE}: {eight:.2f} s on {torch.get_num_threads()} threads")
    if args.grid:
        shapes = list(SHAPES)
        samples = generate_images(
            pipe,
            [f"a {s}" for s in shapes for _ in range(8)],
            list(range(8)) * len(shapes),
            steps=SAMPLE_STEPS,
            guidance=GUIDANCE,
            progress=False,
        )
        image_grid(samples, len(shapes), 8, min_size=64).save(args.grid)
    if args.misses:  # each labelled "asked: judged"
        missed = [i for i, r in enumerate(requests) if scores["shape_labels"][i] != r.shape]
        labels = [f"{requests[i].shape}: {scores['shape_labels'][i]}" for i in missed]
        if missed:
            cols = min(len(missed), 8)
            grid = image_grid([images[i] for i in missed], math.ceil(len(missed) / cols), cols, labels, min_size=96)
            grid.save(args.misses)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(scores, f, indent=2)
    if args.record:
        builtin = args.model == "builtin"
        write_record(
            make_record(
                id="builtin-model-quality" if builtin else f"{slug(args.model)}-quality",
                title=f"The {'shipped built-in model' if builtin else f'model {args.model}'} under the shipped "
                f"judge, {args.per_shape} captions per shape",
                command="python bench/world_quality.py " + " ".join(sys.argv[1:]),
                settings={"per_shape": args.per_shape, "steps": SAMPLE_STEPS, "guidance": GUIDANCE},
                seeds=sorted({r.seed for r in requests}),
                n=len(requests),
                figures=record_figures(scores, requests, args.per_shape),
                wall_seconds=time.perf_counter() - start,
                model_fingerprint=unet_fingerprint(pipe.unet),
                judge_fingerprint=folder_fingerprint(args.judge),
            )
        )


def record_figures(scores: dict, requests: list, per_shape: int) -> dict:
    """The accuracies as shares of the images they rest on (with Wilson intervals), and the FID beside its floor."""

    def share(value: float, n: int) -> dict:
        rate = Rate(round(value * n), n)
        return {"value": rate.value, "interval": list(rate.ci), "n": n, "unit": "share"}

    lowest = min(scores["per_shape"], key=scores["per_shape"].get)
    named = {head: sum(getattr(r, head) is not None for r in requests) for head in ("colour", "style")}
    return {
        f"shape, {per_shape} captions per shape": share(scores["shape_accuracy"], len(requests)),
        f"lowest shape ({lowest}), {per_shape} captions": share(scores["shape_accuracy_min"], per_shape),
        "colour, where the caption names one": share(scores["colour_accuracy"], named["colour"]),
        "style, where the caption names one": share(scores["style_accuracy"], named["style"]),
        "no clear shape": share(scores["rejected"], len(requests)),
        "world FID": {"value": round(scores["world_fid"], 2), "interval": None, "n": len(requests), "unit": ""},
        "world FID floor (renders against renders)": {
            "value": round(scores["world_fid_floor"], 2),
            "interval": None,
            "n": len(requests),
            "unit": "",
        },
    } | {f"{shape}, {per_shape} captions": share(value, per_shape) for shape, value in scores["per_shape"].items()}


if __name__ == "__main__":
    main()
