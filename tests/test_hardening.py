"""Hostile input, tampering and interruption: every case gives one clear line, leaks no key and loses no work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conceptvault import keyfile
from conceptvault.backbone import load_pipeline
from conceptvault.checkpoint import CHECKPOINT_FILE, KEYS_FILE
from conceptvault.cli import main
from conceptvault.concepts import Concept
from conceptvault.errors import ConceptVaultError
from conceptvault.key import Key
from conceptvault.keyfile import read_key_file, write_key_file
from conceptvault.manifest import Manifest
from conceptvault.methods.kpop import HideConfig, hide
from conceptvault.vault import MANIFEST_FILE, Vault, save_vault

QUICK = HideConfig(model_updates=2, sampler_steps=3, m=2, checkpoint_every=1)
QUICK_ARGS = ["--model-updates", "2", "--sampler-steps", "3", "--m", "2"]
FINGERPRINT = "a" * 64


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def one_line_error(code: int, out: str, err: str) -> bool:
    return code == 1 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in out + err


@pytest.fixture(scope="module")
def vault_path(sd1_path, tmp_path_factory) -> Path:
    pipe = load_pipeline(str(sd1_path), device="cpu")
    result = hide(pipe, [Concept("star")], QUICK, progress=False, measure=False)
    path = tmp_path_factory.mktemp("vault") / "vault"
    save_vault(path, pipe, result)
    return path


@pytest.fixture
def vault_copy(vault_path, tmp_path) -> Path:
    copy = tmp_path / "vault"
    shutil.copytree(vault_path, copy)
    return copy


def edit_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest.update(changes)
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))


# -- 1, 2: checkpoints of a protected run --------------------------------------------------------------


def test_a_protected_run_cannot_resume_without_its_passphrase(sd1_path, tmp_path):
    def stop(step, info):
        raise KeyboardInterrupt

    def start(resume: bool, passphrase, on_step=None):
        return hide(
            load_pipeline(str(sd1_path), device="cpu"),
            [Concept("star")],
            QUICK,
            checkpoint_dir=tmp_path,
            resume=resume,
            passphrase=passphrase,
            progress=False,
            measure=False,
            on_step=on_step,
        )

    with pytest.raises(ConceptVaultError, match="interrupted"):
        start(False, "open sesame", on_step=stop)
    with pytest.raises(ConceptVaultError, match="protects its keys with a passphrase; resume it with the same"):
        start(True, None)
    with pytest.raises(ConceptVaultError, match="passphrase is wrong"):
        start(True, "open sesame!")
    assert start(True, "open sesame").stats["steps"] == QUICK.model_updates * QUICK.k


def test_checkpoint_keys_are_sealed_and_secret_files_owner_only(sd1_path, tmp_path):
    result = hide(
        load_pipeline(str(sd1_path), device="cpu"),
        [Concept("star")],
        QUICK,
        checkpoint_dir=tmp_path,
        passphrase="open sesame",
        progress=False,
        measure=False,
    )
    sealed = (tmp_path / KEYS_FILE).read_bytes()
    key_bytes = result.keys["star"].p_k.detach().cpu().numpy().tobytes()
    assert keyfile.is_sealed(sealed) and key_bytes[:16] not in sealed
    for name in (KEYS_FILE, CHECKPOINT_FILE):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    save_vault(tmp_path / "vault", load_pipeline(str(sd1_path), device="cpu"), result, passphrase="open sesame")
    assert stat.S_IMODE((tmp_path / "vault" / "keys" / "star.key").stat().st_mode) == 0o600


# -- 3: key files stay inside keys/ ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "key_file", ["/etc/passwd", "keys/../../secret.safetensors", "keys/a/b.safetensors", "manifest.json"]
)
def test_a_manifest_cannot_point_a_key_file_outside_keys(vault_copy, key_file):
    manifest = json.loads((vault_copy / MANIFEST_FILE).read_text())
    manifest["concepts"][0]["key_file"] = key_file
    (vault_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ConceptVaultError, match="the key file of 'star' is not a file in keys/"):
        Vault.load(vault_copy)


def test_symlinked_key_files_look_exactly_like_missing_ones(vault_copy, tmp_path):
    key = vault_copy / "keys" / "star.safetensors"
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(key, outside)
    with pytest.raises(ConceptVaultError) as missing:
        Vault.load(vault_copy, keys=["star"])
    key.symlink_to(outside)
    with pytest.raises(ConceptVaultError) as linked:
        Vault.load(vault_copy, keys=["star"])
    key.unlink()
    shutil.move(outside, key)
    keys_dir = vault_copy / "keys"
    shutil.move(keys_dir, tmp_path / "real-keys")
    keys_dir.symlink_to(tmp_path / "real-keys")
    with pytest.raises(ConceptVaultError) as linked_folder:
        Vault.load(vault_copy, keys=["star"])
    assert str(missing.value) == str(linked.value) == str(linked_folder.value)
    assert "is not in" in str(missing.value)


# -- 4: untrusted text reaches the terminal as text ------------------------------------------------------


def test_manifest_strings_cannot_drive_the_terminal(vault_copy, capsys):
    edit_manifest(vault_copy, base_model="\x1b[2J\x1b]0;owned\x07[bold red]x[/]", created="[link=evil]now")
    manifest = json.loads((vault_copy / MANIFEST_FILE).read_text())
    manifest["concepts"][0]["prompts"] = ["star", "[/] \x1b[31mred"]
    (vault_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    code, out, err = run(capsys, "inspect", vault_copy)
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2J" in out and "[bold red]x[/]" in out and "[link=evil]now" in out


def test_rich_markup_in_an_output_path_is_printed_as_text(sd1_path, tmp_path, capsys):
    out = tmp_path / "[bold]vault[/]"
    code, stdout, err = run(capsys, "hide", sd1_path, "--concept", "star", "--out", out, *QUICK_ARGS)
    assert code == 0, err
    assert "[bold]vault[/]" in stdout


# -- 5: a key file cannot make opening it expensive ------------------------------------------------------


def test_scrypt_cost_is_checked_before_any_key_derivation(tmp_path, monkeypatch):
    key = Key(2, 4, init=torch.ones(2, 4))
    path = tmp_path / "star.key"
    write_key_file(path, key, concept="star", public_fingerprint=FINGERPRINT, passphrase="pw")
    data = path.read_bytes()
    start = len(keyfile._MAGIC) + 4
    (length,) = keyfile.struct.unpack(">I", data[len(keyfile._MAGIC) : start])
    header = json.loads(data[start : start + length])
    header["n"] = 2**20
    forged = keyfile._prefix(json.dumps(header, sort_keys=True).encode()) + data[start + length :]
    path.write_bytes(forged)

    def derive(*args):
        raise AssertionError("the KDF ran on a forged header")

    monkeypatch.setattr(keyfile, "_derive", derive)
    with pytest.raises(ConceptVaultError, match="damaged \\(its header cannot be read\\)"):
        read_key_file(path, public_fingerprint=FINGERPRINT, passphrase="pw")


# -- 6: nothing non-finite is trained or written ----------------------------------------------------------


@pytest.mark.parametrize("setting", ["eta", "lambda_hide", "lambda_rec", "lambda_pres", "guidance", "lr", "key_lr"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_every_float_setting_must_be_finite(setting, value):
    with pytest.raises(ValueError, match=f"{setting} must be a finite number"):
        HideConfig(**{setting: value})


def test_a_diverging_run_stops_and_writes_nothing(sd1_path, tmp_path, capsys):
    code, out, err = run(
        capsys,
        "hide",
        sd1_path,
        "--concept",
        "star",
        "--out",
        tmp_path / "v",
        "--lr",
        "1e30",
        "--lambda-hide",
        "1e30",
        *QUICK_ARGS,
    )
    assert one_line_error(code, out, err)
    assert "nothing was written" in err and not (tmp_path / "v").exists()


def test_a_manifest_refuses_nan():
    manifest = Manifest(
        base_model="m",
        base_fingerprint=FINGERPRINT,
        public_fingerprint=FINGERPRINT,
        concepts=[],
        stats={"loss": float("nan")},
    )
    with pytest.raises(ConceptVaultError, match="NaN or infinity; nothing was written"):
        manifest.to_json()


# -- 7: one run per output, and a writable output, checked before training --------------------------------


def test_a_second_run_on_the_same_output_is_refused_at_once(sd1_path, tmp_path, capsys):
    import fcntl

    out = tmp_path / "vault"
    folder = tmp_path / "vault.checkpoint"
    folder.mkdir()
    with open(folder / "lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        code, stdout, err = run(capsys, "hide", sd1_path, "--concept", "star", "--out", out, *QUICK_ARGS)
    assert one_line_error(code, stdout, err) and "another run is writing to" in err


def test_an_unwritable_output_is_refused_before_training(sd1_path, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    forbid_models(monkeypatch)
    code, out, err = run(capsys, "hide", sd1_path, "--concept", "star", "--out", blocker / "vault", *QUICK_ARGS)
    assert one_line_error(code, out, err) and "cannot write beside" in err


# -- 8: signals leave a resumable state --------------------------------------------------------------------


def _start_hide(out: Path, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "-c",
        "from conceptvault.console import main; main()",
        "hide",
        "builtin",
        "--concept",
        "star",
        "--out",
        str(out),
        "--model-updates",
        "400",
        "--checkpoint-every",
        "0",
        "--sampler-steps",
        "4",
        "--latents",
        "cache",
        "--lr",
        "1e-4",
        *extra,
    ]
    environment = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)


def test_sigterm_during_hiding_leaves_a_checkpoint_that_resumes(tmp_path):
    out = tmp_path / "vault"
    process = _start_hide(out, "--checkpoint-every", "1")
    checkpoint = tmp_path / "vault.checkpoint" / CHECKPOINT_FILE
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline:  # the first training step is done
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=240)
    assert process.returncode == 1 and err.count("\n") == 1, err
    assert "interrupted at step" in err and "--resume" in err and checkpoint.is_file()
    step = int(err.split("interrupted at step ")[1].split(" ")[0])
    resumed = _start_hide(out, "--resume", "--model-updates", str(step // 2 + 1), "--key-updates", "0")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert (out / "manifest.json").is_file() and not checkpoint.parent.exists()


def test_ctrl_c_during_setup_says_nothing_was_written(tmp_path):
    out = tmp_path / "vault"
    process = _start_hide(out)
    time.sleep(1.5)  # still importing or loading the model
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1 and err.strip().splitlines() == [
        "error: interrupted before anything was written."
    ], err
    assert not out.exists() and not (tmp_path / "vault.checkpoint").exists()


# -- 9: bad options are one line, before any model is loaded ----------------------------------------------


def _no_model(*args, **kwargs):
    raise AssertionError("a model was loaded before the options were checked")


def forbid_models(monkeypatch) -> None:
    """Every command module loads models through its own name for load_pipeline: make each one fail."""
    for module in ("vaults", "measure", "world"):
        monkeypatch.setattr(f"conceptvault.cli.{module}.load_pipeline", _no_model)


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "{vault}", "a star", "--steps", "0", "--out", "{tmp}/g.png"], "--steps must be at least 1"),
        (["generate", "{vault}", "a star", "--seeds", "18446744073709551616", "--out", "{tmp}/g.png"], "out of range"),
        (["generate", "{vault}", "a star", "--seeds", "-1", "--out", "{tmp}/g.png"], "out of range"),
        (["generate", "{vault}", "a star", "--out", "{tmp}/grid"], "must end in .png"),
        (["generate", "{vault}", "a star", "--out", "{tmp}"], "is a folder"),
        (["evaluate", "{vault}", "--size", "0"], "--size must be at least 1"),
        (["evaluate", "{vault}", "--record", "{tmp}/Star Eval.json"], "its name is the record's id"),
        (["attack", "{vault}", "--out", "{tmp}/a", "--record", "{tmp}/attack.txt"], "ending in .json"),
        (["compare", "{vault}", "--out", "{tmp}/c", "--record", "{vault}/manifest.json/compare.json"], "for --record"),
        (["demo", "--images", "0"], "--images must be at least 1"),
        (["hide", "builtin", "--concept", "star", "--out", "{tmp}/v", "--eta", "nan"], "eta must be a finite number"),
        (
            ["hide", "builtin", "--concept", "star", "--out", "{tmp}/v", "--guidance", "inf"],
            "guidance must be a finite",
        ),
        (
            ["hide", "builtin", "--concept", "star", "--out", "{tmp}/v", "--seed", str(2**64)],
            "seed must be a whole number",
        ),
        (["world", "sample", "a star", "--out", "{tmp}/s.txt"], "must end in .png"),
        (["world", "train", "--out", "{tmp}/w", "--denoiser-steps", "-1"], "--denoiser-steps must be at least 0"),
    ],
)
def test_bad_options_are_one_line_before_any_model_loads(vault_path, tmp_path, capsys, monkeypatch, args, message):
    forbid_models(monkeypatch)
    filled = [a.format(vault=vault_path, tmp=tmp_path) for a in args]
    code, out, err = run(capsys, *filled)
    assert one_line_error(code, out, err), err
    assert message in err


def test_a_bare_command_shows_its_help_and_succeeds(capsys):
    code, out, err = run(capsys)
    assert code == 0 and "hide" in out and "error" not in err


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("format_version", "1", "no readable format_version"),
        ("format_version", True, "no readable format_version"),
        ("concepts", "abc", 'concepts is "abc", not a list'),
        ("base_model", None, "base_model is null, not a str"),
        ("placement", "bogus", 'placement is "bogus", not one of'),
        ("config", "x", 'config is "x", not a dict'),
        ("config", {"lr": "fast"}, "config: lr must be a finite number"),
        ("config", {"turbo": 1}, "config: unknown settings 'turbo'"),
        ("method", "magic", 'method is "magic", not one of'),
        ("public_fingerprint", "abc", "public_fingerprint is not a SHA-256 digest"),
        ("m", 2.5, "m is 2.5, not a int"),
        ("m", 0, "m is 0, not a count of at least 1"),
        ("cross_attention_dim", -768, "cross_attention_dim is -768, not a count of at least 1"),
        ("public_tensors", -1, "public_tensors is -1, not a count"),
    ],
)
def test_wrong_manifest_types_are_one_line(vault_copy, field, value, message):
    edit_manifest(vault_copy, **{field: value})
    with pytest.raises(ConceptVaultError) as error:
        Vault.load(vault_copy)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("norms", [[1.0], [1.0, -2.0], [1.0, 2.0, 3.0]])
def test_impossible_key_norms_are_one_line(vault_copy, norms):
    manifest = json.loads((vault_copy / MANIFEST_FILE).read_text())
    manifest["concepts"][0]["key_norm"] = norms
    (vault_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ConceptVaultError, match="key norms of"):
        Vault.load(vault_copy)


# -- fuzzing: the loaders either load or raise the one error type, with one line --------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _loads_or_one_line(load) -> None:
    try:
        load()
    except ConceptVaultError as error:
        assert "\n" not in str(error)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field=st.sampled_from(
        [
            "format_version",
            "base_model",
            "base_fingerprint",
            "public_fingerprint",
            "placement",
            "m",
            "concepts",
            "config",
            "preserve",
            "stats",
            "method",
            "created",
            "extra",
        ]
    ),
    value=JSON_VALUES,
)
def test_fuzz_manifest_fields(vault_path, field, value):
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "vault"
        shutil.copytree(vault_path, copy)
        edit_manifest(copy, **{field: value})
        _loads_or_one_line(lambda: Vault.load(copy))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    entry_field=st.sampled_from(["name", "prompts", "anchor", "key_fingerprint", "key_file", "other"]),
    value=JSON_VALUES,
)
def test_fuzz_concept_entries(vault_path, entry_field, value):
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "vault"
        shutil.copytree(vault_path, copy)
        manifest = json.loads((copy / MANIFEST_FILE).read_text())
        manifest["concepts"][0][entry_field] = value
        (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
        _loads_or_one_line(lambda: Vault.load(copy))


@pytest.fixture(scope="module")
def key_files(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("keys")
    key = Key(2, 4, init=torch.arange(8.0).view(2, 4))
    write_key_file(folder / "star.safetensors", key, concept="star", public_fingerprint=FINGERPRINT)
    write_key_file(folder / "star.key", key, concept="star", public_fingerprint=FINGERPRINT, passphrase="pw")
    return {suffix: (folder / f"star{suffix}").read_bytes() for suffix in (".safetensors", ".key")}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffix=st.sampled_from([".safetensors", ".key"]), data=st.data())
def test_fuzz_key_files_with_flips_and_truncations(key_files, suffix, data):
    original = bytearray(key_files[suffix])
    if data.draw(st.booleans(), label="truncate"):
        damaged = bytes(original[: data.draw(st.integers(0, len(original) - 1), label="length")])
    else:
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            position = data.draw(st.integers(0, len(original) - 1), label="position")
            original[position] ^= data.draw(st.integers(1, 255), label="mask")
        damaged = bytes(original)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"star{suffix}"
        path.write_bytes(damaged)
        _loads_or_one_line(lambda: read_key_file(path, public_fingerprint=FINGERPRINT, passphrase="pw"))
