from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conceptvault.backbone import load_pipeline
from conceptvault.errors import ConceptVaultError
from conceptvault.generate import generate_images, image_grid
from conceptvault.key import Key, Placement, attach_keys


@pytest.fixture(scope="module")
def keyed_pipe(sd1_path):
    pipe = load_pipeline(str(sd1_path), device="cpu")
    g = torch.Generator().manual_seed(0)
    keys = {name: Key(3, 768, init=torch.randn(3, 768, generator=g) * 3) for name in ("star", "heart")}
    attach_keys(pipe.unet, keys, Placement.ALL)
    return pipe


def pixels(images) -> list[np.ndarray]:
    return [np.asarray(image) for image in images]


def test_one_image_per_prompt_and_seed_deterministically(keyed_pipe):
    prompts, seeds = ["a star", "a star", "a heart"], [0, 1, 0]
    first = generate_images(keyed_pipe, prompts, seeds, steps=2, batch_size=2, progress=False)
    again = generate_images(keyed_pipe, prompts, seeds, steps=2, batch_size=2, progress=False)
    assert len(first) == 3 and all(image.size == (32, 32) for image in first)
    assert all((a == b).all() for a, b in zip(pixels(first), pixels(again), strict=True))
    assert not (pixels(first)[0] == pixels(first)[1]).all()


def test_keys_switch_on_one_or_several(keyed_pipe):
    def run(keys):
        return pixels(generate_images(keyed_pipe, ["a star"], [0], keys=keys, steps=2, progress=False))[0]

    plain, star, both = run(None), run(["star"]), run(["star", "heart"])
    assert not (plain == star).all() and not (star == both).all()
    with pytest.raises(ConceptVaultError, match="no key named 'moon' is attached.*'star', 'heart'"):
        run(["moon"])


def test_inputs_are_checked(keyed_pipe):
    with pytest.raises(ValueError, match="one seed per prompt"):
        generate_images(keyed_pipe, ["a", "b"], [0], progress=False)


def test_image_grid_lays_out_and_labels():
    images = [Image.new("RGB", (32, 32), colour) for colour in ("red", "green", "blue")]
    grid = image_grid(images, rows=2, cols=2, labels=["a", "b", "c"])
    assert grid.size == (2 * 128, 2 * (128 + 14))
    assert grid.getpixel((10, 10)) == (255, 0, 0) and grid.getpixel((138, 10)) == (0, 128, 0)
    assert image_grid(images, 1, 3, min_size=0).size == (96, 32)
    with pytest.raises(ValueError, match="cannot hold 3 images"):
        image_grid(images, 1, 2)
