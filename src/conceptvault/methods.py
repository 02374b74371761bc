"""Which settings class each way of making a vault uses, so a manifest's settings can be checked."""

from __future__ import annotations

from .manifest import Method


def config_class(method: Method | str) -> type:
    """The dataclass holding a method's settings; each has ``from_dict`` and ``to_dict``."""
    from .esd import EsdConfig
    from .hide import HideConfig
    from .seal import SealConfig
    from .uce import UceConfig

    classes = {Method.KPOP: HideConfig, Method.ESD: EsdConfig, Method.UCE: UceConfig, Method.SEALED: SealConfig}
    return classes[Method(method)]
