"""Deprecated spelling: ``conceptvault.hide`` is ``conceptvault.methods.kpop`` now."""

import warnings

from .methods.kpop import HideConfig, KeyInit, hide  # noqa: F401

warnings.warn(
    "conceptvault.hide is deprecated: import from conceptvault.methods.kpop instead.", DeprecationWarning, stacklevel=2
)
