"""``uce``: erasure by a closed-form edit of the cross-attention projections, for comparison (no keys)."""

from ...registry import KeyKind, MethodSpec, register_method
from .uce import UceConfig, concept_token_states, erase_uce

__all__ = ["UceConfig", "concept_token_states", "erase_uce"]


def _run(pipe, concepts, config, *, preserve=(), checkpoint_dir=None, resume=False, passphrase=None, progress=True):
    """A closed form: nothing to checkpoint, resume or show progress for, and no keys."""
    return erase_uce(pipe, concepts, config, preserve=preserve)


register_method(
    MethodSpec(
        name="uce",
        config_class=UceConfig,
        run=_run,
        keys=KeyKind.NONE,
        summary="erased by a closed-form edit of cross-attention (comparison)",
        resumable=False,
    )
)
