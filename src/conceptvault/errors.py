"""The one exception type that ConceptVault shows to users."""

from __future__ import annotations


class ConceptVaultError(Exception):
    """A user-facing error: one whole sentence that names the bad value and the fix.

    The command line prints ``str(error)`` as a single ``error: ...`` line and exits with status 1.
    """
