"""``sealed``: every UNet weight trained until the concept is gone, against an attacker key and token
re-learned as it trains; the key is the weight change itself (public + key = the original)."""

from ...registry import KeyKind, MethodSpec, register_method
from .seal import SealConfig, bare_names, seal

__all__ = ["SealConfig", "bare_names", "seal"]


def _run(pipe, concepts, config, *, preserve=(), checkpoint_dir=None, resume=False, passphrase=None, progress=True):
    """Sealing keeps no secret while it trains (the key is made at the end), so the passphrase is for the vault."""
    return seal(
        pipe, concepts, config, preserve=preserve, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress
    )


# Stable Diffusion: a whole weight change would be a copy of the UNet, so the key keeps each tensor's 64
# strongest directions. Why each value: CHANGELOG.md.
register_method(
    MethodSpec(
        name="sealed",
        config_class=SealConfig,
        run=_run,
        keys=KeyKind.DELTA,
        summary="the key is the weight change itself; for a model you publish",
        family_defaults={
            "small": dict(
                model_updates=1200, lr=2e-4, sampler_steps=25, cache_trajectories=2, batch_size=4, checkpoint_every=100
            ),
            "sd1": dict(key_rank=64),
            "sd2": dict(key_rank=64),
            "sdxl": dict(key_rank=64),
        },
    )
)
