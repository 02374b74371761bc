"""``fmn``: erasure by re-steering cross-attention away from the concept's tokens (Forget-Me-Not), for comparison
(no keys)."""

from ...registry import KeyKind, MethodSpec, register_method
from .fmn import FmnConfig, FmnWeights, attention_recorded, concept_attention, concept_positions, erase_fmn

__all__ = ["FmnConfig", "FmnWeights", "attention_recorded", "concept_attention", "concept_positions", "erase_fmn"]


def _run(pipe, concepts, config, *, preserve=(), checkpoint_dir=None, resume=False, passphrase=None, progress=True):
    """Forget-Me-Not holds nothing to the original, so it takes no preserve prompts; it leaves no keys."""
    return erase_fmn(pipe, concepts, config, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)


register_method(
    MethodSpec(
        name="fmn",
        config_class=FmnConfig,
        run=_run,
        keys=KeyKind.NONE,
        summary="erased by steering cross-attention away from the concept's tokens (Forget-Me-Not, comparison)",
        # small models: ESD's small settings, by analogy (not measured)
        family_defaults={"small": dict(iterations=200, lr=1e-3, sampler_steps=25, batch_size=4)},
    )
)
