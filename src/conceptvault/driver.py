"""The one training loop every trained method runs under.

A method supplies a run: an object with ``state`` (a :class:`conceptvault.training.RunState`, whose ``step``
and ``total`` say where it stands), ``step()`` (one training step; returns what it measured, ``loss``
among it), ``identity()`` (what a checkpoint must match to be resumed), ``checkpoint()`` (its public and
secret state) and ``load(public, secret)``. :func:`drive` owns everything else: resuming, the checkpoint
cadence, the finite-loss check, interruption and the final checkpoint. A :class:`Checkpointer` holds the
checkpoint folder and the passphrase that seals the secret half, once for the whole run. On several processes
(:mod:`conceptvault.parallel`) the gradients are averaged before every optimiser step and the first process alone
writes checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from .checkpoint import CHECKPOINT_FILE, check_passphrase, read_checkpoint, write_checkpoint
from .concepts import HideResult
from .errors import ConceptVaultError
from .parallel import averaged_gradients, is_main, mean
from .training import ErasureRun, RunState, gradients_for, progress_bar


class TrainingRun(Protocol):
    state: RunState
    config: Any  # the method's settings; ``checkpoint_every`` among them

    def step(self) -> dict: ...

    def identity(self) -> dict: ...

    def checkpoint(self) -> tuple[dict, dict]: ...

    def load(self, public: dict, secret: dict) -> None: ...


class Checkpointer:
    """Where a run's checkpoints go, and the passphrase that seals their secret half (keys and their
    optimiser); a protected run records that it is, so it cannot be resumed without its passphrase."""

    def __init__(self, folder: Path | str, method: str, passphrase: str | None = None):
        self.folder, self.method, self.passphrase = Path(folder), method, passphrase

    @classmethod
    def at(cls, folder: Path | str | None, method: str, passphrase: str | None = None) -> Checkpointer | None:
        """A checkpointer for ``folder``, or None where no folder was given (the run keeps no checkpoints)."""
        return None if folder is None else cls(folder, method, passphrase)

    def exists(self) -> bool:
        return (self.folder / CHECKPOINT_FILE).is_file()

    def check_opens(self) -> None:
        """Refuse a resume whose checkpoint the passphrase does not open, before the run is built (minutes)."""
        if self.exists():
            check_passphrase(self.folder, self.passphrase)

    def identity(self, run: TrainingRun) -> dict:
        return {**run.identity(), "method": self.method, "protected": self.passphrase is not None}

    def save(self, run: TrainingRun) -> None:
        if not is_main():  # on several processes the first one writes
            return
        public, secret = run.checkpoint()
        write_checkpoint(self.folder, {**public, "identity": self.identity(run)}, secret, self.passphrase)

    def restore(self, run: TrainingRun) -> None:
        public, secret = read_checkpoint(self.folder, self.identity(run), self.passphrase)
        step, total = public["run"].get("step"), run.state.total
        if type(step) is not int or not 0 <= step <= total:
            raise ConceptVaultError(
                f"the checkpoint in '{self.folder}' is at step {step!r}, outside the {total} steps asked for; "
                "ask for at least as many steps, or run without resuming."
            )
        try:
            run.load(public, secret)
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError):
            raise ConceptVaultError(
                f"the checkpoint in '{self.folder}' does not fit this run (a part is missing or has another shape); "
                "delete it and run without resuming."
            ) from None


def drive(
    run: TrainingRun,
    *,
    checkpointer: Checkpointer | None = None,
    resume: bool = False,
    progress: bool = True,
    label: str = "hiding",
    on_step: Callable[[int, dict], None] | None = None,
) -> None:
    """Run ``run`` to its last step: resumed from ``checkpointer`` if ``resume``, checkpointed every
    ``run.config.checkpoint_every`` steps (0: only at the end), at the end, and on Ctrl-C or SIGTERM.

    Raises ConceptVaultError when a loss is not finite (nothing is written) or on interruption (saying where
    the checkpoint is). ``on_step(step, info)`` is called after every step with what the step measured.
    """
    if resume:
        if checkpointer is None or not checkpointer.exists():
            where = checkpointer.folder if checkpointer else None
            raise ConceptVaultError(f"there is no checkpoint to resume from in '{where}'; run without resuming.")
        checkpointer.restore(run)
    state, every = run.state, run.config.checkpoint_every
    try:
        with (
            averaged_gradients(),
            progress_bar(progress and is_main(), state.total, state.step, label) as advance,
        ):
            while state.step < state.total:
                info = run.step()
                info["loss"] = mean(info["loss"])  # every process stops on the same step
                if not math.isfinite(info["loss"]):
                    raise ConceptVaultError(
                        f"the training loss became {info['loss']} at step {state.step}; nothing was written. "
                        "Lower the learning rates (lr, and key_lr where the method has one) and run again."
                    )
                advance(state.describe())
                if checkpointer and every and state.step % every == 0:
                    checkpointer.save(run)
                if on_step is not None:
                    on_step(state.step, info)
    except KeyboardInterrupt:
        where = "no checkpoint folder was given, so the progress is lost"
        if checkpointer:
            checkpointer.save(run)
            where = f"the checkpoint is in '{checkpointer.folder}'; run again with `resume` to continue"
        raise ConceptVaultError(f"interrupted at step {state.step} of {state.total}; {where}.") from None
    if checkpointer:
        checkpointer.save(run)


def run_erasure(
    run: ErasureRun,
    unet,
    *,
    checkpoint_dir: Path | str | None = None,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
) -> HideResult:
    """Drive a trained eraser's run to its end, with gradients on its trained weights of ``unet`` alone and its
    checkpoints (if ``checkpoint_dir``) under its method's name; returns what it leaves."""
    with gradients_for([unet], run.trained.values()), run.attached():
        drive(
            run,
            checkpointer=Checkpointer.at(checkpoint_dir, run.method),
            resume=resume,
            progress=progress,
            label="erasing",
            on_step=on_step,
        )
    return run.result()
