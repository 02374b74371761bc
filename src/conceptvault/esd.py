"""Deprecated spelling: ``conceptvault.esd`` is ``conceptvault.methods.esd`` now."""

import warnings

from .methods.esd import EsdConfig, erase_esd  # noqa: F401

warnings.warn(
    "conceptvault.esd is deprecated: import from conceptvault.methods.esd instead.", DeprecationWarning, stacklevel=2
)
