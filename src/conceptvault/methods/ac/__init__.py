"""``ac``: erasure by ablating a concept toward its anchor (Ablating Concepts), for comparison (no keys); ``ac-model``
pulls the concept to the frozen model's prediction for the anchor, ``ac-noise`` to the true noise of the anchor's
samples."""

from ...registry import KeyKind, MethodSpec, register_method
from .ac import AcConfig, AcTarget, erase_ac

__all__ = ["AcConfig", "AcTarget", "erase_ac"]


def _run(pipe, concepts, config, *, preserve=(), checkpoint_dir=None, resume=False, passphrase=None, progress=True):
    """Ablation keeps the anchor (its own regulariser), not preserve prompts; it leaves no keys to protect."""
    return erase_ac(pipe, concepts, config, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)


register_method(
    MethodSpec(
        name="ac",
        config_class=AcConfig,
        run=_run,
        keys=KeyKind.NONE,
        summary="erased by matching the concept to its anchor's distribution (Ablating Concepts, comparison)",
        # small models: ESD's small settings, by analogy (not measured)
        family_defaults={"small": dict(iterations=200, lr=1e-3, sampler_steps=25, batch_size=4)},
        variants={"ac-model": {"target": "model"}, "ac-noise": {"target": "noise"}},
    )
)
