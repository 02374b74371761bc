"""Writing a file so that a reader sees the old one or the new one, never half of one, and nothing is left behind
when the writing fails or is interrupted; and the file-name-safe form of a name."""

from __future__ import annotations

import hashlib
import os
import re
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


def slug(name: str) -> str:
    """A file-name-safe form of a name: ``"Five-pointed Star"`` -> ``"five-pointed-star"``; a name with no letter
    or digit of a-z, 0-9 (``"星"``) gets 12 digits of its hash."""
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return text or hashlib.sha256(name.encode()).hexdigest()[:12]
