"""Every command's inputs checked before any work: numbers finite and in range, devices that exist,
passphrase files read with a bound, outputs that can be written; one clear line, nothing written."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conceptvault.cli import main
from conceptvault.cli.common import MAX_PASSPHRASE_BYTES, read_passphrase
from conceptvault.errors import ConceptVaultError

QUICK_ARGS = ["--model-updates", "2", "--sampler-steps", "2", "--m", "2"]


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def one_line_error(code: int, out: str, err: str) -> bool:
    return code == 1 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in out + err


def _no_model(*args, **kwargs):
    raise AssertionError("a model was loaded before the options were checked")


@pytest.fixture
def no_models(monkeypatch) -> None:
    for module in ("vaults", "measure"):
        monkeypatch.setattr(f"conceptvault.cli.{module}.load_pipeline", _no_model)
    monkeypatch.setattr("conceptvault.attack_campaign.load_pipeline", _no_model, raising=False)


@pytest.fixture(scope="module")
def vault_folder(sd1_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vaults") / "star.vault"
    with pytest.raises(SystemExit) as exit_:
        main(["hide", str(sd1_path), "--concept", "star", "--out", str(out), "--device", "cpu", *QUICK_ARGS])
    assert exit_.value.code == 0
    return out


def written(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- silent wrong results ---------------------------------------------------------------------------


@pytest.mark.parametrize("lr", ["nan", "-1", "0", "inf", "-inf", "1e9"])
def test_attack_refuses_a_learning_rate_that_cannot_train(vault_folder, tmp_path, capsys, no_models, lr):
    code, out, err = run(capsys, "attack", vault_folder, "--out", tmp_path / "attack", "--lr", lr)
    assert one_line_error(code, out, err) and "--lr must be a finite number above 0" in err, err
    assert not (tmp_path / "attack").exists()


def test_the_attack_settings_refuse_a_nan_rate_in_the_library():
    from conceptvault.attacks import AttackConfig

    for lr in (float("nan"), -1.0, 0.0, float("inf")):
        with pytest.raises(ValueError, match="lr must be a finite number"):
            AttackConfig(lr=lr)
    assert AttackConfig(lr=1e-3).lr == 1e-3


@pytest.mark.parametrize("guidance", ["nan", "inf", "-inf", "1e300", "-1e300", "-1", "31"])
def test_generate_refuses_guidance_that_is_not_finite_or_sane(vault_folder, tmp_path, capsys, no_models, guidance):
    code, out, err = run(
        capsys, "generate", vault_folder, "a star", "--out", tmp_path / "g.png", "--guidance", guidance
    )
    assert one_line_error(code, out, err) and "--guidance must be a finite number from 0 to 30" in err, err
    assert written(tmp_path) == []


def test_generate_images_refuses_nan_guidance_in_the_library():
    from conceptvault.generate import generate_images

    with pytest.raises(ValueError, match="guidance"):
        generate_images(object(), ["a"], [0], guidance=float("nan"))
    with pytest.raises(ValueError, match="steps"):
        generate_images(object(), ["a"], [0], steps=100_000_000)


# -- tracebacks that are one line now -----------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "100000000"], "--steps must be a finite number from 1 to 500"),
        (["--steps", "1000"], "--steps must be a finite number from 1 to 500"),  # overran the scheduler's table
        (["--device", "bogus"], "is no torch device"),
        (["--device", "cuda:banana"], "is no torch device"),
        (["--device", "cuda:99"], "cuda"),
    ],
)
def test_generate_refuses_impossible_steps_and_devices(vault_folder, tmp_path, capsys, no_models, extra, message):
    code, out, err = run(capsys, "generate", vault_folder, "a star", "--out", tmp_path / "g.png", *extra)
    assert one_line_error(code, out, err) and message in err, err
    assert written(tmp_path) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_cuda_device_on_a_machine_without_cuda_is_one_line(vault_folder, tmp_path, capsys, no_models):
    commands = [
        ["generate", vault_folder, "a star", "--out", tmp_path / "g.png"],
        ["export", vault_folder, "--out", tmp_path / "public"],
        ["attack", vault_folder, "--out", tmp_path / "attack"],
    ]
    for command in commands:
        code, out, err = run(capsys, *command, "--device", "cuda")
        assert one_line_error(code, out, err) and "no 'cuda' device" in err, err
    assert written(tmp_path) == []


def test_export_single_file_into_a_missing_folder_is_one_line(vault_folder, tmp_path, capsys, no_models):
    out = tmp_path / "missing" / "model.safetensors"
    code, stdout, err = run(capsys, "export", vault_folder, "--out", out, "--format", "single-file")
    assert one_line_error(code, stdout, err) and "does not exist" in err, err
    assert written(tmp_path) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_generate_into_a_read_only_folder_is_refused_before_any_work(vault_folder, tmp_path, capsys, no_models):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        code, out, err = run(capsys, "generate", vault_folder, "a star", "--out", folder / "g.png")
    finally:
        folder.chmod(0o700)
    assert one_line_error(code, out, err) and "cannot write" in err, err


def _nested_copy(vault_folder: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "nested.vault"
    shutil.copytree(vault_folder, copy)
    (copy / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    return copy


def test_a_deeply_nested_manifest_is_one_line_for_inspect_and_serve(vault_folder, tmp_path, capsys):
    copy = _nested_copy(vault_folder, tmp_path)
    code, out, err = run(capsys, "inspect", copy)
    assert one_line_error(code, out, err) and "nested too deeply" in err, err
    code, out, err = run(capsys, "serve", copy, "--db", tmp_path / "grants.sqlite")
    assert one_line_error(code, out, err) and "nested too deeply" in err, err


def test_a_deeply_nested_object_manifest_is_one_line(vault_folder, tmp_path, capsys):
    copy = _nested_copy(vault_folder, tmp_path)
    (copy / "manifest.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    code, out, err = run(capsys, "inspect", copy)
    assert one_line_error(code, out, err), err


# -- passphrase files, read with a bound ---------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (bytes(range(256)) * 4, "control characters"),
        (b"\xff\xfe\x00binary", "not UTF-8"),
        (b"x" * (MAX_PASSPHRASE_BYTES + 1), "longer than 1024 bytes"),
        (b"\n", "is empty"),
        (b"", "is empty"),
        (b"pass\x00word\n", "control characters"),
    ],
)
def test_a_passphrase_file_that_holds_no_passphrase_is_one_line(tmp_path, content, message):
    file = tmp_path / "pass"
    file.write_bytes(content)
    with pytest.raises(ConceptVaultError, match=message):
        read_passphrase(file)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_dev_zero_as_passphrase_file_is_refused_after_a_bounded_read(vault_folder, tmp_path, capsys, no_models):
    code, out, err = run(
        capsys, "generate", vault_folder, "a star", "--out", tmp_path / "g.png", "--passphrase-file", "/dev/zero"
    )
    assert one_line_error(code, out, err) and "longer than 1024 bytes" in err, err


def test_a_passphrase_file_keeps_its_first_line(tmp_path):
    file = tmp_path / "pass"
    file.write_bytes("pässwörd with\ttab\r\nsecond line\n".encode())
    assert read_passphrase(file) == "pässwörd with\ttab"
    file.write_bytes(b"x" * MAX_PASSPHRASE_BYTES)
    assert read_passphrase(file) == "x" * MAX_PASSPHRASE_BYTES


def test_the_manifest_json_above_is_no_valid_manifest():  # guards the nested fixtures' premise
    with pytest.raises(RecursionError):
        json.loads("[" * 200_000 + "]" * 200_000)


# -- interrupts ---------------------------------------------------------------------------------------


def test_an_interrupted_generate_says_so_in_one_line_and_writes_nothing(vault_folder, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("conceptvault.cli.vaults.generate_images", interrupted)
    code, out, err = run(capsys, "generate", vault_folder, "a star", "--out", tmp_path / "g.png", "--device", "cpu")
    assert one_line_error(code, out, err) and "interrupted; nothing was written" in err, err
    assert written(tmp_path) == []


@pytest.mark.parametrize("where", ["json", "out"])
def test_evaluate_refuses_an_output_it_cannot_write_before_any_work(vault_folder, tmp_path, capsys, no_models, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    option = ["--json", blocker / "figures.json"] if where == "json" else ["--out", blocker / "eval"]
    code, out, err = run(capsys, "evaluate", vault_folder, "--size", "1", *option)
    assert one_line_error(code, out, err) and "cannot write" in err, err
    assert written(tmp_path) == ["a-file"]


# -- a Hypothesis pass over numeric options: a refusal is one line, an acceptance is in range -------------

_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "0x10", "", " ", "1_000", "٣"]),
)


class _Loaded(Exception):
    """The options passed every check and the command went on to load a model."""


def _outcome(capsys, monkeypatch, *args) -> tuple[int | None, str]:
    def loaded(*_, **__):
        raise _Loaded

    for module in ("vaults", "measure"):
        monkeypatch.setattr(f"conceptvault.cli.{module}.load_pipeline", loaded)
    monkeypatch.setattr("conceptvault.attack_campaign.load_pipeline", loaded, raising=False)
    monkeypatch.setattr("conceptvault.serve.build_server", loaded)
    try:
        main([str(a) for a in args])
    except _Loaded:
        capsys.readouterr()
        return None, ""
    except SystemExit as exit_:
        captured = capsys.readouterr()
        assert one_line_error(exit_.code, captured.out, captured.err), captured.err
        return exit_.code, captured.err
    raise AssertionError("the command neither failed nor loaded a model")


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_numbers, guidance=_numbers)
def test_generate_accepts_only_sane_numbers(vault_folder, tmp_path, capsys, monkeypatch, steps, guidance):
    out = tmp_path / "g.png"
    code, err = _outcome(
        capsys, monkeypatch, "generate", vault_folder, "a", "--out", out, "--steps", steps, "--guidance", guidance
    )
    if code is None:  # accepted: both in range
        assert 1 <= _finite(steps) <= 500 and 0 <= _finite(guidance) <= 30
    assert not out.exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lr=_numbers, steps=_numbers)
def test_attack_accepts_only_sane_numbers(vault_folder, tmp_path, capsys, monkeypatch, lr, steps):
    out = tmp_path / "attack"
    code, err = _outcome(capsys, monkeypatch, "attack", vault_folder, "--out", out, "--lr", lr, "--steps", steps)
    if code is None:
        assert 0 < _finite(lr) <= 1 and _finite(steps) >= 1
    assert not out.exists()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rate=_numbers, port=_numbers)
def test_serve_accepts_only_sane_numbers(vault_folder, tmp_path, capsys, monkeypatch, rate, port):
    db = tmp_path / "grants.sqlite"
    code, err = _outcome(capsys, monkeypatch, "serve", vault_folder, "--db", db, "--rate", rate, "--port", port)
    if code is None:
        assert 0 < _finite(rate) <= 60_000 and 1 <= _finite(port) <= 65535  # click reads '1.0' as the port 1
    assert not db.exists()


# -- manifests that JSON would read otherwise than written -------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda text: text.replace("{", '{"format_version": 1, ', 1), "'format_version' appears twice"),
        (lambda text: re.sub(r'"seconds": [0-9.e+-]+', '"seconds": 1e400', text, count=1), "beyond any float"),
        (lambda text: re.sub(r'"seconds": [0-9.e+-]+', '"seconds": -1E999', text, count=1), "beyond any float"),
    ],
)
def test_a_manifest_read_otherwise_than_written_is_one_line(vault_folder, tmp_path, capsys, change, message):
    import shutil

    copy = tmp_path / "edited.vault"
    shutil.copytree(vault_folder, copy)
    manifest = copy / "manifest.json"
    edited = change(manifest.read_text())
    assert edited != manifest.read_text()
    manifest.write_text(edited)
    code, out, err = run(capsys, "inspect", copy)
    assert one_line_error(code, out, err) and message in err, err
