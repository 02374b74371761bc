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
        # the built-in model's kept shapes share most of the star's text-state span: protecting 99.9 % of their
        # energy leaves nothing of the star to take out (ESR 0), 90 % hides it and keeps PSR (suppress-defaults-small)
        family_defaults={"small": dict(max_rank=2, protect_energy=0.9, energy=0.99)},
        resumable=False,
    )
)
