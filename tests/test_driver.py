"""The one training loop's refusals: what it resumes from must be this run's, opened by its passphrase, before
any work; and an output that names no folder is refused at once."""

from __future__ import annotations

import importlib
import io

import pytest
import torch

from conceptvault.backbone import load_pipeline
from conceptvault.checkpoint import CHECKPOINT_FILE, KEYS_FILE, output_lock
from conceptvault.concepts import Concept
from conceptvault.errors import ConceptVaultError
from conceptvault.methods.kpop import HideConfig, hide

hide_module = importlib.import_module("conceptvault.methods.kpop.hide")
CONFIG = HideConfig(model_updates=2, sampler_steps=2, m=2, checkpoint_every=1, latents="cache", cache_trajectories=1)


def checkpointed(sd1_path, folder, passphrase=None):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    hide(pipe, [Concept("star")], CONFIG, checkpoint_dir=folder, passphrase=passphrase, progress=False, measure=False)


def resume(sd1_path, folder, passphrase=None):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    return hide(pipe, [Concept("star")], CONFIG, checkpoint_dir=folder, resume=True, passphrase=passphrase)


def test_a_wrong_passphrase_is_refused_before_the_run_is_built(sd1_path, tmp_path, monkeypatch):
    checkpointed(sd1_path, tmp_path, passphrase="right")

    def no_work(*args, **kwargs):
        raise AssertionError("the run was built before the passphrase was checked")

    monkeypatch.setattr(hide_module, "latent_source", no_work)
    with pytest.raises(ConceptVaultError, match="the passphrase is wrong"):
        resume(sd1_path, tmp_path, passphrase="wrong")
    with pytest.raises(ConceptVaultError, match="protects its keys with a passphrase"):
        resume(sd1_path, tmp_path)


@pytest.mark.parametrize("part", ["trained", "keys"])
def test_a_checkpoint_with_a_missing_or_swapped_tensor_is_one_line(part, sd1_path, tmp_path):
    checkpointed(sd1_path, tmp_path)
    file = tmp_path / (CHECKPOINT_FILE if part == "trained" else KEYS_FILE)
    state = torch.load(io.BytesIO(file.read_bytes()), weights_only=True)
    if part == "trained":
        name = next(iter(state["trained"]))
        state["trained"][name] = torch.zeros(3)  # another shape
    else:
        state["keys"]["star"].pop(next(iter(state["keys"]["star"])))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    file.write_bytes(buffer.getvalue())
    with pytest.raises(ConceptVaultError) as error:
        resume(sd1_path, tmp_path)
    assert "\n" not in str(error.value) and "run without resuming" in str(error.value)


@pytest.mark.parametrize("out", ["", ".", "..", "/"])
def test_an_output_that_names_no_folder_is_refused(out):
    with pytest.raises(ConceptVaultError, match="names no new folder"):
        with output_lock(out, resume=False):
            pass
