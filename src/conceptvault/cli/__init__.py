"""The ``conceptvault`` command line: one thin function per command over the library.

Commands live by topic (``vaults``, ``measure``, ``serve``, ``world``) and register on the one ``app`` of
``common``; add one with ``@app.command("name")`` there. Every :class:`ConceptVaultError` and every bad
input ends as one ``error: ...`` line and exit status 1.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # keep optional-backend notices off the terminal

import sys  # noqa: E402

import typer  # noqa: E402

from ..errors import ConceptVaultError  # noqa: E402
from . import measure, serve, vaults, world  # noqa: E402, F401  (each registers its commands on the app)
from .common import app, fail, quiet_libraries, remember_arguments  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """The console entry point: runs the app and turns every user-facing failure into one line."""
    try:
        quiet_libraries()
        remember_arguments(argv)
        code = app(args=argv, prog_name="conceptvault", standalone_mode=False)
    except ConceptVaultError as error:
        fail(str(error))
    except typer.TyperException as error:  # usage errors: a missing option, a bad choice or number
        if error.format_message():
            fail(error.format_message())
        code = 0  # a bare command (group) without a message: its help was shown, nothing failed
    except (typer.Abort, KeyboardInterrupt):
        fail("interrupted before anything was written.")
    except OSError as error:  # the file system refused: a read-only folder, a full disk, a missing file
        fail(f"{error.strerror or error}: '{error.filename}'." if error.filename else str(error))
    if code == 130:  # Ctrl-C inside a command that does not say what it kept: Typer gives 130 and no line
        fail("interrupted.")
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # `accelerate launch -m conceptvault.cli evaluate ...` runs the command on each process
    main()
