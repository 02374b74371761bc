"""Attacks on a public model: how much effort brings a hidden concept back without the key.

Each attack works on the public model alone, as a pipeline the caller made by applying a vault loaded
*without* its keys (or on any other model, for the controls: the original, an erased model, a model that
never learned the concept). It never reads a key. Recovery is the share of images, made for the suite's
prompts and seeds of the hidden concept, that the suite's judge labels as the concept.

- ``prompt``: paraphrases, synonyms, misspellings, descriptions, translations (no training);
- ``random-key``: keys of the real key's shape and norm (recorded in the manifest), and keys of other vaults;
- ``key-inversion``: an attacker key of the manifest's shape and placement (tokens, and projection changes of
  the real key's rank), learned by the plain denoising loss on N images of the concept;
- ``token-inversion``: a new input token of the text encoder, learned the same way;
- ``finetune``: the public UNet's cross-attention fine-tuned on the same images;
- ``ring-a-bell``: prompts of vocabulary words searched, with the text encoder alone, toward benign prompts' text
  states moved along the concept's direction (``attacks_prompt_search``);
- ``unlearndiff``: words prepended to the concept's prompts, learned by the denoising loss on the same images and
  rounded to vocabulary words (``attacks_prompt_search``);
- ``benign-finetune``: the public UNet fine-tuned as ``finetune`` is, but on captioned pictures of *other*, kept
  concepts only: whether the hidden concept resurges by itself.
Trained and searching attacks are measured along the way, giving recovery against attack steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .attacks_prompt_search import RING_A_BELL_STRENGTH, UnlearnDiffPrefix, concept_pairs, concept_words, ring_a_bell
from .backbone import encode_prompts, is_sdxl, unet_predict
from .errors import ConceptVaultError
from .evaluate.metrics import Rate
from .evaluate.suite import SuiteConcept
from .generate import generate_images
from .key import Key, Placement, attach_keys, attached_keys, detach_keys, projection_shapes
from .learned_token import LearnedToken, name_the_token
from .training import concept_tokens

ATTACKER = "attacker"  # the name the attacker key is attached under


class Attack(str, Enum):
    PROMPT = "prompt"
    RANDOM_KEY = "random-key"
    KEY_INVERSION = "key-inversion"
    TOKEN_INVERSION = "token-inversion"
    FINETUNE = "finetune"
    RING_A_BELL = "ring-a-bell"
    UNLEARNDIFF = "unlearndiff"
    BENIGN_FINETUNE = "benign-finetune"

    @property
    def trains(self) -> bool:
        """Whether the attack runs for steps (training or searching), measured along the way."""
        return self not in (Attack.PROMPT, Attack.RANDOM_KEY)

    @property
    def learns_from_pictures(self) -> bool:
        """Whether the attack trains on pictures: the concept's (``images``), or for benign-finetune kept ones'."""
        return self.trains and self != Attack.RING_A_BELL


DEFAULT_LR = {
    Attack.KEY_INVERSION: 1e-2,
    Attack.TOKEN_INVERSION: 1e-2,
    Attack.FINETUNE: 1e-4,
    Attack.UNLEARNDIFF: 1e-2,
}  # benign-finetune is the fine-tuning attacker on other pictures: finetune's rate and weights
MAX_ATTACK_LR = 1.0  # Adam's steps scale with the rate: beyond 1 an attack only diverges
MAX_PROMPT_TOKENS = 75  # the words a searched prompt may have: CLIP's 77 positions less its start and end
MAX_STRENGTH = 100.0


@dataclass
class AttackConfig:
    """An attack's budget and settings."""

    steps: int = 300  # optimisation steps of a trained attack
    images: int = 64  # pictures of the concept it learns from
    lr: float | None = None  # None: the attack's own default (DEFAULT_LR)
    batch_size: int = 8
    measure_at: tuple[int, ...] | None = None  # steps at which recovery is measured; None: 0, 1/12 .. all
    random_keys: int = 8
    seed: int = 0
    weights: str = "xattn"  # what the fine-tuning attacks train (FinetuneWeights)
    tokens: int | None = None  # words of a searched prompt (ring-a-bell) or prefix (unlearndiff); None: per attack
    strength: float = RING_A_BELL_STRENGTH  # how far ring-a-bell's targets lie along the concept's direction

    def __post_init__(self) -> None:
        # a NaN rate trains nothing and its NaN images read as "no star": a false figure of resistance
        if self.lr is not None and not (math.isfinite(self.lr) and 0 < self.lr <= MAX_ATTACK_LR):
            raise ValueError(f"lr must be a finite number above 0 and at most {MAX_ATTACK_LR:g}; got {self.lr}.")
        if self.steps < 0 or self.images < 1 or self.batch_size < 1 or self.random_keys < 0:
            raise ValueError(
                "an attack needs steps >= 0, images >= 1, batch_size >= 1 and random_keys >= 0; got "
                f"{self.steps}, {self.images}, {self.batch_size}, {self.random_keys}."
            )
        if self.tokens is not None and not 1 <= self.tokens <= MAX_PROMPT_TOKENS:
            raise ValueError(f"tokens must be from 1 to {MAX_PROMPT_TOKENS}; got {self.tokens}.")
        if not (math.isfinite(self.strength) and 0 < self.strength <= MAX_STRENGTH):
            raise ValueError(
                f"strength must be a finite number above 0 and at most {MAX_STRENGTH:g}; got {self.strength}."
            )
        if self.weights not in {w.value for w in FinetuneWeights}:
            choices = ", ".join(w.value for w in FinetuneWeights)
            raise ValueError(f"weights must be one of {choices}; got {self.weights!r}.")

    def checkpoints(self) -> list[int]:
        if self.measure_at is not None:
            return sorted({s for s in self.measure_at if 0 <= s <= self.steps})
        return sorted({0, *(round(self.steps * f) for f in (1 / 12, 1 / 6, 1 / 3, 2 / 3, 1))})


@dataclass
class KeySpec:
    """What the public manifest says about the real key: its shape, placement and norms."""

    m: int
    placement: Placement
    norms: tuple[float, float] | None = None  # |p_k|, |p_v| of the real key, if recorded
    rank: int = 0  # the rank of the real key's projection changes (0: tokens only)
    change_lr: float = 1e-3  # the learning rate hiding gave those changes


@dataclass
class AttackResult:
    attack: str
    model: str  # which model was attacked
    curve: list[dict] = field(default_factory=list)  # [{"steps": s, "recovery": Rate.as_dict()}]
    budget: dict = field(default_factory=dict)  # steps, images, seconds
    detail: dict = field(default_factory=dict)  # per prompt (prompt attack) or per key (random keys)

    @property
    def recovery(self) -> dict:
        return self.curve[-1]["recovery"]

    def steps_to(self, share: float = 0.5) -> float | None:
        """Attack steps to reach ``share`` recovery, interpolated between measurements; None if never reached."""
        previous = None
        for point in self.curve:
            value = point["recovery"]["value"]
            if value >= share:
                if previous is None or previous[1] >= share:
                    return float(point["steps"])
                (s0, v0), s1 = previous, point["steps"]
                return s0 + (share - v0) / (value - v0) * (s1 - s0)
            previous = (point["steps"], value)
        return None

    def to_dict(self) -> dict:
        return {
            "attack": self.attack,
            "model": self.model,
            "curve": self.curve,
            "budget": self.budget,
            "detail": self.detail,
            "steps_to_50": self.steps_to(0.5),
        }

    @classmethod
    def from_dict(cls, saved: dict) -> AttackResult:
        """The result :meth:`to_dict` wrote (its ``steps_to_50`` is derived again from the curve)."""
        return cls(saved["attack"], saved["model"], saved["curve"], saved["budget"], saved.get("detail", {}))


class Recovery:
    """Generates the hidden concept's images with the attacked model and counts those the judge labels as it."""

    def __init__(self, pipe, judge, concept: SuiteConcept, steps: int, guidance: float, measure: str, batch_size: int):
        self.pipe, self.judge, self.concept = pipe, judge, concept
        self.steps, self.guidance, self.measure, self.batch_size = steps, guidance, measure, batch_size

    def __call__(
        self, prompts: Sequence[str] | None = None, keys: Sequence[str] | None = None, count: int | None = None
    ) -> Rate:
        prompts = list(prompts or self.concept.prompts)[:count]
        seeds = self.concept.seeds[: len(prompts)]
        images = generate_images(
            self.pipe,
            prompts,
            seeds,
            keys=keys,
            steps=self.steps,
            guidance=self.guidance,
            batch_size=self.batch_size,
            progress=False,
        )
        return Rate.of(self.judge.judge(images, prompts, self.concept.labels).hits[self.measure])


def run_attack(
    attack: Attack | str,
    pipe,
    recovery: Recovery,
    config: AttackConfig,
    *,
    model: str = "public",
    images: Sequence[Image.Image] = (),
    prompts: Sequence[str] = (),
    key_spec: KeySpec | None = None,
    other_keys: dict[str, Key] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    benign: Sequence[tuple[Image.Image, str]] = (),
    words: Sequence[str] = (),
) -> AttackResult:
    """Run one attack on ``pipe`` (left as it was afterwards) and measure recovery with ``recovery``.

    ``benign``: captioned pictures of other, kept concepts (benign-finetune); ``words``: the concept's words
    besides its name and labels (synonyms), which ring-a-bell takes out of prompts and never searches."""
    attack = Attack(attack)
    if attached_keys(pipe.unet):
        raise ConceptVaultError("the attacked model has keys attached; attacks run on the public model alone.")
    started = time.perf_counter()
    result = AttackResult(attack.value, model)
    if attack == Attack.PROMPT:
        _prompt_attack(result, recovery, prompts)
    elif attack == Attack.RANDOM_KEY:
        _random_key_attack(result, pipe, recovery, config, _need(key_spec), other_keys or {})
    elif attack == Attack.RING_A_BELL:
        concept = recovery.concept
        result.curve, result.detail = ring_a_bell(
            pipe,
            recovery,
            config.steps,
            config.checkpoints(),
            concept_pairs(concept, words),
            exclude=concept_words(concept, words),
            tokens=config.tokens,
            strength=config.strength,
            seed=config.seed,
            on_step=on_step,
        )
    elif attack == Attack.BENIGN_FINETUNE:
        if len(benign) < 1:
            raise ConceptVaultError(
                "the benign-finetune attack needs captioned pictures of kept concepts; give `benign_from`."
            )
        trainer = _Finetune(pipe, recovery.concept, config, key_spec)
        _train(result, trainer, pipe, recovery, config, [p for p, _ in benign], on_step, [c for _, c in benign])
        result.detail = {"captions": list(dict.fromkeys(c for _, c in benign))[:8]}
    else:
        if len(images) < 1:
            raise ConceptVaultError(f"the {attack.value} attack needs pictures of the concept; give `images_from`.")
        trainer = {
            Attack.KEY_INVERSION: _KeyInversion,
            Attack.TOKEN_INVERSION: _TokenInversion,
            Attack.FINETUNE: _Finetune,
            Attack.UNLEARNDIFF: _unlearndiff,
        }[attack](pipe, recovery.concept, config, key_spec)
        _train(result, trainer, pipe, recovery, config, images, on_step)
        if hasattr(trainer, "describe"):
            result.detail = trainer.describe()
    pictures = len(benign) if attack == Attack.BENIGN_FINETUNE else len(images)
    result.budget = {
        "steps": config.steps if attack.trains else 0,
        "images": pictures if attack.learns_from_pictures else 0,
        "prompts": len(prompts) if attack == Attack.PROMPT else len(recovery.concept.prompts),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return result


def _need(key_spec: KeySpec | None) -> KeySpec:
    if key_spec is None:
        raise ConceptVaultError("this attack needs the key's shape and placement; attack a vault, or give them.")
    return key_spec


def _prompt_attack(result: AttackResult, recovery: Recovery, prompts: Sequence[str]) -> None:
    if not prompts:
        raise ConceptVaultError("the prompt attack needs prompts; give a file of them (`prompts`).")
    seeds = len(recovery.concept.seeds)
    per_prompt = max(1, min(4, seeds))
    total = Rate(0, 0)
    for prompt in prompts:
        rate = recovery([prompt] * per_prompt)
        result.detail[prompt] = rate.as_dict()
        total = total + rate
    result.curve = [{"steps": 0, "recovery": total.as_dict()}]


def _random_key_attack(result, pipe, recovery: Recovery, config: AttackConfig, spec: KeySpec, others: dict) -> None:
    width = pipe.unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(config.seed)
    keys = {f"random-{i}": _random_key(spec, width, generator, pipe) for i in range(config.random_keys)}
    keys.update({f"other:{name}": key for name, key in others.items() if (key.m, key.dim) == (spec.m, width)})
    per_key = max(4, len(recovery.concept.prompts) // max(len(keys), 1))
    total = Rate(0, 0)
    for name, key in keys.items():
        attach_keys(pipe.unet, {ATTACKER: key}, spec.placement)
        try:
            rate = recovery(keys=[ATTACKER], count=per_key)
        finally:
            detach_keys(pipe.unet)
        result.detail[name] = rate.as_dict()
        total = total + rate
    result.curve = [{"steps": 0, "recovery": total.as_dict()}]


def _random_key(spec: KeySpec, width: int, generator: torch.Generator, pipe) -> Key:
    """Gaussian tokens scaled to the real key's norms (or, unrecorded, to the norm of tiled text states)."""
    key = Key(spec.m, width, init=torch.randn(spec.m, width, generator=generator))
    with torch.no_grad():
        key.p_v.copy_(torch.randn(spec.m, width, generator=generator))
        norms = spec.norms or (_text_norm(pipe, spec.m),) * 2
        for tensor, norm in zip((key.p_k, key.p_v), norms, strict=True):
            tensor.mul_(norm / tensor.norm())
    return key


def _text_norm(pipe, m: int) -> float:
    states = encode_prompts(pipe, [""])[0].float()
    return float(states[:m].norm())


# -- trained attacks ----------------------------------------------------------------------------------------


def encode_images(pipe, images: Sequence[Image.Image]) -> torch.Tensor:
    """Pictures as the UNet's latents (VAE posterior means, scaled), at the model's resolution."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    arrays = [
        np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 127.5 - 1
        for im in images
    ]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(pipe.device, pipe.vae.dtype)
    with torch.no_grad():
        latents = torch.cat([pipe.vae.encode(part).latent_dist.mean for part in batch.split(16)])
    return latents * pipe.vae.config.scaling_factor


def denoising_loss(pipe, latents: torch.Tensor, states: torch.Tensor, generator: torch.Generator, options=None):
    """The plain training loss of a diffusion model: noise the latents at a random step, predict, compare."""
    scheduler = pipe.scheduler
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator).to(
        latents.device
    )
    noisy = scheduler.add_noise(latents, noise, t)
    target = scheduler.get_velocity(latents, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
    prediction = unet_predict(pipe.unet, noisy, t, states, options)
    return F.mse_loss(prediction.float(), target.float())


def _train(result, trainer, pipe, recovery: Recovery, config: AttackConfig, images, on_step, captions=None) -> None:
    """Train ``trainer`` on ``images`` under the concept's prompts (or, given, each image's own caption in
    ``captions``), measuring recovery with the concept's prompts at the configured steps."""
    generator = torch.Generator().manual_seed(config.seed)
    latents = encode_images(pipe, images)
    prompts = recovery.concept.prompts
    checkpoints = config.checkpoints()
    with trainer.attached():
        for step in range(config.steps + 1):
            if step in checkpoints:
                rate = recovery(trainer.prompts(prompts), keys=trainer.keys)
                result.curve.append({"steps": step, "recovery": rate.as_dict()})
            if step == config.steps:
                break
            index = torch.randint(len(latents), (config.batch_size,), generator=generator)
            if captions is not None:
                chosen = [captions[int(i)] for i in index]
            else:
                chosen = [
                    prompts[int(i) % len(prompts)]
                    for i in torch.randint(len(prompts), (config.batch_size,), generator=generator)
                ]
            loss = denoising_loss(pipe, latents[index], trainer.states(chosen), generator, trainer.options)
            trainer.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            trainer.optimiser.step()
            if on_step:
                on_step(step + 1, config.steps)


class _KeyInversion:
    """An attacker key of the real key's shape and placement, started from the concept's own text states; where
    the real key changes the projections it reaches, the attacker's does too, at the same rank, learned at the
    rate hiding used (its changes start at zero, as the owner's do)."""

    def __init__(self, pipe, concept: SuiteConcept, config: AttackConfig, spec: KeySpec | None):
        spec = _need(spec)
        self.pipe, self.spec = pipe, spec
        init = concept_tokens(pipe, concept.name, spec.m)
        layers = projection_shapes(pipe.unet, spec.placement) if spec.rank else None
        generator = torch.Generator().manual_seed(0)
        self.key = Key(spec.m, init.shape[-1], init=init, layers=layers, rank=spec.rank, generator=generator)
        groups = [{"params": self.key.tokens(), "lr": config.lr or DEFAULT_LR[Attack.KEY_INVERSION]}]
        if spec.rank:
            groups.append({"params": list(self.key.changes.parameters()), "lr": spec.change_lr})
        self.optimiser = torch.optim.Adam(groups)
        self.keys, self.options = [ATTACKER], {"keys": [ATTACKER]}

    def attached(self):
        return _context(
            lambda: attach_keys(self.pipe.unet, {ATTACKER: self.key}, self.spec.placement),
            lambda: detach_keys(self.pipe.unet),
            self.pipe.unet,
        )

    def prompts(self, prompts):
        return prompts

    def states(self, prompts):
        return encode_prompts(self.pipe, prompts)


class _TokenInversion:
    """A new input token, learned; prompts name it instead of the concept."""

    def __init__(self, pipe, concept: SuiteConcept, config: AttackConfig, spec: KeySpec | None):
        if is_sdxl(pipe.unet):
            raise ConceptVaultError("token inversion is not implemented for SDXL's two text encoders yet.")
        self.pipe, self.concept = pipe, concept
        self.token = LearnedToken(pipe, concept.name)
        self.optimiser = torch.optim.Adam([self.token.vector], lr=config.lr or DEFAULT_LR[Attack.TOKEN_INVERSION])
        self.keys, self.options = None, None
        self._hook = None

    def attached(self):
        encoder = self.pipe.text_encoder
        frozen = {n: p.requires_grad for n, p in encoder.named_parameters()}

        def on():
            encoder.requires_grad_(False)
            self._hook = self.token.hook()

        def off():
            self._hook.remove()
            for name, parameter in encoder.named_parameters():
                parameter.requires_grad_(frozen[name])

        return _context(on, off, self.pipe.unet)

    def prompts(self, prompts):
        return name_the_token(prompts, [self.concept.name, *self.concept.labels])

    def states(self, prompts):
        return self.token.encode(self.prompts(prompts))


class FinetuneWeights(str, Enum):
    """Which of the public UNet's weights a fine-tuning attacker trains."""

    XATTN = "xattn"  # cross-attention only, where the concept's words enter
    LORA = "lora"  # a low-rank adapter (peft) on every attention projection, self- and cross-attention
    UNET = "unet"  # every weight


LORA_RANK = 4  # the attacker's adapter rank: the size of adapter people share for one concept or style
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _unlearndiff(pipe, concept: SuiteConcept, config: AttackConfig, spec: KeySpec | None) -> UnlearnDiffPrefix:
    return UnlearnDiffPrefix(pipe, config.lr or DEFAULT_LR[Attack.UNLEARNDIFF], config.tokens, config.seed)


class _Finetune:
    """The public UNet fine-tuned, on the weights ``config.weights`` names; restored bit for bit afterwards."""

    def __init__(self, pipe, concept: SuiteConcept, config: AttackConfig, spec: KeySpec | None):
        self.pipe, self.weights = pipe, FinetuneWeights(config.weights)
        self.lr = config.lr or DEFAULT_LR[Attack.FINETUNE]
        self.keys, self.options = None, None
        self.params: dict[str, torch.nn.Parameter] = {}
        self.saved: dict[str, torch.Tensor] = {}
        self.optimiser = None  # made when the attack is switched on (an adapter's weights exist only then)

    def attached(self):
        unet = self.pipe.unet

        def on():
            if self.weights == FinetuneWeights.LORA:
                _add_lora(unet, seed=0)
                self.params = {n: p for n, p in unet.named_parameters() if "lora_" in n}
            else:
                everything = self.weights == FinetuneWeights.UNET
                self.params = {n: p for n, p in unet.named_parameters() if everything or ".attn2." in n}
                self.saved = {n: p.detach().clone() for n, p in self.params.items()}
            for parameter in self.params.values():
                parameter.requires_grad_(True)
            self.optimiser = torch.optim.Adam(self.params.values(), lr=self.lr)

        def off():
            if self.weights == FinetuneWeights.LORA:
                _remove_lora(unet)
                return
            with torch.no_grad():
                for name, parameter in self.params.items():
                    parameter.copy_(self.saved[name])

        return _context(on, off, unet)

    def prompts(self, prompts):
        return prompts

    def states(self, prompts):
        return encode_prompts(self.pipe, prompts)


def _add_lora(unet, seed: int) -> None:
    """A fresh low-rank adapter on every attention projection (its up-projections start at zero, so the model is
    unchanged until it trains)."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=LORA_TARGETS, lora_dropout=0.0)
    with torch.random.fork_rng(devices=[]):  # peft draws the down-projections from torch's global generator
        torch.manual_seed(seed)
        inject_adapter_in_model(config, unet, adapter_name="attacker")


def _remove_lora(unet) -> None:
    """Every adapted layer replaced by the layer it wraps: the UNet's modules and weights as before."""
    from peft.tuners.lora import LoraLayer

    wrapped = [(name, module) for name, module in unet.named_modules() if isinstance(module, LoraLayer)]
    for name, module in wrapped:
        parent_name, _, child = name.rpartition(".")
        setattr(unet.get_submodule(parent_name) if parent_name else unet, child, module.get_base_layer())
    configs = getattr(unet, "peft_config", None)  # the adapter's record, left by peft on the model
    if isinstance(configs, dict):
        configs.pop("attacker", None)
        if not configs:
            del unet.peft_config


class _context:
    """Switch an attack on and off around its run; only the attack's own tensors get gradients meanwhile."""

    def __init__(self, on, off, unet, trainable=()):
        self.on, self.off, self.unet, self.trainable = on, off, unet, trainable

    def __enter__(self):
        self.requires_grad = {n: p.requires_grad for n, p in self.unet.named_parameters()}
        self.unet.requires_grad_(False)
        for parameter in self.trainable:
            parameter.requires_grad_(True)
        self.on()

    def __exit__(self, *exc):
        self.off()
        for name, parameter in self.unet.named_parameters():
            parameter.requires_grad_(self.requires_grad.get(name, True))
        return False
