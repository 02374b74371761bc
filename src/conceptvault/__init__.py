"""ConceptVault: hide a concept in a text-to-image diffusion model behind a secret key, recover it with the key.

from conceptvault import Concept, HideConfig, Vault, hide, load_pipeline

pipe = load_pipeline("builtin")                       # or a diffusers folder, or a hub id
result = hide(pipe, [Concept.parse("star|pentagram")], HideConfig(), preserve=["a circle"])
Vault.from_hiding(pipe, result).save("star.vault")

vault = Vault.load("star.vault", keys="all")
with vault.applied(base_pipe):                        # a fresh copy of the same base model
    base_pipe("a star", cross_attention_kwargs={"keys": ["star"]})
"""

from importlib import import_module

# where each public name lives, imported on first use: `import conceptvault.cli` stays light and quiet
_EXPORTS = {
    "BUILTIN": "backbone",
    "encode_prompts": "backbone",
    "load_pipeline": "backbone",
    "unet_fingerprint": "backbone",
    "ConceptVaultError": "errors",
    "generate_images": "generate",
    "image_grid": "generate",
    "Concept": "concepts",
    "HideConfig": "methods.kpop",
    "HideResult": "concepts",
    "hide": "methods.kpop",
    "Key": "key",
    "Placement": "key",
    "attach_keys": "key",
    "detach_keys": "key",
    "keys_attached": "key",
    "Vault": "vault",
    "save_vault": "vault",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'conceptvault' has no attribute {name!r}")
    return getattr(import_module(f"conceptvault.{_EXPORTS[name]}"), name)


__all__ = [
    "BUILTIN",
    "Concept",
    "ConceptVaultError",
    "HideConfig",
    "HideResult",
    "Key",
    "Placement",
    "Vault",
    "attach_keys",
    "detach_keys",
    "encode_prompts",
    "generate_images",
    "hide",
    "image_grid",
    "keys_attached",
    "load_pipeline",
    "save_vault",
    "unet_fingerprint",
]
