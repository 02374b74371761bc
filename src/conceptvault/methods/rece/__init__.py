"""``rece``: erasure by UCE's closed-form edit of cross-attention, repeated with the adversarial embeddings that
would bring the concept back, for comparison (no keys)."""

from ...registry import KeyKind, MethodSpec, register_method
from .rece import ReceConfig, adversarial_embeddings, erase_rece

__all__ = ["ReceConfig", "adversarial_embeddings", "erase_rece"]


def _run(pipe, concepts, config, *, preserve=(), checkpoint_dir=None, resume=False, passphrase=None, progress=True):
    """A closed form: nothing to checkpoint, resume or show progress for, and no keys."""
    return erase_rece(pipe, concepts, config, preserve=preserve)


register_method(
    MethodSpec(
        name="rece",
        config_class=ReceConfig,
        run=_run,
        keys=KeyKind.NONE,
        summary="erased by a closed-form edit of cross-attention, hardened against adversarial embeddings "
        "(comparison)",
        # the built-in model: the class's own settings, unmeasured there (a closed form has no training budget)
        family_defaults={"small": dict(rounds=3, embedding_lamb=1e-3)},
        resumable=False,
    )
)
