"""Train the built-in model from scratch: the judge, the VAE (then its decoder alone), then text encoder and UNet.

Recipe for a small model on a small budget: v-prediction on a cosine schedule with min-SNR-5 loss
weighting, AdamW, an exponential moving average of the weights, and 10 % empty captions so that
classifier-free guidance works. Runs on a GPU when there is one.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from conceptvault.world.data import render_batch
from conceptvault.world.model import assemble_pipeline, build_scheduler, build_text_encoder, build_unet, build_vae

Progress = Callable[[int, dict], None]


@dataclass
class WorldTrainConfig:
    judge_steps: int = 2500
    vae_steps: int = 700
    decoder_steps: int = 1500
    denoiser_steps: int = 5000
    batch_size: int = 32
    lr: float = 1e-3
    ema: float = 0.999
    caption_dropout: float = 0.1
    min_snr: float = 5.0
    seed: int = 0


def train_vae(steps: int, batch_size: int, seed: int, device: torch.device, progress: Progress | None = None):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    vae = build_vae().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    for step in range(steps):
        images = render_batch(rng, batch_size).images.to(device)
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(recon, images) + F.mse_loss(recon, images) + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress:
            progress(step, {"vae": loss.item()})
    vae.eval().requires_grad_(False)
    with torch.no_grad():  # scale latents to unit variance, as Stable Diffusion's scaling_factor does
        images = render_batch(np.random.default_rng(seed + 2), 256).images.to(device)
        std = vae.encode(images).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    return vae


def train_decoder(vae, steps: int, batch_size: int, seed: int, device: torch.device, progress: Progress | None = None):
    """Sharpen the decoder with the encoder frozen: the latent space, and so the denoiser, is unchanged."""
    rng = np.random.default_rng(seed + 4)
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-4, total_steps=steps, pct_start=0.05)
    vae.train()
    for step in range(steps):
        images = render_batch(rng, batch_size).images.to(device)
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample()
        recon = vae.decode(latents).sample
        loss = F.l1_loss(recon, images) + F.mse_loss(recon, images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress:
            progress(step, {"decoder": loss.item()})
    return vae.eval().requires_grad_(False)


def _tokenize(tokenizer, captions: list[str], device) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids.to(device)


def train_denoiser(vae, tokenizer, config: WorldTrainConfig, device: torch.device, progress: Progress | None = None,
                   checkpoint: Callable[[int, object, object], None] | None = None, checkpoint_every: int = 1000):
    """Train text encoder and UNet jointly; returns their EMA copies."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed + 3)
    unet, text_encoder = build_unet().to(device), build_text_encoder().to(device)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-2)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200))
    scheduler = build_scheduler()
    alphas = scheduler.alphas_cumprod.to(device)
    snr = alphas / (1 - alphas)
    for step in range(config.denoiser_steps):
        batch = render_batch(rng, config.batch_size)
        captions = ["" if rng.random() < config.caption_dropout else c for c in batch.captions]
        with torch.no_grad():
            latents = vae.encode(batch.images.to(device)).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=device)
        noisy = scheduler.add_noise(latents, noise, t)
        target = scheduler.get_velocity(latents, noise, t)
        pred = unet(noisy, t, text_encoder(_tokenize(tokenizer, captions, device)).last_hidden_state).sample
        weight = snr[t].clamp(max=config.min_snr) / (snr[t] + 1)  # min-SNR weighting for v-prediction
        loss = (weight * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        warmup.step()
        with torch.no_grad():
            decay = min(config.ema, (1 + step) / (10 + step))
            for ema, live in ((ema_unet, unet), (ema_text, text_encoder)):
                for p_ema, p in zip(ema.parameters(), live.parameters()):
                    p_ema.lerp_(p, 1 - decay)
        if progress:
            progress(step, {"denoiser": loss.item()})
        if checkpoint and (step + 1) % checkpoint_every == 0:
            checkpoint(step + 1, ema_text, ema_unet)
    return ema_text, ema_unet


def save_pipeline(folder: Path, tokenizer_dir: Path, text_encoder, vae, unet) -> None:
    """Write the model as a diffusers pipeline folder in fp16 safetensors."""
    pipe = assemble_pipeline(tokenizer_dir, copy.deepcopy(text_encoder), copy.deepcopy(vae), copy.deepcopy(unet))
    pipe.to("cpu", torch.float16).save_pretrained(folder, safe_serialization=True)
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


def train_world(out: Path, config: WorldTrainConfig, tokenizer_dir: Path, log: Callable[[str], None] = print,
                progress: Progress | None = None) -> dict:
    """Train judge, VAE and denoiser; write ``out/judge`` and ``out/model``; return timings and accuracies."""
    from conceptvault.world.judge import judge_accuracy, train_judge
    from transformers import CLIPTokenizer

    device = default_device()
    report: dict = {"device": str(device), "config": asdict(config)}
    judge, report["judge_seconds"] = timed(train_judge, config.judge_steps, 2 * config.batch_size, config.seed, progress)
    report["judge_accuracy"] = judge_accuracy(judge)
    _replace_folder(out / "judge", judge.save)
    log(f"judge: {report['judge_accuracy']} in {report['judge_seconds']:.0f}s")
    vae, report["vae_seconds"] = timed(train_vae, config.vae_steps, config.batch_size, config.seed, device, progress)
    log(f"vae: {report['vae_seconds']:.0f}s, scaling_factor {vae.config.scaling_factor:.3f}")
    vae, report["decoder_seconds"] = timed(train_decoder, vae, config.decoder_steps, config.batch_size // 2, config.seed,
                                           device, progress)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)

    def checkpoint(step: int, text_encoder, unet) -> None:
        _replace_folder(out / "model", lambda f: save_pipeline(f, tokenizer_dir, text_encoder, vae, unet))
        log(f"checkpoint at denoiser step {step}")

    start = time.perf_counter()
    text_encoder, unet = train_denoiser(vae, tokenizer, config, device, progress, checkpoint)
    report["denoiser_seconds"] = time.perf_counter() - start
    checkpoint(config.denoiser_steps, text_encoder, unet)
    return report
