"""CLIP score of an image against its own prompt, for the art-style suite.

Score = 100 x max(cosine(image embedding, text embedding), 0), with a CLIP model loaded through
transformers (default ``openai/clip-vit-base-patch32``); images are resized on the shortest side and
centre-cropped to the model's input size, as CLIP was trained.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from transformers import CLIPModel, CLIPTokenizer

from conceptvault.evaluate.hub import default_device, load_pretrained
from conceptvault.evaluate.judgement import Judgement
from conceptvault.evaluate.preprocess import CLIP_MEAN, CLIP_STD, to_pixel_batch


class ClipScoreJudge:
    """A score judge with one measure, ``clip-score``; concept labels are not used."""

    DEFAULT_MODEL = "openai/clip-vit-base-patch32"
    name = "clip"
    kind = "score"
    measures = ["clip-score"]

    def __init__(
        self, model: str = DEFAULT_MODEL, *, device: str | torch.device | None = None, cache_dir: str | None = None
    ):
        self.device = default_device(device)
        self.network = load_pretrained(CLIPModel, model, "CLIP model", cache_dir=cache_dir).to(self.device).eval()
        self.tokenizer = load_pretrained(CLIPTokenizer, model, "CLIP tokenizer", cache_dir=cache_dir)
        self.image_size = int(self.network.config.vision_config.image_size)
        self.max_tokens = int(self.network.config.text_config.max_position_embeddings)

    def check_labels(self, labels: Sequence[str]) -> None:
        return None

    @torch.no_grad()
    def scores(self, images: list[Image.Image], prompts: list[str]) -> np.ndarray:
        pixels = to_pixel_batch(images, self.image_size, CLIP_MEAN, CLIP_STD).to(self.device)
        tokens = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        output = self.network(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels
        )
        cosine = (output.image_embeds * output.text_embeds).sum(dim=-1)
        return (100 * cosine.clamp(min=0)).float().cpu().numpy()

    def judge(self, images: list[Image.Image], prompts: list[str], labels: Sequence[str]) -> Judgement:
        scores = self.scores(images, prompts)
        return Judgement(scores={"clip-score": scores}, notes=[f"CLIP {s:.1f}" for s in scores])
