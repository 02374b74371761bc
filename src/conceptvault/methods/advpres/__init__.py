"""``advpres``: erasure by ESD's negative-guidance fine-tune that also holds, to the original, the concept the
erasure is changing most, searched adversarially before every update (no keys)."""

from ...registry import KeyKind, MethodSpec, register_method
from .advpres import AdvPresConfig, erase_advpres

__all__ = ["AdvPresConfig", "erase_advpres"]


def _run(pipe, concepts, config, *, preserve=(), checkpoint_dir=None, resume=False, passphrase=None, progress=True):
    """The preserve prompts are the vocabulary the adversarial concept is mixed from; no keys to protect."""
    return erase_advpres(
        pipe, concepts, config, preserve=preserve, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress
    )


register_method(
    MethodSpec(
        name="advpres",
        config_class=AdvPresConfig,
        run=_run,
        keys=KeyKind.NONE,
        summary="erased by a negative-guidance fine-tune, the concept it changes most held (adversarial preservation)",
        # small models: ESD's small settings (unmeasured for this method)
        family_defaults={"small": dict(iterations=200, lr=1e-3, sampler_steps=25, batch_size=4)},
    )
)
