"""``suppress``: erasure by projecting the concept's directions out of the text states every cross-attention
layer reads, folded into its key and value projections, for comparison (no keys)."""

from ...registry import KeyKind, MethodSpec, register_method
from .suppress import SuppressConfig, concept_subspace, erase_suppress

__all__ = ["SuppressConfig", "concept_subspace", "erase_suppress"]


def _run(pipe, concepts, config, *, preserve=(), checkpoint_dir=None, resume=False, passphrase=None, progress=True):
    """A closed form: nothing to checkpoint, resume or show progress for, and no keys."""
    return erase_suppress(pipe, concepts, config, preserve=preserve)


register_method(
    MethodSpec(
        name="suppress",
        config_class=SuppressConfig,
        run=_run,
        keys=KeyKind.NONE,
        summary="erased by projecting the concept out of the text states cross-attention reads (comparison)",
        # the built-in model reads 64-wide text states: fewer directions to take out (unmeasured)
        family_defaults={"small": dict(max_rank=2)},
        resumable=False,
    )
)
