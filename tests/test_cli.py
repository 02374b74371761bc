from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from conceptvault.backbone import load_pipeline
from conceptvault.cli import app, main
from conceptvault.concepts import Concept
from conceptvault.errors import ConceptVaultError
from conceptvault.methods.kpop import HideConfig, hide

QUICK = ["--model-updates", "2", "--sampler-steps", "3", "--m", "2", "--checkpoint-every", "1"]


def run(capsys, *args: str) -> tuple[int, str, str]:
    """Run the console entry point in-process; return its exit status, stdout and stderr."""
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def test_hide_inspect_generate_export_end_to_end(sd1_path, tmp_path, capsys):
    vault, secret = tmp_path / "vault", tmp_path / "passphrase.txt"
    secret.write_text("correct horse\n")
    code, out, err = run(
        capsys,
        "hide",
        sd1_path,
        "--concept",
        "star|five-pointed star",
        "--concept",
        "heart",
        "--anchor",
        "heart=a shape",
        "--preserve",
        "a circle",
        "--out",
        vault,
        "--passphrase-file",
        secret,
        "--latents",
        "cache",
        *QUICK,
    )
    assert code == 0, err
    assert "wrote the vault" in out and sorted(p.name for p in (vault / "keys").iterdir()) == ["heart.key", "star.key"]
    assert not (tmp_path / "vault.checkpoint").exists()

    code, out, err = run(capsys, "inspect", vault)
    assert code == 0, err
    assert "star; five-pointed star" in out and "a shape" in out and "passphrase" in out

    grid = tmp_path / "grid.png"
    code, out, err = run(
        capsys,
        "generate",
        vault,
        "a star",
        "--key",
        "star",
        "--key",
        "heart",
        "--seeds",
        "0,1,2",
        "--steps",
        "2",
        "--passphrase-file",
        secret,
        "--out",
        grid,
    )
    assert code == 0, err
    assert Image.open(grid).size == (3 * 128, 128 + 14)

    exported = tmp_path / "exported"
    code, out, err = run(capsys, "export", vault, "--out", exported)
    assert code == 0, err
    plain = StableDiffusionPipeline.from_pretrained(exported)
    plain.set_progress_bar_config(disable=True)
    assert plain("a star", num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 3)


def test_errors_are_one_line(sd1_path, sd2_path, tmp_path, capsys):
    code, out, err = run(capsys, "hide", tmp_path / "no-model", "--concept", "star", "--out", tmp_path / "v", *QUICK)
    assert code == 1 and err.count("\n") == 1 and err.startswith("error: the model folder")
    assert "Traceback" not in out + err

    vault, secret, wrong = tmp_path / "vault", tmp_path / "right.txt", tmp_path / "wrong.txt"
    secret.write_text("right")
    wrong.write_text("wrong")
    assert (
        run(capsys, "hide", sd1_path, "--concept", "star", "--out", vault, "--passphrase-file", secret, *QUICK)[0] == 0
    )
    code, out, err = run(
        capsys, "generate", vault, "a star", "--key", "star", "--passphrase-file", wrong, "--out", tmp_path / "g.png"
    )
    assert code == 1 and err.count("\n") == 1 and "passphrase is wrong" in err

    for args, message in [
        (["hide", sd1_path, "--concept", "star", "--out", vault, *QUICK], "already exists"),
        (["hide", sd1_path, "--concept", "star", "--out", tmp_path / "w", "--lr", "0"], "lr must be positive"),
        (["hide", sd1_path, "--concept", "star", "--out", tmp_path / "w", "--placement", "top"], "'top'"),
        (
            ["hide", sd1_path, "--concept", "star", "--out", tmp_path / "w", "--anchor", "moon=sky"],
            "--anchor 'moon=sky'",
        ),
        (["hide", sd1_path, "--concept", "star"], "Missing option '--out'"),
        (["generate", vault, "a star", "--seeds", "one", "--out", tmp_path / "g.png"], "--seeds 'one'"),
        (["generate", vault, "a star", "--key", "moon", "--out", tmp_path / "g.png"], "no key named 'moon'"),
        (["generate", vault, "a star", "--model", sd2_path, "--out", tmp_path / "g.png"], "this vault was made for"),
        (["inspect", tmp_path / "nothing"], "not a ConceptVault vault"),
        (["export", vault, "--out", vault], "already exists"),
    ]:
        code, out, err = run(capsys, *args)
        assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, (args, err)
        assert message in err, (message, err)


def test_hide_resumes_an_interrupted_run(sd1_path, tmp_path, capsys):
    vault = tmp_path / "vault"
    checkpoint_dir = tmp_path / "vault.checkpoint"
    config = HideConfig(model_updates=2, sampler_steps=3, m=2, checkpoint_every=1)

    def interrupt(step, info):
        raise KeyboardInterrupt

    with pytest.raises(ConceptVaultError, match="interrupted at step 1"):
        hide(
            load_pipeline(str(sd1_path), device="cpu"),
            [Concept("star")],
            config,
            checkpoint_dir=checkpoint_dir,
            on_step=interrupt,
            progress=False,
        )
    code, out, err = run(capsys, "hide", sd1_path, "--concept", "star", "--out", vault, *QUICK)
    assert code == 1 and "holds an unfinished run; add --resume" in err
    code, out, err = run(capsys, "hide", sd1_path, "--concept", "star", "--out", vault, "--resume", *QUICK)
    assert code == 0, err
    assert (vault / "manifest.json").is_file() and not checkpoint_dir.exists()


def test_every_hiding_setting_is_a_hide_option():
    command = next(c for c in app.registered_commands if c.name == "hide")
    parameters = set(command.callback.__code__.co_varnames[: command.callback.__code__.co_argcount])
    assert {f.name for f in dataclasses.fields(HideConfig)} <= parameters


def test_the_console_entry_prints_one_line_and_exits_1(tmp_path):
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-c", "from conceptvault.cli import main; main()", "inspect", str(tmp_path)]
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert finished.returncode == 1
    assert finished.stderr.strip().splitlines() == [
        f"error: '{tmp_path}' is not a ConceptVault vault (it has no manifest.json); give a vault folder."
    ]


def test_threads_follow_the_option_the_environment_or_the_free_cores(monkeypatch):
    from conceptvault.cli.common import free_cores, use_threads

    monkeypatch.setattr(torch, "set_num_threads", lambda n: chosen.append(n))
    chosen = []
    use_threads(3)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    use_threads(None)  # the environment rules: torch read it at start, nothing is changed
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.9, 0.0, 0.0))  # this command alone
    use_threads(None)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.2, 0.0, 0.0))  # four cores' worth of other work
    use_threads(None)
    monkeypatch.setattr(os, "getloadavg", lambda: (40.0, 0.0, 0.0))
    assert free_cores() == 1
    assert chosen == [3, 8, 4]
