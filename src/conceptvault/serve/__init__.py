"""Serving vaults over HTTP: the public model for everyone with a token, a key only with a live grant.

from conceptvault.serve import build_server
app, engine = build_server(["star.vault"], "grants.sqlite", passphrase="...")
# uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

from pathlib import Path

from ..backbone import load_pipeline
from ..errors import ConceptVaultError
from ..profiles import profile_for
from ..vault import Vault
from .app import Limits, Served, create_app
from .engine import Engine
from .store import AccessStore


def build_server(
    vault_paths,
    db: str,
    *,
    passphrase: str | None = None,
    device: str | None = None,
    limits: Limits | None = None,
    queue_size: int = 32,
    max_batch: int = 8,
):
    """Load every vault with its keys onto a warm pipeline, open the database, and make the app."""
    pipelines, served, loaded = {}, {}, {}
    for path in map(Path, vault_paths):
        name = path.name
        if name in served:
            raise ConceptVaultError(f"two vaults are named {name!r}; serve vaults with distinct folder names.")
        vault = Vault.load(path, keys="all", passphrase=passphrase)
        pipe = load_pipeline(vault.manifest.base_model, device=device)
        vault.apply(pipe)
        loaded[name] = vault
        steps, guidance = profile_for(vault.manifest.base_model).sampler  # a request may name its own
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        pipelines[name] = pipe
        served[name] = Served(
            concepts=sorted(vault.keys),
            steps=steps,
            guidance=guidance,
            size=size,
            fingerprint=vault.public_fingerprint,
        )
    store = AccessStore(db)
    for name, vault in loaded.items():  # what is served from now on, a rotated key among it, is on record
        store.audit(user=None, vault=name, prompt=None, status=200, outcome=_loaded(vault))
    engine = Engine(pipelines, queue_size=queue_size, max_batch=max_batch)
    return create_app(engine, served, store, limits), engine


def _loaded(vault: Vault) -> str:
    """The audit line of a vault the server loaded: its public fingerprint and its last change (a rotation)."""
    line = f"loaded: public fingerprint {vault.public_fingerprint[:16]}"
    if vault.manifest.history:
        last = vault.manifest.history[-1]
        line += f"; last change: {last.get('action')} {', '.join(last.get('concepts', []))} at {last.get('created')}"
    return line


__all__ = ["AccessStore", "Limits", "build_server", "create_app"]
