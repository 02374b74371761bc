"""Writing a file so that a reader sees the old one or the new one, never half of one, and nothing is left behind
when the writing fails or is interrupted."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path | str, *, mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; it takes ``path``'s place when the block ends without an
    error, and is removed otherwise. The file is owner-only (0600) unless ``mode`` says otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(temporary)
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write(path: Path | str, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, mode=mode) as temporary, open(temporary, "wb") as file:
        file.write(data)


def atomic_write_text(path: Path | str, text: str, *, mode: int | None = None) -> None:
    atomic_write(path, text.encode("utf-8"), mode=mode)
