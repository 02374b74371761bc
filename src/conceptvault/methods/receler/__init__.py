"""``receler``: erasure by lightweight erasers after each cross-attention layer, trained against adversarial
prompts (Receler), folded into the cross-attention output projections, for comparison (no keys)."""

from ...registry import KeyKind, MethodSpec, register_method
from .receler import Eraser, Erasers, RecelerConfig, erase_receler

__all__ = ["Eraser", "Erasers", "RecelerConfig", "erase_receler"]


def _run(pipe, concepts, config, *, preserve=(), checkpoint_dir=None, resume=False, passphrase=None, progress=True):
    """Receler's erasing target holds nothing to the original, so it takes no preserve prompts; no keys."""
    return erase_receler(pipe, concepts, config, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)


register_method(
    MethodSpec(
        name="receler",
        config_class=RecelerConfig,
        run=_run,
        keys=KeyKind.NONE,
        summary="erased by low-rank erasers after cross-attention, trained against adversarial prompts (comparison)",
        # small models: ESD's small settings, by analogy (not measured)
        family_defaults={"small": dict(iterations=200, lr=1e-3, sampler_steps=25, batch_size=4)},
    )
)
