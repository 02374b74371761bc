"""The judge: a small CNN that says which shape, colour and style a Shapes world image shows, or that it
shows no clear shape at all.

The shape head has one class more than there are shapes, ``REJECT``, trained on images of no clear shape
(``world.negatives``). Every head reports ``REJECT`` with the probability the shape head gives it, so an
image the judge rejects is not any shape, colour or style: it counts against PSR and RSR, and for ESR.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from conceptvault.world.data import LABELS, render_batch
from conceptvault.world.negatives import render_negative

REJECT = "none"  # the judge's answer for an image that shows no clear shape
NET_LABELS = {head: names + [REJECT] if head == "shape" else names for head, names in LABELS.items()}
# The world turns shapes by at most 0.5 rad, but the model sometimes turns a square further, and a square
# turned by any angle is still a square (the diamond is a tall rhombus): the judge learns squares at every turn.
JUDGE_TURNS = {"square": math.pi / 4}
JUDGE_DIR = Path(__file__).parent / "weights" / "judge"
WEIGHTS_FILE = "judge.safetensors"
LABELS_FILE = "labels.json"


class JudgeNet(nn.Module):
    """Four conv blocks, global pooling, one linear head per attribute."""

    def __init__(self, labels: dict[str, list[str]] = NET_LABELS, width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        blocks = []
        for c_in, c_out in zip(chans, chans[1:], strict=False):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks)
        self.heads = nn.ModuleDict({head: nn.Linear(chans[-1], len(names)) for head, names in labels.items()})

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate features (N, 4 * width): what the heads read, and what the world FID compares."""
        return self.features(images).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.embed(images)
        return {head: layer(pooled) for head, layer in self.heads.items()}


class Judge:
    """A trained JudgeNet with its label names; ``predict`` takes PIL images of any size."""

    heads = tuple(LABELS)

    def __init__(self, net: JudgeNet, net_labels: dict[str, list[str]] = NET_LABELS):
        self.net = net.eval()
        self.net_labels = net_labels
        self.labels = {head: [n for n in names if n != REJECT] + [REJECT] for head, names in net_labels.items()}

    @torch.no_grad()
    def predict(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Class probabilities per head, each (N, classes), the last class ``REJECT``."""
        return self.probabilities(self.net(to_batch(images)))

    @torch.no_grad()
    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """Penultimate features of PIL images, (N, features), for Fréchet distances between image sets."""
        return self.net.embed(to_batch(images)).double().numpy()

    @staticmethod
    def probabilities(logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per head: P(label) = P(some shape) * P(label | some shape), then P(REJECT) last."""
        shape = logits["shape"].softmax(-1)
        reject = shape[:, -1:]
        probs = {"shape": shape}
        for head, value in logits.items():
            if head != "shape":
                probs[head] = torch.cat([(1 - reject) * value.softmax(-1), reject], dim=-1)
        return probs

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            name: t.half().contiguous() if t.is_floating_point() else t for name, t in self.net.state_dict().items()
        }
        save_file(state, folder / WEIGHTS_FILE)
        (folder / LABELS_FILE).write_text(json.dumps(self.net_labels, indent=2) + "\n")


def to_batch(images: list[Image.Image]) -> torch.Tensor:
    """PIL images as the judge reads them: (N, 3, 64, 64) in [-1, 1]."""
    arrays = [
        np.asarray(im.convert("RGB").resize((64, 64), Image.BILINEAR), dtype=np.float32) / 255.0 for im in images
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) * 2 - 1


def load_judge(folder: Path = JUDGE_DIR) -> Judge:
    labels = json.loads((folder / LABELS_FILE).read_text())
    net = JudgeNet(labels)
    state = {name: t.float() if t.is_floating_point() else t for name, t in load_file(folder / WEIGHTS_FILE).items()}
    net.load_state_dict(state)
    return Judge(net, labels)


def _degrade(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, resampling and noise of the kind a decoder leaves, so the judge also reads generated images."""
    roll = torch.rand((), generator=gen)
    if roll < 0.35:
        images = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    elif roll < 0.6:
        size = images.shape[-1]
        small = F.interpolate(images, scale_factor=0.5, mode="bilinear", antialias=True)
        images = F.interpolate(small, size=(size, size), mode="bilinear")
    return images + 0.04 * torch.rand((), generator=gen) * torch.randn(images.shape, generator=gen)


@torch.no_grad()
def round_trip(vae, images: torch.Tensor) -> torch.Tensor:
    """Images encoded and decoded by a VAE (the posterior mean), clamped to [-1, 1]."""
    latents = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mean
    return vae.decode(latents).sample.clamp(-1, 1).to(images)


def negative_batch(rng: np.random.Generator, size: int) -> torch.Tensor:
    """``size`` images of no clear shape, (B, 3, 64, 64) in [-1, 1]."""
    return torch.from_numpy(np.stack([render_negative(rng) for _ in range(size)])).permute(0, 3, 1, 2) * 2 - 1


def train_judge(steps: int = 3000, batch_size: int = 64, seed: int = 0, progress=None) -> Judge:
    """Three quarters of each batch are renders with their labels (squares at every turn), one quarter
    negatives labelled ``REJECT``; blur, resampling and noise stand in for what a decoder does to them.

    Passing every other batch through the model's VAE instead made a judge that reads decoded renders a
    little better but names more negatives a shape (most of them two overlapping shapes), so the judge
    learns from renders alone (the figures: docs/builtin-model.md)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    net = JudgeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    reject = NET_LABELS["shape"].index(REJECT)
    negatives = batch_size // 4
    for step in range(steps):
        batch = render_batch(rng, batch_size - negatives, turns=JUDGE_TURNS)
        images = torch.cat([batch.images, negative_batch(rng, negatives)])
        logits = net(_degrade(images, gen))
        shape_labels = torch.cat([batch.labels["shape"], torch.full((negatives,), reject)])
        loss = F.cross_entropy(logits["shape"], shape_labels)
        loss = loss + sum(
            F.cross_entropy(logits[h][: len(batch.captions)], batch.labels[h]) for h in LABELS if h != "shape"
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress:
            progress(step, steps, {"judge": loss.item()})
    return Judge(net)


@torch.no_grad()
def judge_accuracy(
    judge: Judge, count: int = 1000, seed: int = 12345, vae=None, turns: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Accuracy per head on freshly rendered held-out images (a seed never used in training; ``turns`` as in
    ``sample_scene``, by default the world's), and the false-accept rate: the share of held-out images of
    no clear shape that the judge names a shape. With ``vae``, every image is first passed through it
    (what the model's decoder makes of it)."""
    batch = render_batch(np.random.default_rng(seed), count, turns=turns)
    negatives = negative_batch(np.random.default_rng(seed + 1), count)
    if vae is not None:
        batch.images = torch.cat([round_trip(vae, part) for part in batch.images.split(100)])
        negatives = torch.cat([round_trip(vae, part) for part in negatives.split(100)])
    probs = judge.probabilities(judge.net(batch.images))
    report = {h: (probs[h].argmax(-1) == batch.labels[h]).float().mean().item() for h in LABELS}
    rejected = judge.probabilities(judge.net(negatives))["shape"].argmax(-1) == len(LABELS["shape"])
    report["false_accept"] = (~rejected).float().mean().item()
    return report
