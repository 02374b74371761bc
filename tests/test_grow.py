"""A vault that lives: a concept added on top of it keeps the earlier keys, a rotated key replaces a leaked one,
and neither leaves a half-changed vault behind."""

from __future__ import annotations

import importlib
import json
import shutil

import pytest
import torch

from conceptvault.backbone import load_pipeline
from conceptvault.cli import main
from conceptvault.concepts import Concept
from conceptvault.errors import ConceptVaultError
from conceptvault.keyfile import key_fingerprint
from conceptvault.methods.kpop import HideConfig, add_concepts, hide, rotate_key
from conceptvault.serve import AccessStore, build_server
from conceptvault.vault import Vault, save_vault

hide_module = importlib.import_module("conceptvault.methods.kpop.hide")  # the module, not the function
QUICK = ["--model-updates", "2", "--sampler-steps", "3", "--m", "2", "--checkpoint-every", "1"]
ROTATE_QUICK = ["--set", "model_updates=2", "--set", "sampler_steps=3", "--set", "checkpoint_every=1"]
CONFIG = HideConfig(model_updates=2, sampler_steps=3, m=2, lr=1e-3, key_lr=1e-2)


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def manifest(vault) -> dict:
    return json.loads((vault / "manifest.json").read_text())


def test_added_concepts_keep_the_earlier_keys_as_they_were(sd1_path):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    vault = Vault.from_hiding(pipe, hide(pipe, [Concept("star")], CONFIG, progress=False, measure=False))
    star = {name: tensor.clone() for name, tensor in vault.keys["star"].state_dict().items()}
    base = load_pipeline(str(sd1_path), device="cpu")
    result = add_concepts(base, vault, [Concept("heart")], CONFIG, progress=False, measure=False)
    assert [c.name for c in result.concepts] == ["star", "heart"] and set(result.keys) == {"star", "heart"}
    kept = result.keys["star"].state_dict()
    assert all(torch.equal(kept[name], tensor) for name, tensor in star.items())  # frozen, bit for bit
    assert any(not torch.equal(result.public[n], vault.public[n]) for n in vault.public)  # the weights moved on
    with pytest.raises(ConceptVaultError, match="hides 'star' already; to give it a new key, rotate it"):
        add_concepts(load_pipeline(str(sd1_path), device="cpu"), vault, [Concept("star")], CONFIG, progress=False)
    public_only = Vault(None, vault.manifest, vault.public)
    with pytest.raises(ConceptVaultError, match="the key of 'star' is not at hand"):
        add_concepts(load_pipeline(str(sd1_path), device="cpu"), public_only, [Concept("heart")], CONFIG)


def test_add_and_rotate_from_the_command_line(sd1_path, tmp_path, capsys):
    first, grown = tmp_path / "first", tmp_path / "grown"
    secret = tmp_path / "secret.txt"
    secret.write_text("correct horse\n")
    protected = ["--passphrase-file", secret]
    assert run(capsys, "hide", sd1_path, "--concept", "star", "--out", first, *protected, *QUICK)[0] == 0
    code, _, err = run(capsys, "hide", first, "--concept", "heart", "--out", grown, *protected, *QUICK)
    assert code == 0, err
    before, after = manifest(first), manifest(grown)
    assert [c["name"] for c in after["concepts"]] == ["star", "heart"]
    assert after["concepts"][0]["key_fingerprint"] == before["concepts"][0]["key_fingerprint"]
    assert [(e["action"], e["concepts"]) for e in after["history"]] == [("hide", ["star"]), ("add", ["heart"])]
    assert Vault.load(grown, keys="all", passphrase="correct horse").keys.keys() == {"star", "heart"}
    code, _, err = run(capsys, "hide", first, "--concept", "heart", "--out", tmp_path / "x", "--m", "3")
    assert code == 1 and "m must stay 2" in err and not (tmp_path / "x").exists()

    leaked = tmp_path / "leaked-star.key"
    shutil.copy(grown / after["concepts"][0]["key_file"], leaked)
    code, out, err = run(capsys, "rotate", grown, "--concept", "star", *protected, *ROTATE_QUICK)
    assert code == 0, err
    rotated = manifest(grown)  # replaced in place
    fingerprints = {c["name"]: c["key_fingerprint"] for c in rotated["concepts"]}
    assert fingerprints["star"] != after["concepts"][0]["key_fingerprint"]
    assert fingerprints["heart"] == after["concepts"][1]["key_fingerprint"]
    assert [e["action"] for e in rotated["history"]] == ["hide", "add", "rotate"]
    assert not grown.with_name("grown.rotating").exists()
    star_file = next(c["key_file"] for c in rotated["concepts"] if c["name"] == "star")
    rotated_star = tmp_path / "rotated-star.key"
    shutil.copy(grown / star_file, rotated_star)
    shutil.copy(leaked, grown / star_file)  # the leaked key put back in the vault
    code, _, err = run(capsys, "generate", grown, "a star", "--key", "star", *protected, "--out", tmp_path / "g.png")
    assert code == 1 and "belongs to another vault" in err and not (tmp_path / "g.png").exists()
    code, out, _ = run(capsys, "inspect", grown)
    assert code == 0 and "history" in out and "rotate" in out

    # served again after the rotation, the server records what it serves, rotation included
    shutil.copy(rotated_star, grown / star_file)
    _, engine = build_server([grown], str(tmp_path / "grants.sqlite"), passphrase="correct horse", device="cpu")
    engine.stop()
    rows = AccessStore(str(tmp_path / "grants.sqlite")).history()
    assert any("last change: rotate star" in row["outcome"] for row in rows)


def test_an_interrupted_rotation_leaves_the_vault_as_it_was(sd1_path, tmp_path, capsys, monkeypatch):
    vault = tmp_path / "vault"
    pipe = load_pipeline(str(sd1_path), device="cpu")
    save_vault(vault, pipe, hide(pipe, [Concept("star"), Concept("heart")], CONFIG, progress=False, measure=False))
    files = {p: p.read_bytes() for p in vault.rglob("*") if p.is_file()}
    drive = hide_module.drive

    def interrupted(run, **options):
        def stop(step, info):
            if step == 1:
                raise KeyboardInterrupt

        drive(run, **{**options, "on_step": stop})

    monkeypatch.setattr(hide_module, "drive", interrupted)
    code, _, err = run(capsys, "rotate", vault, "--concept", "star", *ROTATE_QUICK)
    assert code == 1 and "interrupted at step 1" in err
    assert {p: p.read_bytes() for p in vault.rglob("*") if p.is_file()} == files
    monkeypatch.setattr(hide_module, "drive", drive)
    code, _, err = run(capsys, "rotate", vault, "--concept", "star", "--resume", *ROTATE_QUICK)
    assert code == 0, err
    assert [e["action"] for e in manifest(vault)["history"]] == ["hide", "rotate"]


def test_rotation_trains_against_the_old_key(sd1_path):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    vault = Vault.from_hiding(pipe, hide(pipe, [Concept("star")], CONFIG, progress=False, measure=False))
    old = key_fingerprint(vault.keys["star"])
    steps = []
    result = rotate_key(
        load_pipeline(str(sd1_path), device="cpu"),
        vault,
        "star",
        CONFIG,
        progress=False,
        measure=False,
        on_step=lambda step, info: steps.append(info["model_step"]),
    )
    assert key_fingerprint(result.keys["star"]) != old and set(result.keys) == {"star"}
    assert result.stats["final"]["L_hide"] >= 0 and True in steps
    with pytest.raises(ConceptVaultError, match="has no concept 'moon'"):
        rotate_key(load_pipeline(str(sd1_path), device="cpu"), vault, "moon", CONFIG)
