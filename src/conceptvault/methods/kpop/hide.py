"""Hiding: move a concept out of the public model and into its key (the KPOP objective, extended).

Without the key the trained UNet is pulled toward ESD's negative-guidance target; with the key it
is pulled back to the frozen original, and so is the empty prompt with the key (guidance's other
branch); preserve prompts are held to the original with and without the key. Model updates (every
``k``-th step) and key-only updates alternate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...adversarial_preservation import AdversarialConcept, vocabulary
from ...backbone import encode_prompts
from ...concepts import Concept, HideResult, check_inputs
from ...driver import Checkpointer, drive
from ...errors import ConceptVaultError
from ...key import Key, Placement, attach_keys, detach_keys, projection_shapes
from ...latents import Sampler
from ...objective import Objective, TextStates
from ...settings import LossSpace, SamplerSettings, TrainedLayers, option, settings_from_dict
from ...training import RunState, TrainedRun, concept_tokens, gradients_for, latent_source, trainable_parameters


class KeyInit(str, Enum):
    CONCEPT = "concept"  # the concept's own text states, tiled to m tokens
    RANDOM = "random"  # normal noise with the text states' standard deviation


@dataclass
class HideConfig(SamplerSettings):
    """Every setting of a hiding run; stored in the vault's manifest."""

    model_updates: int = option(1000, "Number of model updates; training runs model_updates * k steps.")
    k: int = option(2, "Update the model on every k-th step and only the keys on the other steps.")
    lr: float = option(1e-5, "Adam learning rate of the UNet weights.")
    key_lr: float = option(1e-5, "Adam learning rate of the keys.")
    lambda_hide: float = option(1.0, "Weight of L_hide (no key, toward the negative-guidance target).")
    lambda_rec: float = option(0.1, "Weight of L_rec (with the key, toward the original model) in model updates.")
    lambda_uncond: float = option(
        1.0,
        "Weight of L_uncond_key: the unconditional branch with the key (empty prompt) held to the original's. "
        "Classifier-free guidance gives the key to both branches; left untrained (0), that branch drifts toward "
        "the concept and guidance subtracts what the key brought back.",
    )
    lambda_pres: float = option(1.0, "Weight of the preservation terms on the preserve prompts.")
    lambda_leak: float = option(
        1.0,
        "Weight of L_leak, with several concepts: another concept's key alone on this concept's prompt, held to "
        "the hiding target, so that no key brings back a concept that is not its own (0: off; one concept: "
        "no such term).",
    )
    eta: float = option(1.0, "Negative-guidance strength of the hiding target.")
    train: TrainedLayers = option(TrainedLayers.XATTN, "UNet weights to train: cross-attention only, or all but it.")
    loss_space: LossSpace = option(
        LossSpace.EPSILON, "Compare predictions as noise (epsilon), clean latents (x0) or velocity (v)."
    )
    key_init: KeyInit = option(KeyInit.CONCEPT, "Start the key from the concept's text states or from noise.")
    m: int = option(10, "Tokens per key.")
    key_rank: int = option(
        0,
        "Rank of the key's own changes of the query, key, value and output projections of every layer it "
        "reaches, on only with the key (0: tokens only). Tokens reach only what the public weights still know.",
    )
    key_change_lr: float = option(1e-3, "Adam learning rate of the key's projection changes (key_rank > 0).")
    placement: Placement = option(Placement.MID, "Cross-attention layers that receive the key.")
    key_updates: int = option(0, "Key-only updates after the model updates, against the final public weights.")
    adversary_every: int = option(
        0,
        "Hardened hiding: every this many model updates, learn an attacker key against the current public "
        "weights, and train the weights to defeat it (0: off). Measured on the built-in model, it defeats "
        "the owner's key too (docs/security.md).",
    )
    adversary_steps: int = option(20, "Steps of each inner attacker-key inversion (hardened hiding).")
    lambda_adversary: float = option(1.0, "Weight of defeating the attacker key (hardened hiding).")
    adversarial_preserve: float = option(
        0.0,
        "Weight of adversarial preservation: the public model held to the original on the concept hiding changes "
        "most, a mix of the preserve prompts, anchors and empty prompt searched before each model update (0: off).",
    )
    adversarial_preserve_steps: int = option(2, "Gradient-ascent steps of that search before each model update.")
    checkpoint_every: int = option(50, "Training steps between checkpoints (0: only at the end and on Ctrl-C).")

    positive = (*SamplerSettings.positive, "model_updates", "k", "lr", "key_lr", "key_change_lr", "m")

    @classmethod
    def from_dict(cls, values: dict) -> HideConfig:
        """Settings from a manifest; an unknown or ill-typed setting is a ValueError naming it."""
        # vaults made before L_uncond_key and L_leak existed were trained without them
        return settings_from_dict(cls, {"lambda_uncond": 0.0, "lambda_leak": 0.0, **values})


@dataclass
class Continuation:
    """Hiding on top of a vault: training starts from its public weights (the teacher stays the original model),
    the keys of ``kept`` concepts must keep unlocking them (frozen, as they are), and each ``revoked`` key must
    stop unlocking its concept (hidden against it, as against an attacker's key)."""

    public: dict[str, torch.Tensor]
    kept: dict[str, Key]  # concept name -> its key, unchanged
    kept_concepts: list[Concept]
    revoked: dict[str, Key] = field(default_factory=dict)  # concept name -> the key that must no longer work

    def identity(self) -> dict:
        from ...keyfile import key_fingerprint
        from ...vault import public_fingerprint

        return {
            "public": public_fingerprint(self.public),
            "kept": {name: key_fingerprint(key) for name, key in sorted(self.kept.items())},
            "revoked": {name: key_fingerprint(key) for name, key in sorted(self.revoked.items())},
        }


def hide(
    pipe,
    concepts: Sequence[Concept],
    config: HideConfig,
    *,
    continuing: Continuation | None = None,
    preserve: Sequence[str] = (),
    checkpoint_dir: Path | str | None = None,
    resume: bool = False,
    passphrase: str | None = None,
    progress: bool = True,
    measure: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
) -> HideResult:
    """Train ``pipe.unet`` in place so that it hides ``concepts`` unless their keys are given.

    Args:
        pipe: a diffusers text-to-image pipeline, as :func:`conceptvault.load_pipeline` returns it.
        concepts: what to hide; each gets a key named after it.
        config: every setting of the run (:class:`HideConfig`).
        continuing: hide on top of a vault (:class:`Continuation`): its concepts stay hidden and their keys keep
            working, revoked keys stop working; ``pipe`` is the vault's original base model.
        preserve: prompts held to the original model, with and without the keys.
        checkpoint_dir: where checkpoints go (every ``config.checkpoint_every`` steps, at the end, and on
            Ctrl-C or SIGTERM); ``resume=True`` continues the run found there bit-exactly.
        passphrase: protects the keys inside checkpoints (a protected run resumes only with it).
        progress: show a progress bar.
        measure: evaluate the losses on fixed frozen-model latents before and after (``stats["probe"]``).
        on_step: called after every step as ``on_step(step, info)`` with the step's losses,
            ``model_step``, ``keys`` (switched on for the key losses), ``sampler_calls`` and ``seconds``.

    Returns:
        A :class:`HideResult`. On return the UNet holds the public weights and the keys stay attached
        (switch them on with ``cross_attention_kwargs={"keys": [name]}``).
    """
    checkpointer = Checkpointer.at(checkpoint_dir, "kpop", passphrase)
    if resume and checkpointer:
        checkpointer.check_opens()
    run = _HidingRun(pipe, *check_inputs(pipe, concepts, preserve), config, progress, continuing)
    if measure and not resume:
        run.measure("before")
    with run.training():
        drive(
            run,
            checkpointer=checkpointer,
            resume=resume,
            progress=progress,
            on_step=on_step,
        )
    if measure:
        run.measure("after")
    return run.result()


@dataclass
class _Draw:
    """One training step's data: latents of a concept prompt and of a preserve prompt (``kept``, None when
    nothing is preserved), with ``frozen(prompt)`` and ``frozen_kept`` the frozen model's predictions there."""

    concept: Concept
    prompt: str
    z: torch.Tensor
    t: torch.Tensor
    frozen: Callable[[str], torch.Tensor]
    keys: list[str]  # switched on for the key losses: the concept's own, and perhaps some of the others
    sampler_calls: int = 0
    kept: str | None = None
    z_kept: torch.Tensor | None = None
    t_kept: torch.Tensor | None = None
    frozen_kept: torch.Tensor | None = None


class _HidingRun(TrainedRun):
    """One hiding run: the frozen teacher, the trained weights, the keys, their optimisers and the data.

    ``step()`` is one training step; model updates (every ``k``-th step) and key-only updates alternate,
    then ``key_updates`` key-only steps follow against the final public weights.
    """

    length_settings = ("model_updates", "key_updates")

    def __init__(
        self, pipe, concepts: list[Concept], preserve: list[str], config: HideConfig, progress=False, continuing=None
    ):
        started = time.perf_counter()
        self.continuing = continuing
        self.learning = concepts  # the concepts whose keys this run learns
        kept = continuing.kept_concepts if continuing else []
        self.pipe, self.concepts, self.preserve, self.config = pipe, [*kept, *concepts], preserve, config
        concepts = self.concepts
        self.begin(pipe, config)
        if continuing:  # the trained weights start from the vault's public ones; the teacher is the original
            with torch.no_grad():
                state = pipe.unet.state_dict()
                for name, tensor in continuing.public.items():
                    state[name].copy_(tensor)
        anchors = [a for c in concepts for a in c.every_anchor()]
        prompts = [*(p for c in concepts for p in c.prompts), *anchors, *preserve, ""]
        self.texts = TextStates(pipe, prompts)
        layers = projection_shapes(pipe.unet, config.placement) if config.key_rank else None
        self.keys = {
            c.name: Key(
                config.m,
                self.texts.width,
                init=_initial_tokens(pipe, c, config, self.generator),
                layers=layers,
                rank=config.key_rank,
                generator=self.generator,
            )
            for c in self.learning
        }
        self.kept_keys = dict(continuing.kept) if continuing else {}
        self.revoked = {_revoked(name): key for name, key in (continuing.revoked if continuing else {}).items()}
        # hardened hiding: one attacker key per concept, learned against the public weights as they train
        self.adversaries = {
            _adversary(c.name): Key(config.m, self.texts.width, init=concept_tokens(pipe, c.name, config.m))
            for c in concepts
            if config.adversary_every
        }
        attach_keys(pipe.unet, {**self.kept_keys, **self.keys, **self.revoked, **self.adversaries}, config.placement)
        self.trained = trainable_parameters(pipe.unet, config.train)
        self.key_parameters = [p for key in self.keys.values() for p in key.parameters()]
        self.adversary_parameters = [p for key in self.adversaries.values() for p in key.parameters()]
        self.optimiser = torch.optim.Adam(self.trained.values(), lr=config.lr)
        groups = [{"params": [p for key in self.keys.values() for p in key.tokens()], "lr": config.key_lr}]
        if config.key_rank:
            changes = [p for key in self.keys.values() for p in key.changes.parameters()]
            groups.append({"params": changes, "lr": config.key_change_lr})
        self.key_optimiser = torch.optim.Adam(groups)
        self.adversary_optimiser = (
            torch.optim.Adam(self.adversary_parameters, lr=config.key_lr) if self.adversaries else None
        )
        self.objective = Objective(pipe.unet, self.frozen_unet, pipe.scheduler.config, config)
        self.adversarial = (  # adversarial preservation: built only when on, so a run without it is as before
            AdversarialConcept(self.texts, vocabulary(concepts, preserve)) if config.adversarial_preserve else None
        )
        cached = [*(p for c in concepts for p in c.prompts), *preserve]
        self.sampler, self.source = latent_source(
            pipe, self.frozen_unet, self.texts, cached, config, self.generator, progress
        )
        self._probe: _Probe | None = None  # made on first use: it costs a few sampler runs
        self.state = RunState(total=config.model_updates * config.k + config.key_updates)
        self.at_step_boundary()
        self.state.setup_seconds = time.perf_counter() - started

    def is_model_step(self, step: int) -> bool:
        return step < self.config.model_updates * self.config.k and (step + 1) % self.config.k == 0

    def model_updates_done(self) -> int:
        config = self.config
        return min(self.state.step, config.model_updates * config.k) // config.k

    def step(self) -> dict:
        """One training step: draw latents, compute the losses, update the model or the keys."""
        started, config, step = time.perf_counter(), self.config, self.state.step
        self.at_step_boundary()
        model_step = self.is_model_step(step)
        draw = self._draw(self.concepts if model_step else self.learning)
        if model_step and self.adversaries and (step // config.k) % config.adversary_every == 0:
            self._invert_adversaries()
        if model_step and self.adversarial:
            self.adversarial.search(self.objective, draw.z, draw.t, config.adversarial_preserve_steps)
        self.train_only(list(self.trained.values()) if model_step else self.key_parameters)

        L_rec, L_pres_key, L_uncond_key = self._key_losses(draw)
        L_hide = L_pres = L_adv = None
        if model_step:
            L_hide, L_pres, L_adv = self._public_losses(draw)
            loss = config.lambda_hide * L_hide + config.lambda_rec * L_rec + config.lambda_pres * (L_pres + L_pres_key)
            if L_adv is not None:
                loss = loss + config.adversarial_preserve * L_adv
            if self.adversaries:  # the attacker key must not bring the concept back either
                loss = loss + config.lambda_adversary * self._hide_loss(draw, key=_adversary(draw.concept.name))
            if _revoked(draw.concept.name) in self.revoked:  # nor the key it had before
                loss = loss + config.lambda_adversary * self._hide_loss(draw, key=_revoked(draw.concept.name))
        else:
            loss = L_rec + config.lambda_pres * L_pres_key
        if L_uncond_key is not None:
            loss = loss + config.lambda_uncond * L_uncond_key
        L_leak = self._leak_loss(draw)
        if L_leak is not None:
            loss = loss + config.lambda_leak * L_leak
        self.optimiser.zero_grad(set_to_none=True)
        self.key_optimiser.zero_grad(set_to_none=True)
        loss.backward()
        (self.optimiser if model_step else self.key_optimiser).step()
        self.state.step = step + 1
        self.at_step_boundary()
        seconds = time.perf_counter() - started
        measured = _measured(L_hide, L_rec, L_pres, L_pres_key, L_uncond_key, preserved=draw.kept is not None)
        if L_adv is not None:
            measured["L_adv"] = L_adv
        if L_leak is not None:
            measured["L_leak"] = L_leak
        self.state.record(measured, seconds)
        return dict(
            self.state.latest,
            loss=float(loss.detach()),
            step=self.state.step,
            total=self.state.total,
            model_step=model_step,
            keys=draw.keys,
            sampler_calls=draw.sampler_calls,
            seconds=seconds,
        )

    def _draw(self, concepts: list[Concept]) -> _Draw:
        """This step's concept prompt (one of ``concepts``) and preserve prompt, their latents and the frozen
        model's predictions."""
        config, objective, texts, source = self.config, self.objective, self.texts, self.source
        concept = self.pick(concepts)
        prompt = self.pick(concept.prompts)
        z, t = source.draw(prompt, config.batch_size, self.generator)
        frozen = objective.teachers(z, t, texts, source.last_teacher)
        draw = _Draw(concept, prompt, z, t, frozen, self._keys_on(concept))
        draw.sampler_calls = source.last_sampler_calls
        if self.preserve and config.lambda_pres > 0:
            draw.kept = self.pick(self.preserve)
            draw.z_kept, draw.t_kept = source.draw(draw.kept, config.batch_size, self.generator)
            draw.sampler_calls += source.last_sampler_calls
            known = source.last_teacher.get(draw.kept)
            draw.frozen_kept = objective.teacher(draw.z_kept, draw.t_kept, texts(draw.kept), known)
        return draw

    def _keys_on(self, concept: Concept) -> list[str]:
        """The concept's key and, for keys with projection changes, each other key with probability 1/2:
        whoever holds several keys switches them on together, and their changes add up, so each hidden
        concept must come back and the kept ones stay as they were with any of them on. Tokens-only keys
        compose as they are (five shapes with all five keys on: key PSR the original's), and train alone."""
        others = [c.name for c in self.concepts if c is not concept]
        if not others or not self.config.key_rank:
            return [concept.name]
        coins = torch.rand(len(others), generator=self.generator) < 0.5
        return [concept.name, *(name for name, on in zip(others, coins.tolist(), strict=True) if on)]

    def _key_losses(self, draw: _Draw):
        """L_rec, L_pres_key (zero when nothing is preserved) and L_uncond_key (None when its weight is 0): the
        model with the key on, held to the original, in one UNet call."""
        texts, uncond = self.texts, self.config.lambda_uncond > 0
        parts = [(draw.z, draw.t, texts(draw.prompt))]
        if draw.kept:
            parts.append((draw.z_kept, draw.t_kept, texts(draw.kept)))
        if uncond:
            parts.append((draw.z, draw.t, texts("")))
        predictions = iter(self.objective.predict_together(parts, keys=draw.keys))
        L_rec = F.mse_loss(next(predictions), draw.frozen(draw.prompt))
        L_pres_key = F.mse_loss(next(predictions), draw.frozen_kept) if draw.kept else draw.z.new_zeros(())
        L_uncond_key = F.mse_loss(next(predictions), draw.frozen("")) if uncond else None
        return L_rec, L_pres_key, L_uncond_key

    def _public_losses(self, draw: _Draw):
        """L_hide, L_pres (zero when nothing is preserved) and L_adv (None without adversarial preservation): the
        model without a key, in one UNet call."""
        texts = self.texts
        parts = [(draw.z, draw.t, texts(draw.prompt))]
        if draw.kept:
            parts.append((draw.z_kept, draw.t_kept, texts(draw.kept)))
        if self.adversarial:
            parts.append((draw.z, draw.t, self.adversarial.states()))
        predictions = self.objective.predict_together(parts)
        target = self.objective.hide_target(draw.frozen(draw.prompt), draw.frozen(draw.concept.anchor_of(draw.prompt)))
        L_hide = F.mse_loss(predictions[0], target)
        L_pres = F.mse_loss(predictions[1], draw.frozen_kept) if draw.kept else draw.z.new_zeros(())
        L_adv = self.adversarial.loss(predictions[-1], self.objective, draw.z, draw.t) if self.adversarial else None
        return L_hide, L_pres, L_adv

    def _leak_loss(self, draw: _Draw) -> torch.Tensor | None:
        """L_hide on the concept prompt with one other concept's key alone on (None: off, or one concept only)."""
        others = [name for name in (*self.keys, *self.kept_keys) if name != draw.concept.name]
        if not others or self.config.lambda_leak <= 0:
            return None
        return self._hide_loss(draw, key=self.pick(others))

    def _hide_loss(self, draw: _Draw, key: str) -> torch.Tensor:
        """L_hide on the concept prompt with ``key`` on: an attacker's (hardened hiding), a revoked one, or another
        concept's."""
        texts, anchor = self.texts, draw.concept.anchor_of(draw.prompt)
        return self.objective.hide(
            draw.z,
            draw.t,
            texts(draw.prompt),
            texts(anchor),
            draw.frozen(draw.prompt),
            key=key,
            frozen_anchor=draw.frozen(anchor),
        )

    def every_parameter(self) -> list[nn.Parameter]:
        return [*self.trained.values(), *self.key_parameters, *self.adversary_parameters]

    def _invert_adversaries(self) -> None:
        """A short key inversion against the current public weights: each attacker key learns to make the
        concept as the original model does (the owner's teacher: a stronger attacker than pictures make)."""
        self.train_only(self.adversary_parameters)
        for _ in range(self.config.adversary_steps):
            concept = self.pick(self.concepts)
            prompt = self.pick(concept.prompts)
            z, t = self.source.draw(prompt, self.config.batch_size, self.generator)
            target = self.objective.teacher(z, t, self.texts(prompt), self.source.last_teacher.get(prompt))
            loss = self.objective.distil(z, t, self.texts(prompt), key=_adversary(concept.name), target=target)
            self.adversary_optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.adversary_optimiser.step()

    def training(self):
        """Gradients only for each step's own parameters (see ``train_only``); every flag restored afterwards."""
        return gradients_for([self.pipe.unet])

    def measure(self, moment: str) -> None:
        """Record the losses on fixed frozen-model latents as ``stats["probe"][moment]``."""
        if self._probe is None:
            self._probe = _Probe(
                self.frozen_unet, self.sampler, self.texts, self.concepts, self.preserve, self.config.seed
            )
        setattr(self.state, f"probe_{moment}", self._probe.measure(self.objective))

    def identity(self) -> dict:
        """What a checkpoint must match; a run on top of a vault also names the vault's public part and keys."""
        continues = {"continues": self.continuing.identity()} if self.continuing else {}
        return {**super().identity(), **continues}

    def checkpoint(self) -> tuple[dict, dict]:
        """The public and the secret half of a checkpoint; the RNG as it was when the last step began or ended."""
        public = {
            **self.trained_state(),
            "adversaries": {name: key.state_dict() for name, key in self.adversaries.items()},
            "adversary_optimiser": self.adversary_optimiser.state_dict() if self.adversary_optimiser else None,
        }
        if self.adversarial:
            public["adversarial"] = self.adversarial.state_dict()
        secret = {
            "keys": {
                name: {k: v.detach().cpu().clone() for k, v in key.state_dict().items()}
                for name, key in self.keys.items()
            },
            "key_optimiser": self.key_optimiser.state_dict(),
        }
        return public, secret

    def load(self, public: dict, secret: dict) -> None:
        self.load_trained_state(public)
        for name, key in self.keys.items():
            key.load_state_dict(secret["keys"][name])
        for name, key in self.adversaries.items():
            key.load_state_dict(public["adversaries"][name])
        if self.adversary_optimiser:
            self.adversary_optimiser.load_state_dict(public["adversary_optimiser"])
        if self.adversarial:
            self.adversarial.load_state_dict(public["adversarial"])
        self.key_optimiser.load_state_dict(secret["key_optimiser"])

    def result(self) -> HideResult:
        public = {name: p.detach().cpu().clone() for name, p in self.trained.items()}
        if not all(torch.isfinite(t).all() for t in public.values()):
            raise ConceptVaultError(
                "training left non-finite weights; nothing was written. Lower the learning rate (lr) and run again."
            )
        keys = {**self.kept_keys, **self.keys}
        if self.adversaries or self.revoked:  # training devices only: keep the real keys attached
            detach_keys(self.pipe.unet)
            attach_keys(self.pipe.unet, keys, self.config.placement)
        stats = self.state.stats(self.model_updates_done())
        if self.adversarial:
            stats["adversarial_concept"] = self.adversarial.strongest()
        return HideResult(
            public=public,
            keys=keys,
            stats=stats,
            base_fingerprint=self.base_fingerprint,
            concepts=self.concepts,
            config=self.config,
            preserve=self.preserve,
        )


def _initial_tokens(pipe, concept: Concept, config: HideConfig, generator: torch.Generator) -> torch.Tensor:
    """The concept's own text states tiled to m tokens, or noise of the text states' spread."""
    if config.key_init == KeyInit.RANDOM:
        states = encode_prompts(pipe, [concept.name])[0].float().cpu()
        return torch.randn(config.m, states.shape[-1], generator=generator) * states.std()
    return concept_tokens(pipe, concept.name, config.m)


def _revoked(concept: str) -> str:
    """The name a revoked key is attached under while the public weights learn to defeat it (never saved)."""
    return f"~revoked-{concept}"


def _adversary(concept: str) -> str:
    """The name an attacker key of hardened hiding is attached under (never saved)."""
    return f"~adversary-{concept}"


def _measured(L_hide, L_rec, L_pres, L_pres_key, L_uncond_key, *, preserved: bool) -> dict[str, torch.Tensor]:
    """The losses this step computed, by name (key-only steps skip L_hide and L_pres)."""
    losses = {"L_hide": L_hide, "L_rec": L_rec, "L_uncond_key": L_uncond_key}
    if preserved:
        losses.update(L_pres=L_pres, L_pres_key=L_pres_key)
    return {name: value for name, value in losses.items() if value is not None}


class _Probe:
    """Fixed frozen-model latents of each concept's name and of some preserve prompts, to measure the losses
    before and after. A sample of the preserve prompts, spread over the list, estimates their mean loss: the
    probe's trajectories, all in one sampler batch, cost seconds instead of half a minute on a CPU."""

    PRESERVE_PROMPTS = 8

    def __init__(self, frozen_unet, sampler: Sampler, texts: TextStates, concepts, preserve, seed: int):
        generator = torch.Generator().manual_seed(seed + 1)
        steps = sorted({min(sampler.steps - 1, int(sampler.steps * f)) for f in (0.25, 0.5, 0.75)})
        self.texts, self.concepts = texts, concepts
        self.preserve = preserve[:: -(-len(preserve) // self.PRESERVE_PROMPTS)] if preserve else []
        prompts = [*(c.name for c in concepts), *self.preserve]
        states = torch.cat([texts(prompt) for prompt in prompts])
        visited = sampler.trajectory(
            frozen_unet, states, sampler.noise(len(prompts), generator, like=states), steps[-1]
        )
        latents = torch.stack([visited[i] for i in steps], dim=1)  # (prompts, steps, C, H, W)
        t = sampler.timesteps[steps].to(latents.device)
        self.latents = {concept.name: (z, t) for concept, z in zip(concepts, latents[: len(concepts)], strict=True)}
        self.kept = None  # the sampled preserve prompts as one batch: (z, t, text states), prompt by prompt
        if self.preserve:
            states = torch.cat([texts(prompt).expand(len(steps), -1, -1) for prompt in self.preserve])
            self.kept = (latents[len(concepts) :].flatten(0, 1), t.repeat(len(self.preserve)), states)

    @torch.no_grad()
    def measure(self, objective: Objective) -> dict[str, float]:
        texts = self.texts
        losses: dict[str, list[float]] = {
            name: [] for name in ("L_hide", "L_rec", "L_uncond_key", "L_pres", "L_pres_key")
        }
        if self.kept:
            frozen_kept = objective.teacher(*self.kept)
            losses["L_pres"].append(float(objective.distil(*self.kept, target=frozen_kept)))
        for concept in self.concepts:
            z, t = self.latents[concept.name]
            states = texts(concept.name)
            frozen = objective.teacher(z, t, states)
            anchor = texts(concept.anchor_of(concept.name))
            losses["L_hide"].append(float(objective.hide(z, t, states, anchor, frozen)))
            losses["L_rec"].append(float(objective.distil(z, t, states, key=concept.name, target=frozen)))
            losses["L_uncond_key"].append(float(objective.distil(z, t, texts(""), key=concept.name)))
            if self.kept:
                losses["L_pres_key"].append(float(objective.distil(*self.kept, key=concept.name, target=frozen_kept)))
        return {name: sum(values) / len(values) for name, values in losses.items() if values}
