"""PSNR and SSIM on the Y channel, as super-resolution papers compute them.

The convention (MATLAB's ``rgb2ycbcr``, BasicSR's ``calculate_psnr/ssim(test_y_channel=True)``):
- Y = 16 + 65.481 R + 128.553 G + 24.966 B for R, G, B in [0, 1] (ITU-R BT.601, studio range), here
  divided by 255 so that Y lies in [16/255, 235/255] and the data range is 1;
- ``crop_border`` pixels (the scale factor, by default) are cut from every side before measuring;
- SSIM uses an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, population statistics,
  and averages the SSIM map over the 'valid' positions only (no padding).
All functions are pure numpy, in float64.
"""

from __future__ import annotations

import math

import numpy as np

from fluxsr_cli.errors import InputError

# BT.601 luma weights for R, G, B in [0, 1] -> Y in [16, 235] (offset 16), divided by 255 below.
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966])
_Y_OFFSET = 16.0

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] RGB in [0, 1] -> [H, W] BT.601 luma (studio range) in [16/255, 235/255], float64."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise InputError(f"rgb_to_y needs an [H, W, 3] image, got shape {rgb.shape}")
    return (np.asarray(rgb, dtype=np.float64) @ _Y_WEIGHTS + _Y_OFFSET) / 255.0


def crop_border(img: np.ndarray, border: int) -> np.ndarray:
    """Cut ``border`` pixels from each side of the two leading (spatial) axes."""
    if border < 0:
        raise InputError(f"crop border must be >= 0, got {border}")
    if border == 0:
        return img
    if min(img.shape[:2]) <= 2 * border:
        raise InputError(f"image of {img.shape[1]}x{img.shape[0]} px is too small for a crop border of {border}")
    return img[border:-border, border:-border]


def psnr(pred: np.ndarray, gt: np.ndarray, data_range: float = 1.0) -> float:
    """10 log10(data_range^2 / MSE); ``inf`` for identical images."""
    _check_same(pred, gt)
    mse = float(np.mean((np.asarray(pred, np.float64) - np.asarray(gt, np.float64)) ** 2))
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The normalised 1-D Gaussian [size] whose outer product is SSIM's window."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _filter_valid(img: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable correlation of a 2-D image with the window w (x) w, 'valid' positions only."""
    k = len(w)
    h, wd = img.shape
    rows = sum(w[i] * img[i : h - k + 1 + i, :] for i in range(k))
    return sum(w[j] * rows[:, j : wd - k + 1 + j] for j in range(k))


def ssim(pred: np.ndarray, gt: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM (Wang et al. 2004) of two 2-D images, Gaussian window 11 / sigma 1.5, 'valid' map."""
    _check_same(pred, gt)
    if pred.ndim != 2:
        raise InputError(f"ssim needs 2-D (single-channel) images, got shape {pred.shape}")
    if min(pred.shape) < SSIM_WINDOW:
        raise InputError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} px, got {pred.shape}")
    x = np.asarray(pred, np.float64)
    y = np.asarray(gt, np.float64)
    w = gaussian_window()
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    mu_x, mu_y = _filter_valid(x, w), _filter_valid(y, w)
    var_x = _filter_valid(x * x, w) - mu_x**2
    var_y = _filter_valid(y * y, w) - mu_y**2
    cov = _filter_valid(x * y, w) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def psnr_y(pred_rgb: np.ndarray, gt_rgb: np.ndarray, border: int = 0) -> float:
    """PSNR on the BT.601 Y channel after cropping ``border`` px; RGB inputs in [0, 1]."""
    _check_same(pred_rgb, gt_rgb)
    return psnr(crop_border(rgb_to_y(pred_rgb), border), crop_border(rgb_to_y(gt_rgb), border))


def ssim_y(pred_rgb: np.ndarray, gt_rgb: np.ndarray, border: int = 0) -> float:
    """SSIM on the BT.601 Y channel after cropping ``border`` px; RGB inputs in [0, 1]."""
    _check_same(pred_rgb, gt_rgb)
    return ssim(crop_border(rgb_to_y(pred_rgb), border), crop_border(rgb_to_y(gt_rgb), border))


def _check_same(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise InputError(f"images differ in size: {a.shape} vs {b.shape}")
