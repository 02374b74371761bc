"""A vault that lives: more concepts hidden on top of it, and a leaked key replaced.

Both are hiding runs that start from the vault's public weights (the teacher stays the original model):
the vault's concepts stay hidden and their keys, frozen as they are, keep unlocking them, while the run
hides what is new. Rotating a key hides its concept again behind a new key, and trains the public weights
against the old key, as against an attacker's, so that it no longer unlocks anything. The keys a run keeps
must be at hand (loaded with the vault, with its passphrase): they are held to the original model as the
weights change, which cannot be checked without them.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...concepts import Concept, HideResult
from ...errors import ConceptVaultError
from .hide import Continuation, HideConfig, hide

# what a vault's keys were made with: a run on top of it makes its new keys the same way
KEY_SHAPE_SETTINGS = ("placement", "m", "key_rank", "train", "loss_space", "key_init")


def grown_config(vault, defaults: HideConfig, explicit: dict) -> HideConfig:
    """``defaults`` (the family's, for the concepts being added) with the vault's key shape and ``explicit``
    settings on top; an explicit setting that would change the key shape is refused."""
    fixed = {name: vault.manifest.config[name] for name in KEY_SHAPE_SETTINGS if name in vault.manifest.config}
    for name, value in explicit.items():
        if name in fixed and HideConfig(**{name: value}).to_dict()[name] != fixed[name]:
            raise ValueError(f"{name} must stay {fixed[name]!r}, as the vault's keys were made with it; leave it out.")
    return HideConfig(**{**defaults.to_dict(), **fixed, **explicit})


def vault_concepts(vault) -> list[Concept]:
    """The concepts a vault hides, as its manifest records them."""
    return [Concept(e.name, list(e.prompts), e.anchor, dict(e.anchors)) for e in vault.manifest.concepts]


def add_concepts(pipe, vault, concepts: Sequence[Concept], config: HideConfig, **options) -> HideResult:
    """Hide ``concepts`` on top of ``vault`` (loaded with every key) in ``pipe``, its original base model.

    The vault's concepts stay hidden and their keys keep working; ``options`` are :func:`hide`'s.
    Returns the result of the whole vault: every concept, the earlier keys as they were and the new ones."""
    _check_growable(pipe, vault)
    taken = sorted({c.name for c in concepts} & set(vault.concepts))
    if taken:
        raise ConceptVaultError(
            f"the vault hides {taken[0]!r} already; to give it a new key, rotate it (conceptvault rotate)."
        )
    return hide(pipe, concepts, config, continuing=_continuation(vault), **options)


def rotate_key(pipe, vault, name: str, config: HideConfig, **options) -> HideResult:
    """A new key for the concept ``name`` of ``vault`` (loaded with every key), and public weights that its old
    key no longer unlocks; the other concepts and keys stay as they are. ``options`` are :func:`hide`'s."""
    _check_growable(pipe, vault)
    if name not in vault.concepts:
        raise ConceptVaultError(f"the vault has no concept {name!r}; its concepts are {', '.join(vault.concepts)}.")
    concept = next(c for c in vault_concepts(vault) if c.name == name)
    return hide(pipe, [concept], config, continuing=_continuation(vault, revoke=name), **options)


def _check_growable(pipe, vault) -> None:
    if vault.method.name != "kpop":
        raise ConceptVaultError(
            f"this vault was made by {vault.method.name}; concepts are added and keys rotated in kpop vaults only."
        )
    missing = [name for name in vault.concepts if name not in vault.keys]
    if missing:
        raise ConceptVaultError(
            f"the key of {missing[0]!r} is not at hand: a run on top of a vault keeps every key working, so it "
            "needs them all (load the vault with its keys and passphrase)."
        )
    vault._check_base(pipe.unet)


def _continuation(vault, revoke: str | None = None) -> Continuation:
    kept = [c for c in vault_concepts(vault) if c.name != revoke]
    return Continuation(
        public=dict(vault.public),
        kept={c.name: vault.keys[c.name] for c in kept},
        kept_concepts=kept,
        revoked={revoke: vault.keys[revoke]} if revoke else {},
    )
