"""``kpop``: the concept hidden behind a prompt key fed to the UNet's cross-attention (the method's paper),
extended with preservation terms, cached trajectories, a key-only phase and keys with projection changes."""

from ...registry import KeyKind, MethodSpec, register_method
from .grow import add_concepts, grown_config, rotate_key
from .hide import Continuation, HideConfig, KeyInit, hide

__all__ = ["Continuation", "HideConfig", "KeyInit", "add_concepts", "grown_config", "hide", "rotate_key"]

# Small models (the built-in one) take larger learning rates and far fewer updates, a larger key that reaches
# every cross-attention layer with rank-8 projection changes, losses in x0 space, cached trajectories and a
# key-only phase against the final public weights. Stable Diffusion starts from the paper's settings (the
# config's own defaults). Why each value: CHANGELOG.md.
_SMALL = dict(
    key_rank=8,
    loss_space="x0",
    model_updates=200,
    lr=1e-3,
    key_lr=3e-2,
    m=80,
    lambda_rec=1.0,
    placement="all",
    latents="cache",
    sampler_steps=25,
    cache_trajectories=2,
    batch_size=4,
    key_updates=300,
    checkpoint_every=100,
)

register_method(
    MethodSpec(
        name="kpop",
        config_class=HideConfig,
        run=hide,
        keys=KeyKind.PROMPT,
        summary="a prompt key fed to cross-attention (the method's paper)",
        family_defaults={"small": _SMALL},
        # every training step serves one concept, drawn at random, so several concepts share the updates
        per_concept={"small": ("model_updates", "key_updates")},
    )
)
