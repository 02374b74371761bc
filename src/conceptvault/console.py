"""The ``conceptvault`` console entry point, kept free of heavy imports.

Importing the command line takes seconds (torch, diffusers); an interrupt in that time must end in
one line too, and SIGTERM must stop a command the way Ctrl-C does, so a hiding run leaves its checkpoint.
"""

from __future__ import annotations

import signal
import sys

_interrupted_while_importing = False


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _interrupt_import(signum, frame) -> None:
    # Remembered as well as raised: a library that catches every exception while it imports would swallow it.
    global _interrupted_while_importing
    _interrupted_while_importing = True
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _interrupt_import)
    signal.signal(signal.SIGINT, _interrupt_import)
    try:
        from conceptvault.cli import main as run

        if _interrupted_while_importing:
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        print("error: interrupted before anything was written.", file=sys.stderr)
        sys.exit(1)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run(argv)


if __name__ == "__main__":
    main()
