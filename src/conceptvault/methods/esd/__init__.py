"""``esd``: erasure by a negative-guidance fine-tune, for comparison (no keys); ``esd-x`` trains
cross-attention, ``esd-u`` everything but it."""

from ...registry import KeyKind, MethodSpec, register_method
from .esd import EsdConfig, erase_esd

__all__ = ["EsdConfig", "erase_esd"]


def _run(pipe, concepts, config, *, preserve=(), checkpoint_dir=None, resume=False, passphrase=None, progress=True):
    """ESD holds nothing to the original, so it takes no preserve prompts; it leaves no keys to protect."""
    return erase_esd(pipe, concepts, config, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)


register_method(
    MethodSpec(
        name="esd",
        config_class=EsdConfig,
        run=_run,
        keys=KeyKind.NONE,
        summary="erased by a negative-guidance fine-tune (comparison)",
        # small models: the same larger learning rate, fewer steps and sampler length as hiding
        family_defaults={"small": dict(iterations=200, lr=1e-3, sampler_steps=25, batch_size=4)},
        variants={"esd-x": {"train": "xattn"}, "esd-u": {"train": "noxattn"}},
    )
)
