"""Deprecated spelling: ``conceptvault.seal`` is ``conceptvault.methods.sealed`` now."""

import warnings

from .methods.sealed import SealConfig, bare_names, seal  # noqa: F401

warnings.warn(
    "conceptvault.seal is deprecated: import from conceptvault.methods.sealed instead.",
    DeprecationWarning,
    stacklevel=2,
)
