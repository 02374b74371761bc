"""``sdd``: erasure by safe self-distillation toward an EMA teacher's unconditional prediction, for comparison
(no keys)."""

from ...registry import KeyKind, MethodSpec, register_method
from .sdd import SddConfig, erase_sdd

__all__ = ["SddConfig", "erase_sdd"]


def _run(pipe, concepts, config, *, preserve=(), checkpoint_dir=None, resume=False, passphrase=None, progress=True):
    """Self-distillation holds nothing to the original but through its teacher, so it takes no preserve prompts;
    it leaves no keys to protect."""
    return erase_sdd(pipe, concepts, config, checkpoint_dir=checkpoint_dir, resume=resume, progress=progress)


register_method(
    MethodSpec(
        name="sdd",
        config_class=SddConfig,
        run=_run,
        keys=KeyKind.NONE,
        summary="erased by self-distillation toward an EMA teacher's unconditional prediction (SDD, comparison)",
        # small models: ESD's small settings, by analogy, and a teacher that follows within the shorter run
        # (not measured)
        family_defaults={"small": dict(iterations=200, lr=1e-3, sampler_steps=25, batch_size=4, ema_decay=0.99)},
    )
)
