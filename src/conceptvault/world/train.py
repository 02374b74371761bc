"""Train the built-in model: the VAE (then its decoder alone), the judge, then text encoder and UNet.

Recipe for a small model on a small budget: v-prediction on a cosine schedule with min-SNR-5 loss
weighting, AdamW with a cosine decay of the learning rate over the last part of the run, an
exponential moving average of the weights, and 10 % empty captions so that classifier-free guidance
works. The denoiser draws its images from a pool of renders encoded once, which saves the VAE's encoder
pass at every step. Runs on a GPU when there is one.

A run is resumable: every stage writes its result into the output folder, the denoiser also its whole
training state every ``checkpoint_every`` steps, and a second call with the same folder skips the
finished stages and continues the denoiser where it stopped. ``init_from`` continues an existing model
(its VAE, text encoder and UNet) instead of starting from scratch.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from conceptvault.errors import ConceptVaultError
from conceptvault.files import atomic_path
from conceptvault.world.captions import training_caption
from conceptvault.world.data import LABELS, render_batch
from conceptvault.world.model import assemble_pipeline, build_scheduler, build_text_encoder, build_unet, build_vae
from conceptvault.world.vocabulary import SHAPES

Progress = Callable[[int, int, dict], None]  # (step, total steps, latest losses)

STATE_FILE = "denoiser-state.pt"
POOL_FILE = "latent-pool.pt"
CONFIG_FILE = "train-config.json"
REPORT_FILE = "train-report.json"


@dataclass
class WorldTrainConfig:
    judge_steps: int = 3000
    vae_steps: int = 1500  # the shipped model's recipe (about 2.7 hours on 2 CPU cores in all)
    decoder_steps: int = 1000
    denoiser_steps: int = 6500
    batch_size: int = 32
    lr: float = 1e-3
    lr_decay_share: float = 0.25  # the last quarter of the denoiser's steps decays the lr to 5 % (cosine)
    ema: float = 0.999
    caption_dropout: float = 0.1
    min_snr: float = 5.0
    latent_pool: int = 60_000  # renders encoded once, drawn from by the denoiser
    held_out: int = 1000  # held-out renders (and negatives) for the judge's and the VAE's figures
    init_from: str | None = None  # a model folder to continue from, instead of training VAE and denoiser anew
    vae_from: str | None = None  # a model folder whose VAE is used as it is (the denoiser still starts anew)
    without: list[str] = field(default_factory=list)  # shapes left out of the world: the model never sees them
    seed: int = 0

    @property
    def shapes(self) -> list[str]:
        return [s for s in SHAPES if s not in self.without]


def train_vae(
    steps: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    progress: Progress | None = None,
    shapes: list[str] | None = None,
):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    vae = build_vae().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        images = render_batch(rng, batch_size, shapes=shapes).images.to(device)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(recon, images) + F.mse_loss(recon, images) + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress:
            progress(step, steps, {"vae": loss.item()})
    vae.eval().requires_grad_(False)
    with torch.no_grad():  # scale latents to unit variance, as Stable Diffusion's scaling_factor does
        images = render_batch(np.random.default_rng(seed + 2), 256).images.to(device)
        std = vae.encode(images).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    return vae


def train_decoder(
    vae,
    steps: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    progress: Progress | None = None,
    shapes: list[str] | None = None,
):
    """Sharpen the decoder with the encoder frozen: the latent space, and so the denoiser, is unchanged."""
    rng = np.random.default_rng(seed + 4)
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-4, total_steps=max(steps, 1), pct_start=0.05)
    vae.train()
    for step in range(steps):
        images = render_batch(rng, batch_size, shapes=shapes).images.to(device)
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample()
        recon = vae.decode(latents).sample
        loss = F.l1_loss(recon, images) + F.mse_loss(recon, images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress:
            progress(step, steps, {"decoder": loss.item()})
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def vae_psnr(vae, count: int = 400, seed: int = 999) -> float:
    """Mean reconstruction PSNR (dB, images in [0, 1]) of the VAE on held-out renders."""
    batch = render_batch(np.random.default_rng(seed), count).images.to(vae.device)
    psnr = []
    for chunk in batch.split(100):
        recon = vae.decode(vae.encode(chunk).latent_dist.mean).sample.clamp(-1, 1)
        mse = ((recon - chunk) / 2).pow(2).mean(dim=(1, 2, 3))
        psnr.append(10 * torch.log10(1 / mse))
    return torch.cat(psnr).mean().item()


class LatentPool:
    """Renders encoded once by the VAE: the posterior's mean and std in fp16, with each scene's labels.

    ``draw`` samples latents from the stored posteriors and writes fresh captions (synonyms and
    omissions drawn anew), so the same scene is seen under many phrasings.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, labels: dict[str, torch.Tensor]):
        self.mean, self.std, self.labels = mean, std, labels

    @classmethod
    @torch.no_grad()
    def build(
        cls, vae, size: int, seed: int, progress: Progress | None = None, chunk: int = 256, shapes=None
    ) -> LatentPool:
        """Encode ``size`` fresh renders; latents are scaled by the VAE's ``scaling_factor``, as the UNet sees them."""
        rng = np.random.default_rng(seed + 5)
        scale = vae.config.scaling_factor
        means, stds, labels = [], [], {head: [] for head in LABELS}
        for start in range(0, size, chunk):
            batch = render_batch(rng, min(chunk, size - start), shapes=shapes)
            posterior = vae.encode(batch.images.to(vae.device)).latent_dist
            means.append((posterior.mean * scale).half().cpu())
            stds.append((posterior.std * scale).half().cpu())
            for head in LABELS:
                labels[head].append(batch.labels[head])
            if progress:
                progress(start + chunk - 1, size, {})
        return cls(torch.cat(means), torch.cat(stds), {head: torch.cat(v) for head, v in labels.items()})

    def save(self, path: Path) -> None:
        _atomic_save({"mean": self.mean, "std": self.std, "labels": self.labels}, path)

    @classmethod
    def load(cls, path: Path) -> LatentPool:
        state = torch.load(path, weights_only=True)
        return cls(state["mean"], state["std"], state["labels"])

    def __len__(self) -> int:
        return len(self.mean)

    def draw(self, rng: np.random.Generator, size: int, device) -> tuple[torch.Tensor, list[str]]:
        index = rng.integers(0, len(self), size)
        mean, std = self.mean[index].float(), self.std[index].float()
        noise = torch.from_numpy(rng.standard_normal(mean.shape, dtype=np.float32))
        names = {head: [LABELS[head][i] for i in self.labels[head][index].tolist()] for head in LABELS}
        captions = [
            training_caption(s, c, st, rng)
            for s, c, st in zip(names["shape"], names["colour"], names["style"], strict=False)
        ]
        return (mean + std * noise).to(device), captions


def _tokenize(tokenizer, captions: list[str], device) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)


def lr_factor(step: int, total: int, decay_share: float, warmup: int = 200) -> float:
    """Linear warm-up, constant, then a cosine decay to 5 % over the last ``decay_share`` of the steps."""
    decay_start = total * (1 - decay_share)
    if step >= decay_start and decay_share > 0:
        progress = (step - decay_start) / (total - decay_start)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return min(1.0, (step + 1) / warmup)


class DenoiserRun:
    """The text encoder and UNet being trained, their EMA copies and optimiser, and where the run stands."""

    def __init__(self, config: WorldTrainConfig, device: torch.device, text_encoder=None, unet=None):
        torch.manual_seed(config.seed)
        self.config = config
        self.unet = (unet or build_unet()).to(device).train().requires_grad_(True)
        self.text_encoder = (text_encoder or build_text_encoder()).to(device).train().requires_grad_(True)
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        self.ema_text = copy.deepcopy(self.text_encoder).requires_grad_(False)
        self.params = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=1e-2)
        self.rng = np.random.default_rng(config.seed + 3)
        self.step = 0
        self.seconds = 0.0  # training time so far, over every session of the run

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "seconds": self.seconds,
            "unet": self.unet.state_dict(),
            "text_encoder": self.text_encoder.state_dict(),
            "ema_unet": self.ema_unet.state_dict(),
            "ema_text": self.ema_text.state_dict(),
            "opt": self.opt.state_dict(),
            "rng": json.dumps(self.rng.bit_generator.state),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step, self.seconds = state["step"], state["seconds"]
        for name in ("unet", "text_encoder", "ema_unet", "ema_text", "opt"):
            getattr(self, name).load_state_dict(state[name])
        self.rng.bit_generator.state = json.loads(state["rng"])
        torch.set_rng_state(state["torch_rng"])


def denoiser_step(run: DenoiserRun, pool: LatentPool, tokenizer, scheduler, snr: torch.Tensor) -> float:
    """One training step of text encoder and UNet on a batch drawn from the pool; returns the loss."""
    config, device = run.config, run.unet.device
    latents, captions = pool.draw(run.rng, config.batch_size, device)
    captions = ["" if run.rng.random() < config.caption_dropout else c for c in captions]
    noise = torch.randn_like(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=device)
    noisy = scheduler.add_noise(latents, noise, t)
    target = scheduler.get_velocity(latents, noise, t)
    pred = run.unet(noisy, t, run.text_encoder(_tokenize(tokenizer, captions, device)).last_hidden_state).sample
    weight = snr[t].clamp(max=config.min_snr) / (snr[t] + 1)  # min-SNR weighting for v-prediction
    loss = (weight * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()
    for group in run.opt.param_groups:
        group["lr"] = config.lr * lr_factor(run.step, config.denoiser_steps, config.lr_decay_share)
    run.opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.params, 1.0)
    run.opt.step()
    with torch.no_grad():
        decay = min(config.ema, (1 + run.step) / (10 + run.step))
        for ema, live in ((run.ema_unet, run.unet), (run.ema_text, run.text_encoder)):
            for p_ema, p in zip(ema.parameters(), live.parameters(), strict=False):
                p_ema.lerp_(p, 1 - decay)
    run.step += 1
    return loss.item()


def train_denoiser(
    run: DenoiserRun,
    pool: LatentPool,
    tokenizer,
    progress: Progress | None = None,
    checkpoint: Callable[[DenoiserRun], None] | None = None,
    checkpoint_every: int = 500,
) -> DenoiserRun:
    """Train text encoder and UNet from ``run.step`` to the configured number of steps."""
    scheduler = build_scheduler()
    alphas = scheduler.alphas_cumprod.to(run.unet.device)
    snr = alphas / (1 - alphas)
    total = run.config.denoiser_steps
    while run.step < total:
        start = time.perf_counter()
        loss = denoiser_step(run, pool, tokenizer, scheduler, snr)
        run.seconds += time.perf_counter() - start
        if progress:
            progress(run.step - 1, total, {"denoiser": loss})
        if checkpoint and (run.step % checkpoint_every == 0 or run.step == total):
            checkpoint(run)
    return run


def save_pipeline(folder: Path, tokenizer_dir: Path, text_encoder, vae, unet) -> None:
    """Write the model as a diffusers pipeline folder in fp16 safetensors."""
    fp16 = [copy.deepcopy(module).to("cpu", torch.float16) for module in (text_encoder, vae, unet)]
    assemble_pipeline(tokenizer_dir, *fp16).save_pretrained(folder, safe_serialization=True)
    # the shipped tokenizer files (vocab.json + merges.txt) are smaller than the tokenizer.json written above
    shutil.rmtree(folder / "tokenizer")
    shutil.copytree(tokenizer_dir, folder / "tokenizer")
    # weights are stored in fp16 for size; ask loaders to compute in fp32, as diffusers does by default
    config_file = folder / "text_encoder" / "config.json"
    config = json.loads(config_file.read_text())
    config["dtype"] = "float32"
    config_file.write_text(json.dumps(config, indent=2) + "\n")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def _replace_folder(folder: Path, write: Callable[[Path], None]) -> None:
    """Write into a temporary sibling, then swap it in, so a folder is never half-written."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    write(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path, mode=0o644) as temporary:
        torch.save(obj, temporary)


def _check_same_run(out: Path, config: WorldTrainConfig) -> None:
    """Refuse to continue a folder trained with other settings (the number of denoiser steps may grow)."""
    wanted = {k: v for k, v in asdict(config).items() if k != "denoiser_steps"}
    file = out / CONFIG_FILE
    if file.exists():
        defaults = asdict(WorldTrainConfig())  # a field added since the run started reads as its default
        before = {k: v for k, v in {**defaults, **json.loads(file.read_text())}.items() if k != "denoiser_steps"}
        changed = sorted(k for k in wanted if before.get(k) != wanted[k])
        if changed:
            raise ConceptVaultError(
                f"{out} holds a run with other settings ({', '.join(changed)}); continue it with the same "
                f"settings or train into a new folder."
            )
    out.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(asdict(config), indent=2, sort_keys=True) + "\n")


def _load_init(folder: str, device: torch.device):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    path = Path(folder)
    load = dict(torch_dtype=torch.float32)
    return (
        AutoencoderKL.from_pretrained(path, subfolder="vae", **load).to(device),
        CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **load),
        UNet2DConditionModel.from_pretrained(path, subfolder="unet", **load),
    )


def train_world(
    out: Path,
    config: WorldTrainConfig,
    tokenizer_dir: Path,
    log: Callable[[str], None] = print,
    progress: Progress | None = None,
    checkpoint_every: int = 500,
) -> dict:
    """Train (or continue training) VAE, judge and denoiser; write ``out/judge`` and ``out/model`` (no
    model with 0 denoiser steps); return timings and figures, also kept in ``out/train-report.json``."""
    from transformers import CLIPTokenizer

    from conceptvault.world.judge import judge_accuracy, train_judge

    for option, folder in (("--init-from", config.init_from), ("--vae-from", config.vae_from)):
        if folder and not (Path(folder) / "model_index.json").is_file():  # before anything is written
            raise ConceptVaultError(f"{option} {folder} is not a diffusers pipeline folder (no model_index.json).")
    _check_same_run(out, config)
    device = default_device()
    report_file = out / REPORT_FILE
    report: dict = json.loads(report_file.read_text()) if report_file.exists() else {}
    report.update(device=str(device), config=asdict(config))

    def save_report() -> None:
        report_file.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")

    vae, text_encoder, unet = _load_init(config.init_from, device) if config.init_from else (None, None, None)
    if config.vae_from:
        vae = _load_init(config.vae_from, device)[0]
    if (out / "vae").exists():
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(out / "vae").to(device).eval()
    else:
        if vae is None:
            vae, report["vae_seconds"] = timed(
                train_vae, config.vae_steps, config.batch_size, config.seed, device, progress, config.shapes
            )
        report["vae_psnr_before_decoder"] = vae_psnr(vae, count=config.held_out)
        vae, report["decoder_seconds"] = timed(
            train_decoder,
            vae,
            config.decoder_steps,
            config.batch_size // 2,
            config.seed,
            device,
            progress,
            config.shapes,
        )
        report["vae_psnr"] = vae_psnr(vae, count=config.held_out)
        _replace_folder(out / "vae", vae.save_pretrained)
        save_report()
        log(f"vae: reconstruction PSNR {report['vae_psnr_before_decoder']:.2f} -> {report['vae_psnr']:.2f} dB")

    if config.judge_steps and not (out / "judge").exists():  # after the VAE: its figures also through the VAE
        judge, report["judge_seconds"] = timed(
            train_judge, config.judge_steps, 2 * config.batch_size, config.seed, progress
        )
        report["judge_accuracy"] = judge_accuracy(judge, count=config.held_out)
        report["judge_accuracy_through_vae"] = judge_accuracy(judge, count=config.held_out, vae=vae)
        _replace_folder(out / "judge", judge.save)
        save_report()
        log(f"judge: {report['judge_accuracy']} in {report['judge_seconds']:.0f}s")
    if not config.denoiser_steps:  # VAE and judge only, e.g. a new judge for a model's VAE
        return report

    if (out / POOL_FILE).exists():
        pool = LatentPool.load(out / POOL_FILE)
    else:
        pool, report["pool_seconds"] = timed(
            LatentPool.build, vae, config.latent_pool, config.seed, progress, shapes=config.shapes
        )
        pool.save(out / POOL_FILE)
    run = DenoiserRun(config, device, text_encoder, unet)
    if (out / STATE_FILE).exists():
        run.load_state_dict(torch.load(out / STATE_FILE, weights_only=False))
        log(f"continuing the denoiser at step {run.step} of {config.denoiser_steps}")
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)

    def checkpoint(run: DenoiserRun) -> None:
        _atomic_save(run.state_dict(), out / STATE_FILE)
        _replace_folder(out / "model", lambda f: save_pipeline(f, tokenizer_dir, run.ema_text, vae, run.ema_unet))
        report["denoiser_steps_done"], report["denoiser_seconds"] = run.step, run.seconds
        save_report()
        log(f"checkpoint at denoiser step {run.step}")

    train_denoiser(run, pool, tokenizer, progress, checkpoint, checkpoint_every)
    if not (out / "model").exists():
        checkpoint(run)
    return report
