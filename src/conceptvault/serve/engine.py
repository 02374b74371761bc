"""The generation engine of a served vault: one warm pipeline per vault, one bounded queue, batches.

Requests wait in a bounded queue (a full queue is refused at once, never blocked on), each caller with
at most ``max_per_user`` waiting; one worker thread takes the oldest request of the caller served least
recently (so a small request behind another caller's large ones waits for one call, not for all of them)
and every waiting request it can share a pipeline call with (same vault, sampler settings, size, negative
prompt and unlocked keys), up to ``max_batch`` images, and runs them as one call. A request whose caller
gave up (timed out) is taken out of the queue. The keys stay in the worker's pipelines; a request only
names which to switch on.

A request that switches a key on carries its ``authorize`` check, which the worker runs again when it
takes the request from the queue: a grant revoked (or expired) while the request waited stops it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from PIL import Image

from ..generate import generate_images


class QueueFull(Exception):
    """The queue holds as many requests as it may; the caller should come back later (HTTP 429)."""


class NoLongerGranted(Exception):
    """The request's grant was revoked or ran out while it waited in the queue (HTTP 403)."""


@dataclass
class Job:
    vault: str
    prompt: str
    negative: str
    seeds: list[int]
    steps: int
    guidance: float
    height: int | None
    width: int | None
    keys: tuple[str, ...]
    authorize: Callable[[], bool] | None = None  # run again when taken from the queue: False stops the job
    user: str | None = None  # whose request: the queue takes callers in turn
    work: float = 0.0  # steps x images x pixels relative to the model's own image: what it costs the server
    future: Future = field(default_factory=Future, compare=False)

    def batch_key(self) -> tuple:
        return self.vault, self.negative, self.steps, self.guidance, self.height, self.width, self.keys


class Engine:
    def __init__(self, pipelines: dict, queue_size: int = 32, max_batch: int = 8, max_per_user: int | None = None):
        self.pipelines = pipelines  # vault name -> pipeline with the vault applied and its keys attached
        self.queue_size, self.max_batch = queue_size, max_batch
        self.max_per_user = max_per_user or max(1, queue_size // 4)
        self._jobs: deque[Job] = deque()
        self._turns: dict[str | None, int] = {}  # caller -> the batch that last served them
        self._taken = 0  # batches taken from the queue
        self._ready = threading.Condition()
        self._stopped = False
        self.batches = 0
        self._worker = threading.Thread(target=self._run, name="conceptvault-engine", daemon=True)
        self._worker.start()

    def depth(self) -> int:
        with self._ready:
            return len(self._jobs)

    def submit(self, job: Job) -> Future:
        with self._ready:
            if len(self._jobs) >= self.queue_size:
                raise QueueFull
            if job.user is not None and sum(j.user == job.user for j in self._jobs) >= self.max_per_user:
                raise QueueFull
            self._jobs.append(job)
            self._ready.notify()
        return job.future

    def cancel(self, job: Job) -> bool:
        """Take a job that has not started out of the queue (its caller gave up); False if it already ran."""
        with self._ready:
            for index, waiting in enumerate(self._jobs):
                if waiting is job:
                    del self._jobs[index]
                    return True
        return False

    def stop(self) -> None:
        with self._ready:
            self._stopped = True
            self._ready.notify_all()

    def _take(self) -> list[Job]:
        """The oldest job of the caller served least recently, and the waiting jobs that can share its call,
        up to max_batch images."""
        with self._ready:
            while not self._jobs and not self._stopped:
                self._ready.wait()
            if self._stopped:
                return []
            first = min(self._jobs, key=lambda job: self._turns.get(job.user, -1))  # min keeps the oldest of ties
            batch, images = [first], len(first.seeds)
            for job in self._jobs:
                if (
                    job is not first
                    and job.batch_key() == first.batch_key()
                    and images + len(job.seeds) <= self.max_batch
                ):
                    batch.append(job)
                    images += len(job.seeds)
            self._jobs = deque(job for job in self._jobs if not any(job is taken for taken in batch))
            self._taken += 1
            for job in batch:
                self._turns[job.user] = self._taken
            return batch

    @staticmethod
    def _still_authorized(batch: list[Job]) -> list[Job]:
        """The jobs whose grants still hold now, just before their call; the others fail with NoLongerGranted."""
        kept = []
        for job in batch:
            try:
                allowed = job.authorize is None or job.authorize()
            except Exception as error:  # the database failed: the job cannot be checked, so it does not run
                job.future.set_exception(error)
                continue
            if allowed:
                kept.append(job)
            else:
                job.future.set_exception(NoLongerGranted())
        return kept

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            batch = self._still_authorized(batch)
            if not batch:
                continue
            first = batch[0]
            prompts = [job.prompt for job in batch for _ in job.seeds]
            seeds = [seed for job in batch for seed in job.seeds]
            try:
                started = time.perf_counter()
                images = generate_images(
                    self.pipelines[first.vault],
                    prompts,
                    seeds,
                    keys=list(first.keys) or None,
                    steps=first.steps,
                    guidance=first.guidance,
                    batch_size=max(len(prompts), 1),
                    height=first.height,
                    width=first.width,
                    negative_prompt=first.negative or None,
                    progress=False,
                )
                seconds = time.perf_counter() - started
                self.batches += 1
            except Exception as error:  # every waiting caller learns that its request failed
                for job in batch:
                    job.future.set_exception(error)
                continue
            for job in batch:
                mine: list[Image.Image] = images[: len(job.seeds)]
                images = images[len(job.seeds) :]
                job.future.set_result((mine, seconds, len(batch)))
