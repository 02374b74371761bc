"""What every command shares: the app, the console, common options, parsing and checking user input (before
any model loads), printing text from files as text, progress lines and the one-line failure."""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from ..concepts import Concept
from ..errors import ConceptVaultError
from ..records import record_id

app = typer.Typer(
    name="conceptvault",
    help="Hide a concept in a text-to-image diffusion model behind a secret key, and recover it with the key.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()

ModelArgument = Annotated[str, typer.Argument(help="Base model: 'builtin', a diffusers pipeline folder, or a hub id.")]
VaultArgument = Annotated[Path, typer.Argument(help="The vault folder.")]
PassphraseOption = Annotated[
    Path | None, typer.Option(help="File whose first line is the passphrase protecting the keys.")
]


def _checked_device(device: str | None) -> str | None:
    """A --device that torch knows and this machine has; anything else is one line before any work."""
    if device is None:
        return None
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise typer.BadParameter(f"'{device}' is no torch device; give cpu, cuda, cuda:0 or mps.") from None
    available = {
        "cpu": lambda: True,
        "cuda": torch.cuda.is_available,
        "mps": lambda: getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    }
    if not available.get(kind, lambda: False)():
        raise typer.BadParameter(f"this machine has no '{device}' device; give cpu, or leave --device out.")
    if kind == "cuda" and torch.device(device).index is not None:
        if torch.device(device).index >= torch.cuda.device_count():
            raise typer.BadParameter(
                f"this machine has {torch.cuda.device_count()} CUDA devices; '{device}' is not one of them."
            )
    return device


DeviceOption = Annotated[
    str | None,
    typer.Option(help="Torch device, such as cpu or cuda (default: cuda if available).", callback=_checked_device),
]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        help="CPU threads for the work (default: OMP_NUM_THREADS if set, else the cores the machine's load "
        "leaves free, at least 1).",
        min=1,
    ),
]
RecordOption = Annotated[
    Path | None,
    typer.Option(
        "--record",
        help="Also write the figures as a results record to this JSON file; its name is the record's id "
        "(bench/render_results.py --add FILE publishes it).",
    ),
]
ModelOverride = Annotated[
    str | None, typer.Option("--model", help="Base model to load instead of the one named in the vault's manifest.")
]


def checked(make):
    """Turn a ValueError raised while validating user input into a one-line user-facing error."""
    try:
        return make()
    except ValueError as error:
        raise ConceptVaultError(str(error)) from None


def parse_concepts(texts: list[str], anchors: list[str]) -> list[Concept]:
    concepts = [checked(lambda text=text: Concept.parse(text)) for text in texts]
    names = {c.name: c for c in concepts}
    for item in anchors:
        name, separator, prompt = item.partition("=")
        if not separator or name.strip() not in names:
            raise ConceptVaultError(
                f"--anchor '{item}' must read NAME=PROMPT with NAME one of the concepts ({', '.join(names)})."
            )
        names[name.strip()].anchor = prompt.strip()
    return concepts


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConceptVaultError(f"--seeds '{text}' must be comma-separated integers, such as 0,1,2,3.") from None
    if not seeds:
        raise ConceptVaultError("--seeds names no seed; give comma-separated integers, such as 0,1,2,3.")
    bad = [s for s in seeds if not 0 <= s < 2**63]
    if bad:
        raise ConceptVaultError(f"the seed {bad[0]} is out of range; give seeds from 0 to 2^63 - 1.")
    return seeds


def parse_settings(pairs: list[str], config_class: type) -> dict:
    """``--set NAME=VALUE`` options as settings of ``config_class``, each value read as its field's type
    (a number, true/false, or a choice's text); the settings class checks the values themselves."""
    kinds = {f.name: type(f.default) for f in fields(config_class)}
    settings = {}
    for pair in pairs:
        name, separator, text = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not separator or name not in kinds:
            known = ", ".join(kinds)
            raise ConceptVaultError(f"--set '{pair}' must read NAME=VALUE with NAME one of: {known}.")
        settings[name] = _setting_value(name, text.strip(), kinds[name])
    return settings


def _setting_value(name: str, text: str, kind: type):
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ConceptVaultError(f"--set {name}={text}: the value must be true or false.")
        return text.lower() == "true"
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ConceptVaultError(f"--set {name}={text}: the value must be a {kind.__name__} number.") from None
    return text  # a choice (checked by the settings class) or text


def suite_named(suite: str, size: int | None, concept: str | None):
    """A built-in suite by name or a suite JSON file (loads no model)."""
    from ..evaluate import resolve_suite

    return resolve_suite(suite, size=size, concept=concept)


def check_range(name: str, value: float | None, low: float, high: float, *, above: bool = False) -> None:
    """A number given on the command line must be finite and from ``low`` (above it, with ``above``) to ``high``
    (None: not given, the default applies)."""
    if value is None:
        return
    if not math.isfinite(value) or value > high or (value <= low if above else value < low):
        span = f"above {low:g} and at most {high:g}" if above else f"from {low:g} to {high:g}"
        raise ConceptVaultError(f"--{name.replace('_', '-')} must be a finite number {span}; got {value:g}.")


def use_threads(threads: int | None) -> int:
    """Set torch's CPU threads: ``threads`` if given; else what OMP_NUM_THREADS or MKL_NUM_THREADS say (torch
    reads them itself); else the cores the other work on the machine leaves free. Two jobs that each take every
    core fight over them and both run several times slower. Returns the number in force."""
    import torch

    if threads is None and not any(os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        threads = free_cores()
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def free_cores() -> int:
    """The machine's cores less those busy with other work, by the one-minute load average (a command that has
    just started adds about one to it itself), and at least one."""
    cores = os.cpu_count() or 1
    busy = max(0, round(os.getloadavg()[0]) - 1)
    return max(1, cores - busy)


def check_positive(**options: int | None) -> None:
    """Counts given on the command line must be at least 1 (None: not given, the default applies)."""
    for name, value in options.items():
        if value is not None and value < 1:
            raise ConceptVaultError(f"--{name.replace('_', '-')} must be at least 1; got {value}.")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def check_image_path(out: Path) -> None:
    """Refuse, before any work, an output that is a folder or has no image file extension."""
    if out.is_dir():
        raise ConceptVaultError(f"--out '{out}' is a folder; give an image file such as {out / 'grid.png'}.")
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ConceptVaultError(f"--out '{out}' must end in {', '.join(IMAGE_SUFFIXES)}, such as grid.png.")
    check_writable_folder(out)


def check_writable_folder(out: Path, option: str = "--out") -> None:
    """Refuse, before any work, an output whose folder (or the nearest one that exists) cannot be written."""
    folder = out.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConceptVaultError(
            f"cannot write to '{folder}' (for {option} '{out}'); choose a folder you may write to."
        )


def check_record_file(path: Path | None) -> None:
    """Refuse, before any work, a ``--record`` file whose name is not a record id or whose folder is not writable."""
    if path is not None:
        record_id(path)
        check_writable_folder(path, "--record")


_typed: list[str] = []  # the arguments of the command being run, as main() was given them


def remember_arguments(argv: list[str] | None) -> None:
    _typed[:] = [str(a) for a in (sys.argv[1:] if argv is None else argv)]


def command_line() -> str:
    """The command as it was typed, for a results record."""
    return shlex.join(["conceptvault", *_typed])


MAX_PASSPHRASE_BYTES = 1024


def read_passphrase(file: Path | None) -> str | None:
    """The first line of ``file``, read with a bound (a passphrase is at most 1 KiB of UTF-8 text), so that a
    binary file, or /dev/zero, is one line and never an unbounded read."""
    if file is None:
        return None
    try:
        with open(file, "rb") as handle:
            head = handle.read(MAX_PASSPHRASE_BYTES + 1)
    except OSError as error:
        raise ConceptVaultError(f"cannot read the passphrase file '{file}' ({error.strerror}).") from None
    first, newline, _ = head.partition(b"\n")
    if not newline and len(head) > MAX_PASSPHRASE_BYTES:
        raise ConceptVaultError(
            f"the first line of the passphrase file '{file}' is longer than {MAX_PASSPHRASE_BYTES} bytes; "
            "write the passphrase alone on its first line."
        )
    try:
        line = first.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        raise ConceptVaultError(
            f"the passphrase file '{file}' is not UTF-8 text; write the passphrase on its first line."
        ) from None
    if not line:
        raise ConceptVaultError(f"the passphrase file '{file}' is empty; write the passphrase on its first line.")
    if any((ord(ch) < 32 and ch != "\t") or ch == "\x7f" for ch in line):
        raise ConceptVaultError(
            f"the passphrase in '{file}' holds control characters (is it a binary file?); write the passphrase "
            "as text on its first line."
        )
    return line


@contextmanager
def on_interrupt(kept: str):
    """Ctrl-C or SIGTERM inside: one line that says what was kept (left to typer, an interrupt is exit 130
    and no line at all)."""
    try:
        yield
    except KeyboardInterrupt:
        raise ConceptVaultError(f"interrupted; {kept}.") from None


def as_text(value) -> Text:
    """Text from a file or a user, shown as it is: no Rich markup, control characters made visible, so a
    manifest cannot restyle, clear or retitle the terminal."""
    return Text("".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(value)))


def as_lines(text: str) -> Text:
    """A report of several lines (a Markdown table) shown as text, each line as :func:`as_text` shows it."""
    return Text("\n").join(as_text(line) for line in text.splitlines())


def say(message: str) -> None:
    """Print a line that may hold paths or names given by the user, as plain text."""
    console.print(as_text(message))


@contextmanager
def stage_progress(every: float = 60.0):
    """A progress line for multi-stage training: the stage's name, its step and its latest loss. Where the
    output is no terminal (a log file), a plain line every ``every`` seconds instead."""
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("training", total=None)
        last = [0.0]

        def advance(step: int, total: int, losses: dict) -> None:
            description = ", ".join(f"{k} {v:.4f}" for k, v in losses.items()) or "encoding"
            bar.update(task, completed=step + 1, total=total, description=description)
            if not console.is_terminal and (time.monotonic() - last[0] >= every or step + 1 == total):
                last[0] = time.monotonic()
                print(f"{time.strftime('%H:%M:%S')} {step + 1}/{total} {description}", flush=True)

        yield advance


# the library names the parameter to change in backticks; on the command line, the flag that sets it
FLAGS = {
    "benign_from": "--benign-from",
    "concepts": "--concept",
    "control": "--control",
    "images_from": "--images-from",
    "out": "--out",
    "passphrase": "--passphrase-file",
    "preserve": "--preserve",
    "preserve_captions": "--preserve-captions",
    "prompts": "--prompts",
    "resume": "--resume",
    "steps": "--steps",
}


def as_flags(message: str) -> str:
    """``message`` with each parameter the library named in backticks given as its command-line flag."""
    return re.sub(r"`([a-z_]+)`", lambda match: FLAGS.get(match.group(1), match.group(0)), message)


def fail(message: str) -> None:
    print(f"error: {as_text(' '.join(as_flags(message).split())).plain}", file=sys.stderr)
    sys.exit(1)


def quiet_libraries() -> None:
    """Keep library notices and loading bars off the terminal; ConceptVault shows its own progress."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
