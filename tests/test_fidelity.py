"""Image fidelity figures: PSNR, SSIM and the Fréchet distance of feature sets."""

import numpy as np
import pytest
from PIL import Image

from conceptvault.evaluate.fidelity import frechet_distance, psnr, ssim


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


def test_identical_images_score_best_and_changes_score_lower():
    a = picture(0)
    assert psnr(a, a) == 100.0 and ssim(a, a) == pytest.approx(1.0)
    changed = np.asarray(a).copy()
    changed[:8] = 255 - changed[:8]
    b = Image.fromarray(changed)
    assert psnr(a, b) < 20 and ssim(a, b) < 0.9
    assert psnr(a, picture(1)) < psnr(a, b) and ssim(a, picture(1)) < ssim(a, b)


def test_frechet_distance_is_zero_for_one_set_and_grows_with_a_shift():
    features = np.random.default_rng(0).normal(size=(300, 8))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)
    other = np.random.default_rng(1).normal(size=(300, 8))
    noise_floor = frechet_distance(features, other)
    assert noise_floor < 0.5
    assert frechet_distance(features, other + 1.0) > noise_floor + 7  # |shift|^2 = 8
    assert frechet_distance(features, other * 2) > noise_floor + 5  # a wider spread
    with pytest.raises(ValueError, match="equal width"):
        frechet_distance(features, other[:, :4])
