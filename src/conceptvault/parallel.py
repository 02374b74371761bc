"""Training on several processes: data parallel over each step's latents, on torch.distributed.

A launcher (``accelerate launch``, ``torchrun``) starts one process per device and tells each its ``RANK`` and
the ``WORLD_SIZE`` in the environment; :func:`start` joins them into one process group. Every process then runs
the same run with the same generator, so each draws the same prompts, timesteps and noise as the others and as
a single process would; each keeps only its share of every batch of latents (:class:`ShardedLatents`), and
before every optimiser step the gradients are averaged over the processes (:func:`averaged_gradients`). Every
process therefore holds the same weights after every step, and these are the single process's weights up to
floating point. Only the first process writes (checkpoints, the vault).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
import torch.distributed as dist
from torch.optim.optimizer import register_optimizer_step_pre_hook

from .errors import ConceptVaultError


def start() -> None:
    """Join the process group a launcher set up in the environment (nothing when started as one process): gloo
    for tensors on the CPU, NCCL for those on this process's own GPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(_local_rank())
            dist.init_process_group("cpu:gloo,cuda:nccl")
        else:
            dist.init_process_group("gloo")


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))


def size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes: the only one, or the first of several."""
    return rank() == 0


def device(asked: str | None) -> str | None:
    """The device this process trains on: on several processes with GPUs, its own GPU where none or "cuda" was
    asked for; else the one asked for."""
    if size() > 1 and torch.cuda.is_available() and asked in (None, "cuda"):
        return f"cuda:{_local_rank()}"
    return asked


@contextmanager
def together(claim) -> Iterator:
    """Enter ``claim`` (the first process's hold on its output; the others' stand-in) and let every process know
    whether the first could: a refusal there stops every process with the same one line, not only the first."""
    with ExitStack() as stack:
        refusal = None
        try:
            value = stack.enter_context(claim)
        except ConceptVaultError as error:
            refusal = error
        if size() > 1:
            shared = [None if refusal is None else str(refusal)]
            dist.broadcast_object_list(shared, src=0)
            if shared[0] is not None and refusal is None:
                refusal = ConceptVaultError(shared[0])
        if refusal is not None:
            raise refusal
        yield value


def barrier() -> None:
    """Wait until every process is here."""
    if size() > 1:
        dist.barrier()


def mean(value: float) -> float:
    """``value`` averaged over the processes (so that every process takes the same decisions on it)."""
    if size() == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(total)
    return float(total) / size()


def mine(count: int) -> range:
    """The indices of ``count`` pieces of work this process does: every ``size()``-th, from its rank."""
    return range(rank(), count, size())


def gathered(parts: dict) -> dict:
    """Every process's ``parts`` merged, on every process (``parts`` itself in one)."""
    if size() == 1:
        return parts
    every: list = [None] * size()
    dist.all_gather_object(every, parts)
    return {key: value for share in every for key, value in share.items()}


class ShardedLatents:
    """A latent source whose batches are split between the processes: each draws the whole batch (the same
    draws everywhere, which keeps the generators in step) and keeps its own contiguous share."""

    def __getattr__(self, name: str):  # everything but the draws is the source's own (its cache, its device)
        return getattr(self.source, name)

    def __init__(self, source, processes: int, index: int):
        self.source, self.processes, self.index = source, processes, index
        self.last_teacher: dict[str, torch.Tensor] = {}
        self.last_sampler_calls = 0

    def draw(self, prompt: str, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if batch % self.processes:
            raise ConceptVaultError(
                f"a batch of {batch} latents does not split evenly between {self.processes} processes; make "
                f"`batch_size` a multiple of {self.processes}."
            )
        z, t = self.source.draw(prompt, batch, generator)
        share = batch // self.processes
        mine = slice(self.index * share, (self.index + 1) * share)
        self.last_teacher = {name: prediction[mine] for name, prediction in self.source.last_teacher.items()}
        self.last_sampler_calls = self.source.last_sampler_calls
        return z[mine], t[mine]


def sharded(source):
    """``source`` split between the processes, or as it is in a single process."""
    return ShardedLatents(source, size(), rank()) if size() > 1 else source


@contextmanager
def averaged_gradients() -> Iterator[None]:
    """While open, every optimiser step first averages its gradients over the processes (nothing in one)."""
    if size() == 1:
        yield
        return

    def average(optimiser, args, kwargs) -> None:
        for group in optimiser.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    dist.all_reduce(parameter.grad)
                    parameter.grad /= size()

    handle = register_optimizer_step_pre_hook(average)
    try:
        yield
    finally:
        handle.remove()
