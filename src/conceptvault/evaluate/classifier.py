"""The ImageNet judge for the objects suite: an image classifier loaded through transformers.

Default ``microsoft/resnet-50``. Preprocessing follows that model's card: resize the shortest side to
256 (224 / 0.875, bicubic), crop the central 224 x 224, normalise with the ImageNet mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForImageClassification

from conceptvault.evaluate.hub import default_device, load_pretrained
from conceptvault.evaluate.judgement import ClassifierJudge
from conceptvault.evaluate.preprocess import IMAGENET_MEAN, IMAGENET_STD, to_pixel_batch


class ImageNetJudge(ClassifierJudge):
    DEFAULT_MODEL = "microsoft/resnet-50"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        top_k: Sequence[int] = (1, 5),
        device: str | torch.device | None = None,
        image_size: int = 224,
        crop_fraction: float = 0.875,
        cache_dir: str | None = None,
    ) -> None:
        self.device = default_device(device)
        self.network = load_pretrained(AutoModelForImageClassification, model, "ImageNet judge", cache_dir=cache_dir)
        self.network.to(self.device).eval()
        self.image_size = image_size
        self.crop_fraction = crop_fraction
        id2label = self.network.config.id2label
        labels = [str(id2label[i]) for i in range(len(id2label))]
        super().__init__("imagenet", labels, top_k, self.probabilities)

    @torch.no_grad()
    def probabilities(self, images: list[Image.Image]) -> np.ndarray:
        pixels = to_pixel_batch(images, self.image_size, IMAGENET_MEAN, IMAGENET_STD, self.crop_fraction)
        logits = self.network(pixel_values=pixels.to(self.device)).logits
        return logits.float().softmax(dim=-1).cpu().numpy()
