"""How close images are: per pair (PSNR, SSIM) and as distributions (Fréchet distance of features).

The key holder must get the original model's images back, not just images with the same label: PSNR
and SSIM compare the key holder's image with the original model's image of the same prompt and seed.
The Fréchet distance compares two sets of images through a network's features (the built-in world
uses its judge's penultimate layer, a "world FID"), so blur and artefacts show even where labels agree.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_SSIM_WINDOW = 7
_SSIM_C1, _SSIM_C2 = 0.01**2, 0.03**2


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def psnr(a: Image.Image, b: Image.Image, cap: float = 100.0) -> float:
    """Peak signal-to-noise ratio in dB of two same-size images (identical images give ``cap``)."""
    mse = float(np.mean((_array(a) - _array(b)) ** 2))
    return cap if mse == 0 else min(cap, 10 * np.log10(1.0 / mse))


def _box_mean(x: np.ndarray, size: int) -> np.ndarray:
    """Mean over every ``size`` x ``size`` window (valid positions only), per channel."""
    summed = np.cumsum(np.cumsum(np.pad(x, ((1, 0), (1, 0), (0, 0))), axis=0), axis=1)
    total = summed[size:, size:] - summed[:-size, size:] - summed[size:, :-size] + summed[:-size, :-size]
    return total / (size * size)


def ssim(a: Image.Image, b: Image.Image) -> float:
    """Structural similarity of two same-size images (mean over 7 x 7 windows and channels; 1 when identical)."""
    x, y = _array(a), _array(b)
    if x.shape != y.shape:
        raise ValueError(f"SSIM needs images of one size; got {x.shape[:2]} and {y.shape[:2]}.")
    size = min(_SSIM_WINDOW, *x.shape[:2])
    mx, my = _box_mean(x, size), _box_mean(y, size)
    vx = _box_mean(x * x, size) - mx * mx
    vy = _box_mean(y * y, size) - my * my
    cov = _box_mean(x * y, size) - mx * my
    score = ((2 * mx * my + _SSIM_C1) * (2 * cov + _SSIM_C2)) / ((mx * mx + my * my + _SSIM_C1) * (vx + vy + _SSIM_C2))
    return float(score.mean())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D):
    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``. Identical sets give 0 (up to rounding)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets of at least 2 rows and equal width; got {a.shape} and {b.shape}.")
    mean = np.sum((a.mean(0) - b.mean(0)) ** 2)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _psd_sqrt(cov_a)
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)  # eigenvalues of (S_a S_b) via a symmetric form
    trace = np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(cross, 0, None)).sum()
    return float(max(mean + trace, 0.0))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
