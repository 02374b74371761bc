"""Sealed hiding: the concept leaves the public weights, and the key carries it back.

A prompt key can only unlock what the public weights still know, and whatever the owner's key can find,
an attacker with gradients can find too. Sealed hiding therefore trains every UNet weight so that the
concept is gone, not gated: the concept's prompts are pulled to ESD's negative-guidance target, and so
are an attacker key and an attacker token that are re-learned against the public weights as they train
(each a short inversion toward the original model, the strongest teacher there is); the preserve
prompts and the empty prompt are held to the original. The key is then the weight change itself,
``original - public`` (whole, or each tensor's best rank-r approximation): public + key is the original
model, so the key holder gets the concept back as it was, while the public weights carry no path to it.

Optional starts toward forgetting rather than refusing: ``perturb`` moves the trained weights toward noise before
training (what the kept prompts do not teach back is lost), ``reset_units`` re-draws only the cross-attention units
that answer the concept more than the kept prompts, and ``finetune_every`` trains the public weights against a
simulated attacker who fine-tunes the cross-attention toward the concept for a few steps.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...backbone import is_sdxl
from ...concepts import Concept, HideResult, check_inputs
from ...delta_key import DeltaKey
from ...driver import Checkpointer, drive
from ...errors import ConceptVaultError
from ...key import Key, Placement, attach_keys, detach_keys
from ...latents import LatentSource
from ...learned_token import LearnedToken, name_the_token
from ...objective import Objective, TextStates
from ...settings import LossSpace, SamplerSettings, TrainedLayers, option
from ...training import RunState, TrainedRun, concept_tokens, gradients_for, latent_source, trainable_parameters

_ATTACKER = "~attacker"


@dataclass
class SealConfig(SamplerSettings):
    """Every setting of a sealed hiding run; stored in the vault's manifest."""

    model_updates: int = option(1000, "Updates of the public weights.")
    lr: float = option(1e-5, "Adam learning rate of the public weights.")
    lambda_hide: float = option(1.0, "Weight of pulling the concept's prompts to the negative-guidance target.")
    lambda_pres: float = option(1.0, "Weight of holding the preserve prompts and the empty prompt to the original.")
    lambda_adversary: float = option(1.0, "Weight of pulling the attacker key and token to the same target.")
    adversary_every: int = option(1, "Re-learn the attacker key and token every this many updates (0: never).")
    adversary_steps: int = option(4, "Steps of each re-learning of the attacker key and token.")
    adversary_lr: float = option(1e-2, "Adam learning rate of the attacker key and token.")
    adversary_m: int = option(10, "Tokens of the attacker key.")
    eta: float = option(1.0, "Negative-guidance strength of the target.")
    train: TrainedLayers = option(TrainedLayers.ALL, "UNet weights to train (default: all of them).")
    loss_space: LossSpace = option(LossSpace.EPSILON, "Compare predictions as noise, clean latents or velocity.")
    key_rank: int = option(0, "Rank of each tensor's change in the key (0: the whole change, exact).")
    perturb: float = option(
        0.0,
        "Before training, move each trained weight this share of the way to noise of its own scale, so that what "
        "the kept prompts do not teach back is forgotten (0: start from the original).",
    )
    reset_units: float = option(
        0.0,
        "Before training, re-draw from noise this share of the output units of every cross-attention key and value "
        "projection: those whose response to the concept's prompts most exceeds their response to the kept ones "
        "(0: none).",
    )
    finetune_every: int = option(
        0,
        "Every this many updates, fine-tune a copy of the public cross-attention toward the original's concept "
        "for a few steps, as an attacker would, and train the public weights so that the concept stays hidden "
        "after it too (0: never).",
    )
    finetune_steps: int = option(4, "Steps of each simulated fine-tune.")
    finetune_lr: float = option(1e-3, "Adam learning rate of each simulated fine-tune.")
    lambda_finetune: float = option(1.0, "Weight of keeping the concept hidden after the simulated fine-tune.")
    latents: LatentSource = option(
        LatentSource.CACHE, "Make z_t from cached frozen-model trajectories or by sampling."
    )
    checkpoint_every: int = option(50, "Updates between checkpoints (0: only at the end and on Ctrl-C).")

    positive = (
        *SamplerSettings.positive,
        *("model_updates", "lr", "adversary_steps", "adversary_lr", "adversary_m", "finetune_steps", "finetune_lr"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("perturb", "reset_units"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a share from 0 to 1, not {getattr(self, name)}.")
            if getattr(self, name) and self.key_rank:  # noise has full rank: a low-rank change cannot undo it
                raise ValueError(f"{name} needs the whole change as the key (key_rank 0), not rank {self.key_rank}.")


def seal(
    pipe,
    concepts: Sequence[Concept],
    config: SealConfig,
    *,
    preserve: Sequence[str] = (),
    checkpoint_dir: Path | str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> HideResult:
    """Train ``pipe.unet`` in place into the sealed public model; the result's key restores the original.

    Args:
        pipe: a diffusers text-to-image pipeline.
        concepts: the one concept to seal (its key is named after it).
        config: the run's settings (:class:`SealConfig`).
        preserve: prompts held to the original model (the empty prompt always is).
        checkpoint_dir / resume: as for :func:`conceptvault.hide`; a sealed run's checkpoint holds no secret.
        progress: show a progress bar.

    Returns:
        A :class:`HideResult` whose key is a delta key, attached to the UNet (switched on by name).
    """
    concepts, preserve = check_inputs(pipe, concepts, preserve)
    if is_sdxl(pipe.unet):
        raise ConceptVaultError(
            "sealed hiding is not implemented for SDXL yet (its attacker token needs both encoders)."
        )
    if len(concepts) != 1:
        raise ConceptVaultError("sealed hiding seals one concept per vault; make one vault per concept.")
    with gradients_for([pipe.unet, pipe.text_encoder]):  # each step turns on its own weights' gradients
        return _seal(pipe, concepts[0], preserve, config, checkpoint_dir, resume, progress)


def _seal(pipe, concept: Concept, preserve: list[str], config: SealConfig, checkpoint_dir, resume, progress):
    run = _SealRun(pipe, concept, [*preserve, ""], config, progress)
    checkpointer = Checkpointer.at(checkpoint_dir, "sealed")
    drive(run, checkpointer=checkpointer, resume=resume, progress=progress)
    return run.result(list(preserve))


class _SealRun(TrainedRun):
    """One sealing run: the frozen original, the public weights in training, the attacker key and token."""

    length_settings = ("model_updates",)

    def __init__(self, pipe, concept: Concept, preserve: list[str], config: SealConfig, progress: bool = False):
        started = time.perf_counter()
        self.pipe, self.concept, self.preserve, self.config = pipe, concept, preserve, config
        self.concepts = [concept]
        self.begin(pipe, config)
        self.texts = TextStates(pipe, [*concept.prompts, *concept.every_anchor(), *preserve])
        init = concept_tokens(pipe, concept.name, config.adversary_m)
        self.attacker_key = Key(config.adversary_m, self.texts.width, init=init)
        attach_keys(pipe.unet, {_ATTACKER: self.attacker_key}, Placement.ALL)
        self.token = _TokenAdversary(pipe, concept)
        self.trained = trainable_parameters(pipe.unet, config.train)
        if config.reset_units:
            states = [self.texts(p)[0] for p in concept.prompts], [self.texts(p)[0] for p in preserve]
            if not reset_units(self.trained, *(torch.cat(s) for s in states), config.reset_units, seed=config.seed):
                raise ConceptVaultError("`reset_units` re-draws cross-attention units: train them (`train` all).")
        if config.perturb:
            perturb(self.trained.values(), config.perturb, seed=config.seed)
        self.optimiser = torch.optim.Adam(self.trained.values(), lr=config.lr)
        adversary = [*self.attacker_key.parameters(), self.token.vector]
        self.adversary_optimiser = torch.optim.Adam(adversary, lr=config.adversary_lr)
        self.objective = Objective(pipe.unet, self.frozen_unet, pipe.scheduler.config, config)
        cached = [*concept.prompts, *(p for p in preserve if p)]
        _, self.source = latent_source(pipe, self.frozen_unet, self.texts, cached, config, self.generator, progress)
        self.state = RunState(total=config.model_updates)
        self.at_step_boundary()
        self.state.setup_seconds = time.perf_counter() - started

    def step(self) -> dict:
        started, config, texts = time.perf_counter(), self.config, self.texts
        self.at_step_boundary()
        prompt = self.pick(self.concept.prompts)
        z, t = self.source.draw(prompt, config.batch_size, self.generator)
        frozen = self.objective.teachers(z, t, texts, self.source.last_teacher)
        kept = self.pick(self.preserve)
        z_kept, t_kept = self.source.draw(kept or prompt, config.batch_size, self.generator)
        frozen_kept = self.objective.teacher(z_kept, t_kept, texts(kept), self.source.last_teacher.get(kept))
        if config.adversary_every and self.state.step % config.adversary_every == 0:
            self._relearn_adversaries()
        after_finetune = {}
        if config.finetune_every and self.state.step % config.finetune_every == 0:
            after_finetune = self._after_simulated_finetune()
        self.train_only(list(self.trained.values()))
        with torch.no_grad():
            token_states = self.token.states([prompt])
        # the three predictions without a key in one UNet call: the prompt, the kept prompt, the attacker token
        parts = [(z, t, texts(prompt)), (z_kept, t_kept, texts(kept)), (z, t, token_states)]
        plain, kept_plain, with_token = self.objective.predict_together(parts)
        target = self.objective.hide_target(frozen(prompt), frozen(self.concept.anchor_of(prompt)))
        L_hide = F.mse_loss(plain, target)
        L_pres = F.mse_loss(kept_plain, frozen_kept)
        L_adv = self.objective.distil(z, t, texts(prompt), key=_ATTACKER, target=target)
        L_adv = L_adv + F.mse_loss(with_token, target)
        loss = config.lambda_hide * L_hide + config.lambda_pres * L_pres + config.lambda_adversary * L_adv
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        for weight, gradient in after_finetune.get("gradients", {}).items():
            weight.grad = config.lambda_finetune * gradient + (0 if weight.grad is None else weight.grad)
        self.optimiser.step()
        self.state.step += 1
        self.at_step_boundary()
        losses = {"L_hide": L_hide, "L_pres": L_pres, "L_adv": L_adv}
        if "L_finetuned" in after_finetune:
            losses["L_finetuned"] = after_finetune["L_finetuned"]
        self.state.record(losses, time.perf_counter() - started)
        return dict(self.state.latest, loss=float(loss.detach()))

    def every_parameter(self) -> list:
        return [*self.trained.values(), *self.attacker_key.parameters(), self.token.vector]

    def _relearn_adversaries(self) -> None:
        """A few steps of key and token inversion toward the original model, against the weights as they are."""
        self.train_only([*self.attacker_key.parameters(), self.token.vector])
        for _ in range(self.config.adversary_steps):
            prompt = self.pick(self.concept.prompts)
            z, t = self.source.draw(prompt, self.config.batch_size, self.generator)
            teacher = self.objective.teacher(z, t, self.texts(prompt), self.source.last_teacher.get(prompt))
            loss = self.objective.distil(z, t, self.texts(prompt), key=_ATTACKER, target=teacher)
            loss = loss + self.objective.distil(z, t, self.token.states([prompt]), target=teacher)
            self.adversary_optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.adversary_optimiser.step()

    def _after_simulated_finetune(self) -> dict:
        """Fine-tune the public cross-attention toward the original's concept as an attacker would (a fresh Adam,
        ``finetune_steps`` steps), measure how far the fine-tuned model is from the hiding target, and put the
        weights back. Returns that loss and its gradient at the fine-tuned weights, which the update adds to its
        own (first order: the fine-tune's dependence on the weights is not differentiated)."""
        config, texts = self.config, self.texts
        attacked = [w for name, w in self.trained.items() if ".attn2." in name] or list(self.trained.values())
        saved = [w.detach().clone() for w in attacked]
        self.train_only(attacked)
        attacker = torch.optim.Adam(attacked, lr=config.finetune_lr)
        for _ in range(config.finetune_steps):
            prompt = self.pick(self.concept.prompts)
            z, t = self.source.draw(prompt, config.batch_size, self.generator)
            teacher = self.objective.teacher(z, t, texts(prompt), self.source.last_teacher.get(prompt))
            attacker.zero_grad(set_to_none=True)
            self.objective.distil(z, t, texts(prompt), target=teacher).backward()
            attacker.step()
        prompt = self.pick(self.concept.prompts)
        z, t = self.source.draw(prompt, config.batch_size, self.generator)
        frozen = self.objective.teachers(z, t, texts, self.source.last_teacher)
        target = self.objective.hide_target(frozen(prompt), frozen(self.concept.anchor_of(prompt)))
        loss = self.objective.distil(z, t, texts(prompt), target=target)
        gradients = torch.autograd.grad(loss, attacked)
        with torch.no_grad():
            for weight, original in zip(attacked, saved, strict=True):
                weight.copy_(original)
        return {"L_finetuned": loss.detach(), "gradients": dict(zip(attacked, gradients, strict=True))}

    def checkpoint(self) -> tuple[dict, dict]:
        """The run's state (a sealed run has no secret while it trains: the key is made at the end)."""
        public = {
            **self.trained_state(),
            "attacker_key": self.attacker_key.state_dict(),
            "token": self.token.vector.detach().cpu().clone(),
            "adversary_optimiser": self.adversary_optimiser.state_dict(),
        }
        return public, {}

    def load(self, public: dict, secret: dict) -> None:
        self.load_trained_state(public)
        with torch.no_grad():
            self.token.vector.copy_(public["token"])
        self.attacker_key.load_state_dict(public["attacker_key"])
        self.adversary_optimiser.load_state_dict(public["adversary_optimiser"])

    def result(self, preserve: list[str]) -> HideResult:
        detach_keys(self.pipe.unet)  # the attacker key was a training device only
        public = {name: p.detach().cpu().clone() for name, p in self.trained.items()}
        if not all(torch.isfinite(t).all() for t in public.values()):
            raise ConceptVaultError(
                "training left non-finite weights; nothing was written. Lower the learning rate (lr) and run again."
            )
        original = {name: p.detach().cpu() for name, p in self.frozen_unet.named_parameters() if name in public}
        key = DeltaKey.between(public, original, rank=self.config.key_rank)
        public = {name: tensor for name, tensor in public.items() if name in key.names}  # only what changed
        attach_keys(self.pipe.unet, {self.concept.name: key}, None)
        stats = dict(self.state.stats(self.state.step), key_numbers=key.size(), key_rank=self.config.key_rank)
        return HideResult(
            public=public,
            keys={self.concept.name: key},
            stats=stats,
            base_fingerprint=self.base_fingerprint,
            concepts=[self.concept],
            config=self.config,
            preserve=preserve,
            method="sealed",
        )


def perturb(weights, share: float, seed: int) -> None:
    """Move each weight ``share`` of the way to Gaussian noise with the weight's own spread, in place, with a
    generator of its own (the run's other draws stay those of an unperturbed run)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in weights:
            spread = weight.float().std() if weight.numel() > 1 else weight.new_zeros(())
            noise = torch.randn(weight.shape, generator=generator).to(weight) * spread
            weight.mul_(1 - share).add_(noise, alpha=share)


def reset_units(trained: dict, concept_states, kept_states, share: float, seed: int) -> dict[str, list[int]]:
    """Re-draw, in place, the ``share`` of output units (rows) of every trained cross-attention key and value
    projection whose mean response to ``concept_states`` (text states, ``(tokens, width)``) most exceeds their
    response to ``kept_states``, from noise of the layer's own spread; returns the rows re-drawn, by tensor."""
    generator = torch.Generator().manual_seed(seed)
    chosen = {}
    with torch.no_grad():
        for name, weight in trained.items():
            if not re.search(r"\.attn2\.to_[kv]\.weight$", name):
                continue
            concept = (concept_states.to(weight) @ weight.T).abs().mean(0)
            kept = (kept_states.to(weight) @ weight.T).abs().mean(0)
            rows = torch.topk(concept - kept, max(1, round(share * weight.shape[0]))).indices
            noise = torch.randn(len(rows), weight.shape[1], generator=generator).to(weight) * weight.std()
            weight[rows] = noise
            chosen[name] = sorted(rows.tolist())
    return chosen


def bare_names(prompts: list[str]) -> list[str]:
    """The prompts that contain none of the others as a phrase: a concept's names ("star", "pentagram"), not its
    captions or longer phrasings ("a red star", "five-pointed star")."""

    def contains(text: str, phrase: str) -> bool:
        return text != phrase and re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text) is not None

    return [p for p in prompts if not any(contains(p, other) for other in prompts)]


class _TokenAdversary(LearnedToken):
    """An attacker's learned input token, kept in step with the public weights; prompts name it in place of the
    concept."""

    def __init__(self, pipe, concept: Concept):
        super().__init__(pipe, concept.name)
        self.names = bare_names(concept.prompts)

    def states(self, prompts: list[str]) -> torch.Tensor:
        """Text states of ``prompts`` with the concept's names replaced by the learned token."""
        handle = self.hook()
        try:
            return self.encode(name_the_token(prompts, self.names))
        finally:
            handle.remove()
