"""Hiding on one process against two, side by side in one run: wall time and the vaults' figures.

    python bench/parallel.py --record                    # the arrow on the built-in model, 64 images
    python bench/parallel.py --concept star --size 16 --out runs/parallel-quick

Runs ``conceptvault hide builtin --concept C`` as one process with two threads, then as two processes with one
thread each (``torchrun --nproc-per-node 2``), on an otherwise idle machine; evaluates both vaults with the same
suite, prompts and seeds, and prints ESR, RSR, PSR and key PSR beside each wall time. ``--record`` writes the
record ``parallel-hiding``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from conceptvault.backbone import BUILTIN, load_pipeline
from conceptvault.evaluate import run_suite
from conceptvault.evaluate.world_suites import world_suite
from conceptvault.records import builtin_record, share_figure, write_record
from conceptvault.vault import Vault


def _free_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def hide(out: Path, concept: str, processes: int) -> float:
    """Make the vault (once) with ``processes`` processes sharing two cores; returns the wall seconds."""
    timing = out.with_name(f"{out.name}.seconds")
    if out.exists() and timing.is_file():
        return float(timing.read_text())
    command = ["-m", "conceptvault.cli", "hide", BUILTIN, "--concept", concept, "--out", str(out)]
    if processes > 1:
        launcher = ["-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
        command = [*launcher, "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *command]
    threads = str(max(1, 2 // processes))
    started = time.perf_counter()
    subprocess.run([sys.executable, *command], check=True, env={**os.environ, "OMP_NUM_THREADS": threads})
    seconds = time.perf_counter() - started
    timing.write_text(f"{seconds:.1f}\n")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", default="arrow")
    parser.add_argument("--size", type=int, default=64, help="images of the hidden shape")
    parser.add_argument("--out", type=Path, default=Path("runs") / "parallel")
    parser.add_argument("--record", action="store_true", help="write the figures as a results record")
    args = parser.parse_args()
    started, figures = time.perf_counter(), {}
    suite = world_suite("shape", [args.concept], size=args.size, kept_size=16)
    print("| processes | wall time | ESR | RSR | PSR | key PSR |\n|---|---|---|---|---|---|")
    for processes in (1, 2):
        seconds = hide(args.out / f"{processes}-process.vault", args.concept, processes)
        vault = Vault.load(args.out / f"{processes}-process.vault", keys="all")
        evaluation = run_suite(
            load_pipeline(BUILTIN),
            vault,
            suite,
            args.out / f"{processes}-process",
            original_images=args.out / "original",
        )
        cells = {
            "ESR": evaluation.cell("esr", concept=args.concept),
            "RSR": evaluation.cell("rsr", concept=args.concept),
        }
        cells |= {"PSR": evaluation.cell("psr"), "key PSR": evaluation.cell("key_psr")}
        figures |= {f"{processes} process(es): {name}": share_figure(cell) for name, cell in cells.items()}
        figures[f"{processes} process(es): wall time"] = {
            "value": round(seconds, 1),
            "interval": None,
            "n": 1,
            "unit": "s",
        }
        print(
            f"| {processes} | {seconds:.0f} s | "
            + " | ".join(f"{100 * cell['value']:.1f} %" for cell in cells.values())
            + " |"
        )
    if args.record:
        write_record(
            builtin_record(
                id="parallel-hiding",
                title=f"Hiding the {args.concept} on one process (two threads) and on two (one thread each)",
                command="python bench/parallel.py " + " ".join(sys.argv[1:]),
                settings={"concept": args.concept, "kept_size": 16},
                seeds=list(range(args.size)),
                n=args.size,
                figures=figures,
                wall_seconds=time.perf_counter() - started,
            )
        )


if __name__ == "__main__":
    main()
