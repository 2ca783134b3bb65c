"""Blur kernels of the Real-ESRGAN degradation, as pure functions.

Every function returns a normalised ``[size, size]`` float64 tensor (it sums to 1) centred on the
middle pixel; ``size`` is odd. Coordinates: ``x`` is the column offset from the centre (to the
right), ``y`` the row offset (down). An anisotropic kernel has standard deviations ``sigma_x``,
``sigma_y`` along its own axes, rotated by ``theta`` radians from the image axes:

    Sigma = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T,  R = [[cos, -sin], [sin, cos]]

and ``d(x, y) = sqrt([x y] Sigma^-1 [x y]^T)`` is the Mahalanobis distance from the centre.

Shape parameter convention (``beta``): the exponent applies to the distance ``d``, as in the
textbook generalized normal distribution, so ``beta = 2`` is the Gaussian and ``beta = 1`` the
Laplacian. Real-ESRGAN/BasicSR apply it to the squared distance ``d^2`` instead; their published
ranges (generalized 0.5-4, plateau 1-2) are therefore 1-8 and 2-4 here: the same kernels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

KERNEL_KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


def _check_size(size: int) -> None:
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {size}")


def grid(size: int) -> tuple[Tensor, Tensor]:
    """Column and row offsets from the centre, each ``[size, size]`` float64."""
    _check_size(size)
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return xx, yy


def covariance(sigma_x: float, sigma_y: float, theta: float) -> Tensor:
    """The 2x2 covariance ``R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T`` in (x, y) order."""
    c, s = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    return rot @ torch.diag(torch.tensor([sigma_x**2, sigma_y**2], dtype=torch.float64)) @ rot.T


def mahalanobis_sq(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> Tensor:
    """``d^2 = [x y] Sigma^-1 [x y]^T`` on the kernel grid; ``sigma_y=None`` means isotropic."""
    if sigma_x <= 0 or (sigma_y is not None and sigma_y <= 0):
        raise ValueError(f"kernel sigmas must be positive, got {sigma_x}, {sigma_y}")
    xx, yy = grid(size)
    inv = torch.linalg.inv(covariance(sigma_x, sigma_x if sigma_y is None else sigma_y, theta))
    return inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy


def _normalise(kernel: Tensor) -> Tensor:
    return kernel / kernel.sum()


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> Tensor:
    """``exp(-d^2 / 2)``: isotropic when ``sigma_y`` is None, else anisotropic rotated by ``theta``."""
    return _normalise(torch.exp(-0.5 * mahalanobis_sq(size, sigma_x, sigma_y, theta)))


def generalized_gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 2.0
) -> Tensor:
    """``exp(-d^beta / 2)``: ``beta = 2`` is :func:`gaussian_kernel`; small beta is peaky, large is flat."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    return _normalise(torch.exp(-0.5 * mahalanobis_sq(size, sigma_x, sigma_y, theta) ** (beta / 2)))


def plateau_kernel(
    size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 4.0
) -> Tensor:
    """``1 / (1 + d^beta)``: a flat top with heavy tails (a defocus-like blur)."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    return _normalise(1.0 / (1.0 + mahalanobis_sq(size, sigma_x, sigma_y, theta) ** (beta / 2)))


def sinc_kernel(size: int, omega_c: float) -> Tensor:
    """The 2-D circular low-pass (sinc) kernel with cutoff ``omega_c`` radians per pixel (pi is Nyquist).

    ``k(r) = omega_c J1(omega_c r) / (2 pi r)``, the inverse Fourier transform of the disc
    ``|omega| < omega_c``, truncated to ``size`` pixels; its centre is the limit ``omega_c^2 / (4 pi)``.
    It makes the ringing and overshoot artefacts of real resamplers.
    """
    if not 0 < omega_c <= math.pi:
        raise ValueError(f"sinc cutoff must be in (0, pi], got {omega_c}")
    xx, yy = grid(size)
    r = torch.sqrt(xx * xx + yy * yy)
    r_safe = torch.where(r > 0, r, torch.ones_like(r))
    kernel = omega_c * torch.special.bessel_j1(omega_c * r_safe) / (2 * math.pi * r_safe)
    kernel = torch.where(r > 0, kernel, torch.full_like(r, omega_c**2 / (4 * math.pi)))
    return _normalise(kernel)


def make_kernel(
    kind: str,
    size: int,
    sigma_x: float | None = None,
    sigma_y: float | None = None,
    theta: float | None = None,
    beta: float | None = None,
    omega_c: float | None = None,
) -> Tensor:
    """Build a kernel by its Real-ESRGAN name (``iso``, ..., ``plateau_aniso``) or ``sinc``."""
    if kind == "sinc":
        if omega_c is None:
            raise ValueError("a sinc kernel needs omega_c")
        return sinc_kernel(size, omega_c)
    if kind not in KERNEL_KINDS:
        raise ValueError(f"unknown kernel kind {kind!r}; use one of {', '.join(KERNEL_KINDS)} or sinc")
    if sigma_x is None:
        raise ValueError(f"a {kind} kernel needs sigma_x")
    aniso = kind.endswith("aniso")
    sy = sigma_y if aniso else None
    th = (theta or 0.0) if aniso else 0.0
    if kind.startswith("generalized"):
        return generalized_gaussian_kernel(size, sigma_x, sy, th, beta if beta is not None else 2.0)
    if kind.startswith("plateau"):
        return plateau_kernel(size, sigma_x, sy, th, beta if beta is not None else 4.0)
    return gaussian_kernel(size, sigma_x, sy, th)


def pulse_kernel(size: int = 1) -> Tensor:
    """The identity kernel: 1 at the centre."""
    _check_size(size)
    kernel = torch.zeros(size, size, dtype=torch.float64)
    kernel[size // 2, size // 2] = 1.0
    return kernel
