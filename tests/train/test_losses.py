"""The FTD, reconstruction and ADL losses against the identities of docs/method.md sections 3 and 5."""

from __future__ import annotations

import math

import pytest
import torch

from fluxsr_cli.errors import ConfigError
from fluxsr_cli.model.flows import noise_to_lr, sr_velocity
from fluxsr_cli.train.losses import (
    LossWeights,
    adl_loss,
    ftd_loss,
    ftd_loss_reference,
    ftd_point,
    reconstruction_loss,
    total_loss,
)


def _latents(seed: int, shape=(3, 16, 6, 4)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(4)]  # eps, z_0, z_l, v


@pytest.mark.parametrize("t_l", [0.1, 0.25, 0.5, 0.8])
def test_ftd_equals_scaled_distance_to_sr_velocity(t_l):
    eps, z_0, z_l, v = _latents(1)
    got = ftd_loss(v, eps, z_0, z_l, t_l)
    expected = (t_l / (1 - t_l)) ** 2 * ((v - (z_l - z_0) / t_l) ** 2).mean()  # docs/method.md section 3, written out
    assert got.item() == pytest.approx(expected.item(), rel=1e-10)
    assert ftd_loss_reference(v, z_0, z_l, t_l).item() == pytest.approx(expected.item(), rel=1e-10)


def test_ftd_is_zero_for_the_true_sr_velocity_and_positive_otherwise():
    eps, z_0, z_l, _ = _latents(2)
    assert ftd_loss(sr_velocity(z_l, z_0, 0.25), eps, z_0, z_l, 0.25).item() == pytest.approx(0.0, abs=1e-20)
    assert ftd_loss(sr_velocity(z_l, z_0, 0.25) + 0.01, eps, z_0, z_l, 0.25).item() > 0


def test_ftd_point_draws_t_in_range_per_sample_from_the_generator():
    eps, _, z_l, _ = _latents(3, shape=(64, 16, 2, 2))
    z_t, t = ftd_point(eps, z_l, 0.3, torch.Generator().manual_seed(5))
    assert t.shape == (64,) and bool((t >= 0.3).all()) and bool((t <= 1.0).all())
    assert len(set(t.tolist())) == 64  # one time per sample
    z_t2, t2 = ftd_point(eps, z_l, 0.3, torch.Generator().manual_seed(5))
    assert torch.equal(t, t2) and torch.equal(z_t, z_t2)
    assert torch.allclose(z_t, noise_to_lr(eps, z_l, t, 0.3))
    # z_t lies on the straight noise -> LR segment: z_L at T_L, eps at 1
    assert torch.allclose(noise_to_lr(eps, z_l, torch.full((64,), 0.3, dtype=torch.float64), 0.3), z_l)
    assert torch.allclose(noise_to_lr(eps, z_l, torch.ones(64, dtype=torch.float64), 0.3), eps)


def test_ftd_trains_v_theta_towards_the_sr_velocity():
    eps, z_0, z_l, _ = _latents(4)
    v = torch.zeros_like(z_0, requires_grad=True)
    opt = torch.optim.SGD([v], lr=2500.0)  # the mean over 1152 elements scales the gradient down
    for _ in range(200):
        opt.zero_grad()
        ftd_loss(v, eps, z_0, z_l, 0.25).backward()
        opt.step()
    assert torch.allclose(v.detach(), sr_velocity(z_l, z_0, 0.25), atol=1e-3)


def test_adl_is_one_for_identical_tokens():
    token = torch.randn(1, 1, 32)
    assert adl_loss([token.expand(2, 50, 32)]).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("n", [4, 64, 256])
def test_adl_for_orthonormal_tokens_is_one_over_sqrt_n(n):
    tokens = torch.eye(n)[None]  # N orthonormal tokens [1, N, N]
    assert adl_loss([tokens]).item() == pytest.approx(1 / math.sqrt(n), rel=1e-5)
    assert n < 256 or adl_loss([tokens]).item() < 0.07  # near 0 for many orthogonal tokens


def test_adl_averages_over_blocks_and_falls_with_diversity():
    same = torch.ones(2, 16, 8)
    orth = torch.eye(16)[None].expand(2, 16, 16)
    assert adl_loss([same, orth]).item() == pytest.approx((1 + 0.25) / 2, rel=1e-5)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 1, 64, generator=g)
    scores = [adl_loss([base + s * torch.randn(1, 128, 64, generator=g)]).item() for s in (0.1, 1.0, 10.0)]
    assert scores[0] > scores[1] > scores[2]


def test_reconstruction_and_total_loss_follow_the_formula():
    g = torch.Generator().manual_seed(0)
    x_0, x_hat = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)

    class FakeLpips(torch.nn.Module):  # LPIPS stand-in: mean absolute difference per image
        def forward(self, a, b):
            return (a - b).abs().mean(dim=(1, 2, 3))

    from fluxsr_cli.quality.lpips import tv_map

    w = LossWeights(ftd=2.0, rec=3.0, tv=0.5, adl=0.25, gamma=0.7)
    terms = reconstruction_loss(x_hat, x_0, FakeLpips(), w)
    mse = ((x_hat - x_0) ** 2).mean()
    tvl = ((x_hat - x_0).abs().mean(dim=(1, 2, 3)) + 0.7 * (tv_map(x_hat) - tv_map(x_0)).abs().mean(dim=(1, 2, 3))).mean()
    assert terms["mse"].item() == pytest.approx(mse.item(), rel=1e-6)
    assert terms["tv_lpips"].item() == pytest.approx(tvl.item(), rel=1e-6)
    terms["ftd"], terms["adl"] = torch.tensor(0.3), torch.tensor(0.9)
    expected = 2.0 * 0.3 + 3.0 * (mse + 0.5 * tvl) + 0.25 * 0.9
    assert total_loss(terms, w).item() == pytest.approx(expected.item(), rel=1e-6)
    no_tv = reconstruction_loss(x_hat, x_0, None, LossWeights(tv=0.0))
    assert no_tv["rec"].item() == pytest.approx(mse.item(), rel=1e-6)
    with pytest.raises(ValueError):
        reconstruction_loss(x_hat, x_0, None, LossWeights(tv=0.5))


def test_reconstruction_with_real_lpips_is_zero_for_equal_images_and_has_gradients():
    from fluxsr_cli.quality.lpips import load_lpips
    from tests.lpips_weights import lpips_cache

    lpips = load_lpips(cache_dir=lpips_cache())
    g = torch.Generator().manual_seed(0)
    x_0 = torch.rand(1, 3, 32, 32, generator=g)
    w = LossWeights()
    assert reconstruction_loss(x_0, x_0, lpips, w)["rec"].item() == pytest.approx(0.0, abs=1e-6)
    x_hat = (x_0 + 0.1 * torch.randn(1, 3, 32, 32, generator=g)).clamp(0, 1).requires_grad_(True)
    terms = reconstruction_loss(x_hat, x_0, lpips, w)
    assert terms["tv_lpips"].item() > 0
    terms["rec"].backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0


def test_negative_weights_are_refused():
    with pytest.raises(ConfigError, match="adl"):
        LossWeights(adl=-1.0)
