"""The judge: a small CNN that says which shape, colour and style a Shapes world image shows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from conceptvault.world.data import LABELS, render_batch

JUDGE_DIR = Path(__file__).parent / "weights" / "judge"
WEIGHTS_FILE = "judge.safetensors"
LABELS_FILE = "labels.json"


class JudgeNet(nn.Module):
    """Four conv blocks, global pooling, one linear head per attribute."""

    def __init__(self, labels: dict[str, list[str]] = LABELS, width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        blocks = []
        for c_in, c_out in zip(chans, chans[1:]):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks)
        self.heads = nn.ModuleDict({head: nn.Linear(chans[-1], len(names)) for head, names in labels.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.features(images).mean(dim=(2, 3))
        return {head: layer(pooled) for head, layer in self.heads.items()}


class Judge:
    """A trained JudgeNet with its label names; ``predict`` takes PIL images of any size."""

    heads = tuple(LABELS)

    def __init__(self, net: JudgeNet, labels: dict[str, list[str]]):
        self.net = net.eval()
        self.labels = labels

    @torch.no_grad()
    def predict(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Class probabilities per head, each (N, classes)."""
        arrays = [np.asarray(im.convert("RGB").resize((64, 64), Image.BILINEAR), dtype=np.float32) / 255.0 for im in images]
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) * 2 - 1
        logits = self.net(batch)
        return {head: value.softmax(-1) for head, value in logits.items()}

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        state = {name: t.half().contiguous() if t.is_floating_point() else t for name, t in self.net.state_dict().items()}
        save_file(state, folder / WEIGHTS_FILE)
        (folder / LABELS_FILE).write_text(json.dumps(self.labels, indent=2) + "\n")


def load_judge(folder: Path = JUDGE_DIR) -> Judge:
    labels = json.loads((folder / LABELS_FILE).read_text())
    net = JudgeNet(labels)
    state = {name: t.float() if t.is_floating_point() else t for name, t in load_file(folder / WEIGHTS_FILE).items()}
    net.load_state_dict(state)
    return Judge(net, labels)


def _degrade(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur and noise of the kind a decoder leaves, so the judge also reads generated images."""
    if torch.rand((), generator=gen) < 0.5:
        images = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return images + 0.04 * torch.rand((), generator=gen) * torch.randn(images.shape, generator=gen)


def train_judge(steps: int = 1500, batch_size: int = 64, seed: int = 0, progress=None) -> Judge:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    net = JudgeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    for step in range(steps):
        batch = render_batch(rng, batch_size)
        logits = net(_degrade(batch.images, gen))
        loss = sum(F.cross_entropy(logits[h], batch.labels[h]) for h in LABELS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if progress:
            progress(step, {"loss": loss.item()})
    return Judge(net, LABELS)


@torch.no_grad()
def judge_accuracy(judge: Judge, count: int = 1000, seed: int = 12345) -> dict[str, float]:
    """Accuracy per head on freshly rendered held-out images (a seed never used in training)."""
    batch = render_batch(np.random.default_rng(seed), count)
    logits = judge.net(batch.images)
    return {h: (logits[h].argmax(-1) == batch.labels[h]).float().mean().item() for h in LABELS}
