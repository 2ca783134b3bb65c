"""Blur kernels against closed forms, moments and frequency responses."""

from __future__ import annotations

import math

import pytest
import torch

from fluxsr_cli.degrade.kernels import (
    KERNEL_KINDS,
    covariance,
    gaussian_kernel,
    generalized_gaussian_kernel,
    make_kernel,
    plateau_kernel,
    pulse_kernel,
    sinc_kernel,
)


def _offsets(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Column (x) and row (y) offsets from the centre, written out independently of the module."""
    half = size // 2
    xs = torch.tensor([[c - half for c in range(size)] for _ in range(size)], dtype=torch.float64)
    return xs, xs.T.clone()


def _moments(kernel: torch.Tensor) -> torch.Tensor:
    """Second moments [[E xx, E xy], [E xy, E yy]] of a normalised kernel."""
    x, y = _offsets(kernel.shape[0])
    exx, eyy, exy = (kernel * x * x).sum(), (kernel * y * y).sum(), (kernel * x * y).sum()
    return torch.stack([torch.stack([exx, exy]), torch.stack([exy, eyy])])


@pytest.mark.parametrize("kind", [*KERNEL_KINDS, "sinc"])
@pytest.mark.parametrize("size", [7, 13, 21])
def test_every_kernel_sums_to_one_is_finite_and_centred(kind: str, size: int) -> None:
    k = make_kernel(kind, size, sigma_x=1.3, sigma_y=0.6, theta=0.4, beta=3.0, omega_c=1.2)
    assert k.shape == (size, size)
    assert torch.isfinite(k).all()
    assert k.sum().item() == pytest.approx(1.0, abs=1e-12)
    # point-symmetric about the centre: no shift of the image
    assert torch.allclose(k, k.flip(0).flip(1), atol=1e-15)
    x, y = _offsets(size)
    assert (k * x).sum().item() == pytest.approx(0.0, abs=1e-12)
    assert (k * y).sum().item() == pytest.approx(0.0, abs=1e-12)


def test_isotropic_gaussian_equals_closed_form() -> None:
    sigma = 1.7
    x, y = _offsets(15)
    expected = torch.exp(-(x**2 + y**2) / (2 * sigma**2))
    expected /= expected.sum()
    assert torch.allclose(gaussian_kernel(15, sigma), expected, atol=1e-15)
    # the centre over its 4-neighbour is exp(1 / (2 sigma^2))
    k = gaussian_kernel(15, sigma)
    assert (k[7, 7] / k[7, 8]).item() == pytest.approx(math.exp(1 / (2 * sigma**2)), rel=1e-12)


@pytest.mark.parametrize("sigma_x,sigma_y,theta", [(2.0, 0.8, 0.0), (1.8, 1.0, 0.6), (0.9, 2.2, -1.1)])
def test_anisotropic_covariance_matches_sigmas_and_angle(sigma_x: float, sigma_y: float, theta: float) -> None:
    k = gaussian_kernel(31, sigma_x, sigma_y, theta)  # 31 px: truncation is negligible for sigma <= 2.2
    m = _moments(k)
    c, s = math.cos(theta), math.sin(theta)
    expected = torch.tensor([
        [sigma_x**2 * c * c + sigma_y**2 * s * s, (sigma_x**2 - sigma_y**2) * c * s],
        [(sigma_x**2 - sigma_y**2) * c * s, sigma_x**2 * s * s + sigma_y**2 * c * c],
    ], dtype=torch.float64)
    assert torch.allclose(m, expected, rtol=1e-3, atol=1e-4)
    assert torch.allclose(covariance(sigma_x, sigma_y, theta), expected, atol=1e-12)
    # the principal axes: eigenvalues sigma^2 and the eigenvector of sigma_x^2 along theta
    evals, evecs = torch.linalg.eigh(m)
    assert sorted(evals.tolist()) == pytest.approx(sorted([sigma_x**2, sigma_y**2]), rel=1e-3)
    vx = evecs[:, int(torch.argmin((evals - sigma_x**2).abs()))]
    angle = math.atan2(vx[1].item(), vx[0].item())
    assert math.sin(angle - theta) == pytest.approx(0.0, abs=1e-3)  # same axis, either direction


def test_rotation_by_half_turn_swaps_the_axes() -> None:
    a = gaussian_kernel(21, 2.5, 0.7, math.pi / 2)
    b = gaussian_kernel(21, 0.7, 2.5, 0.0)
    assert torch.allclose(a, b, atol=1e-12)
    assert not torch.allclose(a, gaussian_kernel(21, 2.5, 0.7, 0.0), atol=1e-3)


@pytest.mark.parametrize("sigma_y,theta", [(None, 0.0), (0.7, 0.9)])
def test_generalized_gaussian_with_beta_2_is_the_gaussian(sigma_y: float | None, theta: float) -> None:
    g = gaussian_kernel(17, 1.9, sigma_y, theta)
    assert torch.allclose(generalized_gaussian_kernel(17, 1.9, sigma_y, theta, beta=2.0), g, atol=1e-15)
    assert not torch.allclose(generalized_gaussian_kernel(17, 1.9, sigma_y, theta, beta=2.2), g, atol=1e-4)
    g = gaussian_kernel(17, 1.9)
    peaky = generalized_gaussian_kernel(17, 1.9, beta=1.0)
    flat = generalized_gaussian_kernel(17, 1.9, beta=6.0)
    # beta < 2: a sharper cusp at the centre and heavier tails; beta > 2: a flatter top
    def cusp(k: torch.Tensor) -> float:
        return (k[8, 8] / k[8, 9]).item()

    assert cusp(peaky) > cusp(g) > cusp(flat)
    assert (peaky[8, 16] / peaky[8, 8]).item() > (g[8, 16] / g[8, 8]).item()


def test_generalized_and_plateau_closed_forms() -> None:
    sigma, beta = 1.4, 3.0
    x, y = _offsets(13)
    d = torch.sqrt(x**2 + y**2) / sigma
    gen = torch.exp(-0.5 * d**beta)
    plat = 1.0 / (1.0 + d**beta)
    assert torch.allclose(generalized_gaussian_kernel(13, sigma, beta=beta), gen / gen.sum(), atol=1e-15)
    assert torch.allclose(plateau_kernel(13, sigma, beta=beta), plat / plat.sum(), atol=1e-15)
    # a plateau is flatter near the centre (large beta) and has heavier tails than a Gaussian
    g = gaussian_kernel(13, sigma)
    flat, heavy = plateau_kernel(13, sigma, beta=8.0), plateau_kernel(13, sigma, beta=3.0)
    assert (flat[6, 7] / flat[6, 6]).item() > 0.9 > (g[6, 7] / g[6, 6]).item()
    assert (heavy[6, 12] / heavy[6, 6]).item() > 10 * (g[6, 12] / g[6, 6]).item()


def _radial_response(kernel: torch.Tensor, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """|H(omega)| on an n x n DFT grid and the radial frequency |omega| in radians per pixel."""
    h = torch.fft.fft2(kernel, s=(n, n)).abs()
    f = torch.fft.fftfreq(n, dtype=torch.float64) * 2 * math.pi
    wy, wx = torch.meshgrid(f, f, indexing="ij")
    return h, torch.sqrt(wx**2 + wy**2)


@pytest.mark.parametrize("omega_c", [math.pi / 4, math.pi / 2])
def test_sinc_passes_below_its_cutoff_and_stops_above(omega_c: float) -> None:
    h, w = _radial_response(sinc_kernel(21, omega_c))
    passband = h[w < 0.6 * omega_c]
    stopband = h[w > 1.4 * omega_c]
    assert passband.mean().item() == pytest.approx(1.0, abs=0.08)
    assert passband.min().item() > 0.75
    assert stopband.mean().item() < 0.05
    assert stopband.max().item() < 0.2
    # the cutoff sits where it should: half-amplitude near omega_c
    ring = h[(w > 0.95 * omega_c) & (w < 1.05 * omega_c)]
    assert 0.3 < ring.mean().item() < 0.7


def test_sinc_closed_form_and_isotropy() -> None:
    omega_c = 1.1
    k = sinc_kernel(9, omega_c)
    # unnormalised ratio of the centre, omega_c^2 / (4 pi), to the value at r = 1, omega_c J1(omega_c) / (2 pi)
    j1 = torch.special.bessel_j1(torch.tensor(omega_c, dtype=torch.float64)).item()
    assert (k[4, 4] / k[4, 5]).item() == pytest.approx((omega_c**2 / (4 * math.pi)) / (omega_c * j1 / (2 * math.pi)))
    assert torch.allclose(k, k.T) and torch.allclose(k, k.flip(1))
    # omega_c = pi (a disc inscribed in the Nyquist square) filters little: mostly the centre pixel
    assert 0.75 < sinc_kernel(7, math.pi)[3, 3].item() < 1.0


def test_pulse_and_bad_arguments() -> None:
    assert pulse_kernel(5).sum().item() == 1.0 and pulse_kernel(5)[2, 2].item() == 1.0
    with pytest.raises(ValueError):
        gaussian_kernel(8, 1.0)
    with pytest.raises(ValueError):
        gaussian_kernel(7, 0.0)
    with pytest.raises(ValueError):
        sinc_kernel(7, 4.0)
    with pytest.raises(ValueError):
        make_kernel("box", 7, 1.0)
