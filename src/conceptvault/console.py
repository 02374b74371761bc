"""The ``conceptvault`` console entry point, kept free of heavy imports.

Importing the command line takes seconds (torch, diffusers); an interrupt in that time must end in
one line too, and SIGTERM must stop a command the way Ctrl-C does, so a hiding run leaves its checkpoint.
"""

from __future__ import annotations

import signal
import sys

_interrupted = False


def _interrupt(signum, frame) -> None:
    # Remembered as well as raised: a library that catches every exception while it imports would swallow it.
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _quiet_interrupts(unraisable) -> None:
    # An interrupt raised where Python cannot pass it on (an import lock's weakref callback) is only printed as
    # "Exception ignored"; it is remembered above, so it ends in the one line. Other such errors print as ever.
    if not issubclass(unraisable.exc_type, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


def main(argv: list[str] | None = None) -> None:
    sys.unraisablehook = _quiet_interrupts
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        from conceptvault.cli import main as run

        if _interrupted:
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        print("error: interrupted before anything was written.", file=sys.stderr)
        sys.exit(1)
    run(argv)


if __name__ == "__main__":
    main()
