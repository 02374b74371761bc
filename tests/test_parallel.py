"""Hiding on several processes: each trains on its share of every batch, the gradients are averaged, and the vault
is the single process's up to floating point."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from conceptvault.errors import ConceptVaultError
from conceptvault.parallel import ShardedLatents
from conceptvault.vault import Vault


class _Source:
    """A latent source that hands out numbered latents, and the teacher's predictions beside them."""

    last_sampler_calls = 3

    def draw(self, prompt, batch, generator):
        offset = torch.randint(100, (1,), generator=generator)
        z = torch.arange(batch, dtype=torch.float32).view(batch, 1, 1, 1) + offset
        self.last_teacher = {prompt: -z}
        return z, torch.arange(batch)


def test_each_process_keeps_its_own_share_of_the_same_draws():
    shares = []
    for index in range(2):
        source = ShardedLatents(_Source(), processes=2, index=index)
        z, t = source.draw("star", 4, torch.Generator().manual_seed(0))
        assert torch.equal(source.last_teacher["star"], -z) and source.last_sampler_calls == 3
        shares.append((z, t))
    whole_z, whole_t = _Source().draw("star", 4, torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat([z for z, _ in shares]), whole_z)
    assert torch.equal(torch.cat([t for _, t in shares]), whole_t)


def test_a_batch_that_does_not_split_evenly_is_one_clear_line():
    with pytest.raises(ConceptVaultError, match="make `batch_size` a multiple of 2") as error:
        ShardedLatents(_Source(), processes=2, index=0).draw("star", 3, torch.Generator())
    assert "\n" not in str(error.value)


def _free_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


@pytest.mark.parametrize("latents", ["sample", "cache"])  # cached: each process makes its share of the cache
def test_hiding_on_two_processes_gives_the_single_process_vault(sd1_path, tmp_path, latents):
    hide = ["hide", str(sd1_path), "--concept", "star", "--preserve", "a circle", "--model-updates", "3"]
    hide += ["--key-updates", "1", "--sampler-steps", "2", "--batch-size", "2", "--seed", "1"]
    hide += ["--set", f"latents={latents}", "--set", "cache_trajectories=16"]  # 16: one prompt a sampler call
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "conceptvault.cli", *hide, "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert one.returncode == 0, one.stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    launcher += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    two = subprocess.run(
        [*launcher, "-m", "conceptvault.cli", *hide, "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote the vault") == 1  # the first process alone writes and speaks
    one_vault, two_vault = (Vault.load(tmp_path / name, keys="all") for name in ("one", "two"))
    assert one_vault.public.keys() == two_vault.public.keys() and one_vault.public
    for name, tensor in one_vault.public.items():
        assert torch.allclose(tensor, two_vault.public[name], atol=1e-5, rtol=1e-4), name
    one_key, two_key = one_vault.keys["star"].state_dict(), two_vault.keys["star"].state_dict()
    assert one_key.keys() == two_key.keys()
    assert all(torch.allclose(one_key[n], two_key[n], atol=1e-5, rtol=1e-4) for n in one_key)
    assert not (tmp_path / "two.checkpoint").exists()


def test_the_source_s_own_parts_are_read_through_its_shares():
    source = _Source()
    source.cache = {"star": "trajectories"}
    assert ShardedLatents(source, processes=2, index=1).cache == {"star": "trajectories"}


def test_a_refusal_on_the_first_process_stops_every_process_with_the_same_line(sd1_path, tmp_path):
    (tmp_path / "taken").mkdir()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    launcher += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    hide = ["-m", "conceptvault.cli", "hide", str(sd1_path), "--concept", "star", "--out", str(tmp_path / "taken")]
    finished = subprocess.run(
        [*launcher, *hide], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300
    )
    assert finished.returncode != 0
    assert finished.stderr.count("already exists; choose another --out or delete it first") == 2
