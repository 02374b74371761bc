"""Deprecated spelling: ``conceptvault.uce`` is ``conceptvault.methods.uce`` now."""

import warnings

from .methods.uce import UceConfig, concept_token_states, erase_uce  # noqa: F401

warnings.warn(
    "conceptvault.uce is deprecated: import from conceptvault.methods.uce instead.", DeprecationWarning, stacklevel=2
)
