"""PSNR / SSIM on Y against scikit-image, and the BT.601 luma formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fluxsr_cli.errors import InputError
from fluxsr_cli.quality.metrics import crop_border, psnr, psnr_y, rgb_to_y, ssim, ssim_y


def _photo(name: str, size: int = 96) -> np.ndarray:
    img = getattr(data, name)()[:size, :size].astype(np.float64) / 255.0
    return img


def _degraded(img: np.ndarray, seed: int, sigma: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = img + rng.normal(0.0, sigma, img.shape)
    return np.round(np.clip(noisy, 0, 1) * 255) / 255  # 8-bit levels, as files hold them


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(
        a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, win_size=11
    )


def test_y_matches_bt601_formula():
    rgb = np.random.default_rng(0).random((5, 7, 3))
    r, g, b = rgb[..., 0] * 255, rgb[..., 1] * 255, rgb[..., 2] * 255
    # MATLAB rgb2ycbcr on 8-bit scale: Y = 16 + (65.738 R + 129.057 G + 25.064 B) / 256
    expected = (16 + (65.738 * r + 129.057 * g + 25.064 * b) / 256) / 255
    np.testing.assert_allclose(rgb_to_y(rgb), expected, atol=1e-5)
    assert rgb_to_y(np.zeros((1, 1, 3)))[0, 0] == pytest.approx(16 / 255)
    assert rgb_to_y(np.ones((1, 1, 3)))[0, 0] == pytest.approx(235 / 255)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
@pytest.mark.parametrize("border", [0, 4])
def test_psnr_ssim_agree_with_skimage(name, border):
    gt = _photo(name)
    pred = _degraded(gt, seed=len(name))
    y_pred, y_gt = crop_border(rgb_to_y(pred), border), crop_border(rgb_to_y(gt), border)
    ours_p, ours_s = psnr_y(pred, gt, border), ssim_y(pred, gt, border)
    assert ours_p == pytest.approx(peak_signal_noise_ratio(y_gt, y_pred, data_range=1.0), abs=1e-6)
    assert ours_s == pytest.approx(_sk_ssim(y_pred, y_gt), abs=1e-4)
    assert 15 < ours_p < 40 and 0.2 < ours_s < 0.99


def test_ssim_on_structured_change_agrees_with_skimage():
    gt = data.camera()[:80, :80].astype(np.float64) / 255.0
    pred = np.clip(gt * 0.8 + 0.1 + 0.02 * np.sin(np.arange(gt.shape[1]) / 3.0), 0, 1)
    assert ssim(pred, gt) == pytest.approx(_sk_ssim(pred, gt), abs=1e-4)
    assert psnr(pred, gt) == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=1.0), abs=1e-6)


def test_identity_and_ordering():
    gt = _photo("coffee", 64)
    assert psnr_y(gt, gt) == math.inf
    assert ssim_y(gt, gt) == pytest.approx(1.0)
    light, heavy = _degraded(gt, 1, 0.02), _degraded(gt, 1, 0.1)
    assert psnr_y(light, gt, 4) > psnr_y(heavy, gt, 4)
    assert ssim_y(light, gt, 4) > ssim_y(heavy, gt, 4)


def test_crop_border_changes_the_measured_region():
    gt = _photo("astronaut", 64)
    pred = gt.copy()
    pred[:4] = 0  # damage only the border rows
    assert psnr_y(pred, gt, 4) == math.inf
    assert psnr_y(pred, gt, 0) < 30


def test_bad_inputs_raise_input_error():
    a = _photo("coffee", 32)
    with pytest.raises(InputError, match="differ in size"):
        psnr_y(a, a[:16])
    with pytest.raises(InputError, match="too small"):
        psnr_y(a, a, border=16)
    with pytest.raises(InputError, match="at least 11"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))
