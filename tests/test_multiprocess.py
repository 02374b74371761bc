"""Evaluation on several processes (accelerate launch, two CPU processes) equals a single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conceptvault.evaluate import Suite, SuiteConcept

LAUNCHER = Path(sys.executable).with_name("accelerate")


@pytest.mark.skipif(not LAUNCHER.exists(), reason="accelerate's launcher is not installed beside this Python")
def test_two_processes_give_the_single_process_figures(sd1_path, tmp_path):
    vault = tmp_path / "vault"
    environment = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cli = [sys.executable, "-m", "conceptvault.cli"]
    quick = ["--model-updates", "2", "--sampler-steps", "2", "--m", "2"]
    subprocess.run(
        [*cli, "hide", str(sd1_path), "--concept", "star", "--out", str(vault), *quick],
        check=True,
        env=environment,
        capture_output=True,
    )
    suite = tmp_path / "suite.json"
    Suite(
        name="mp",
        judge="world-shape",
        steps=2,
        guidance=3.0,
        hidden=[SuiteConcept("star", [f"a star {i}" for i in range(5)], list(range(5)), labels=["star"])],
        kept=[SuiteConcept("circle", ["a circle", "a disc", "a round circle"], [7, 8, 9], labels=["circle"])],
    ).save(suite)
    evaluate = ["evaluate", str(vault), "--suite", str(suite), "--batch-size", "2"]
    subprocess.run([*cli, *evaluate, "--out", str(tmp_path / "one")], check=True, env=environment, capture_output=True)
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    launched = subprocess.run(
        [
            launcher,
            "launch",
            "--num_processes",
            "2",
            "--cpu",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "conceptvault.cli",
            *evaluate,
            "--out",
            str(tmp_path / "two"),
        ],
        env=environment,
        capture_output=True,
        text=True,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    for part in ("esr", "psr", "rsr", "key_psr", "fidelity", "fid"):
        assert one[part] == two[part], part
    assert two["images"]["total"] == one["images"]["total"] == 24
