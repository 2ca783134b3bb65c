"""The straight-flow identities of docs/method.md sections 3 and 4, on random tensors."""

import pytest
import torch

from fluxsr_cli.model import flows

T_LS = [0.1, 0.25, 0.5, 0.8]


@pytest.fixture()
def triple():
    g = torch.Generator().manual_seed(0)
    eps, z_0, z_l = (torch.randn(3, 16, 8, 6, generator=g, dtype=torch.float64) for _ in range(3))
    return eps, z_0, z_l


@pytest.mark.parametrize("t_l", T_LS)
def test_velocities_compose(triple, t_l):
    """u = (1 - T_L) u^L + T_L u^SR: going noise -> LR -> HR is the teacher's straight flow."""
    eps, z_0, z_l = triple
    u = flows.teacher_velocity(eps, z_0)
    composed = (1 - t_l) * flows.lr_velocity(eps, z_l, t_l) + t_l * flows.sr_velocity(z_l, z_0, t_l)
    torch.testing.assert_close(composed, u, rtol=0, atol=1e-12)


@pytest.mark.parametrize("t_l", T_LS)
def test_noise_to_lr_endpoints_and_velocity(triple, t_l):
    eps, _, z_l = triple
    torch.testing.assert_close(flows.noise_to_lr(eps, z_l, t_l, t_l), z_l, rtol=0, atol=1e-12)
    torch.testing.assert_close(flows.noise_to_lr(eps, z_l, 1.0, t_l), eps, rtol=0, atol=1e-12)
    # dz_t/dt is u^L everywhere on the segment (finite difference of a straight line is exact)
    t, dt = 0.6 * (1 - t_l) + t_l, 1e-3
    slope = (flows.noise_to_lr(eps, z_l, t + dt, t_l) - flows.noise_to_lr(eps, z_l, t, t_l)) / dt
    torch.testing.assert_close(slope, flows.lr_velocity(eps, z_l, t_l), rtol=1e-8, atol=1e-8)


def test_noise_to_lr_per_sample_times(triple):
    """A [B] time tensor broadcasts per sample: each sample sits at its own t."""
    eps, _, z_l = triple
    t = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)
    z_t = flows.noise_to_lr(eps, z_l, t, 0.25)
    for i in range(3):
        torch.testing.assert_close(z_t[i], flows.noise_to_lr(eps[i], z_l[i], float(t[i]), 0.25))


@pytest.mark.parametrize("t_l", T_LS)
def test_true_sr_velocity_restores_exactly(triple, t_l):
    """One Euler step with the true u^SR lands on z_0, and v_phi becomes u^L."""
    eps, z_0, z_l = triple
    v = flows.sr_velocity(z_l, z_0, t_l)
    torch.testing.assert_close(flows.one_step(z_l, v, t_l), z_0, rtol=0, atol=1e-12)
    v_phi = flows.distilled_velocity(flows.teacher_velocity(eps, z_0), v, t_l)
    torch.testing.assert_close(v_phi, flows.lr_velocity(eps, z_l, t_l), rtol=0, atol=1e-12)


def test_sample_t_range_and_seed():
    a = flows.sample_t(10_000, 0.25, torch.Generator().manual_seed(1))
    b = flows.sample_t(10_000, 0.25, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a.min() >= 0.25 and a.max() <= 1.0
    assert abs(a.mean().item() - 0.625) < 0.01  # U[0.25, 1] has mean 0.625
