"""Image preprocessing for the judges' networks, with PIL and numpy only (no torchvision)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_shortest_side(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    target = (max(size, round(width * scale)), max(size, round(height * scale)))
    return image.resize(target, Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_pixel_batch(
    images: Sequence[Image.Image],
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_fraction: float = 1.0,
) -> torch.Tensor:
    """(N, 3, size, size) float tensor: resize the shortest side to ``size / crop_fraction``, crop the centre,
    normalise."""
    resize_to = int(round(size / crop_fraction))
    arrays = []
    for image in images:
        square = center_crop(resize_shortest_side(image.convert("RGB"), resize_to), size)
        arrays.append(np.asarray(square, dtype=np.float32) / 255.0)
    batch = (np.stack(arrays) - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
