"""The three straight flows of Flow Trajectory Distillation (docs/method.md sections 3 and 4).

Notation: t = 0 is data, t = 1 is noise. ``eps`` is the teacher's noise, ``z_0`` its clean latent,
``z_l`` the latent of the degraded (LR, upsampled) image, which sits at the fixed time ``t_l``.
All functions are pure and broadcast over a batch; ``t`` may be a float or a tensor [B].
"""

from __future__ import annotations

import torch


def _bcast(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """A per-sample time [B] reshaped to broadcast against ``like`` [B, ...]."""
    if isinstance(t, torch.Tensor) and t.ndim == 1:
        return t.view(-1, *([1] * (like.ndim - 1)))
    return t


def teacher_velocity(eps: torch.Tensor, z_0: torch.Tensor) -> torch.Tensor:
    """u = eps - z_0: the teacher's straight flow, noise -> HR."""
    return eps - z_0


def lr_velocity(eps: torch.Tensor, z_l: torch.Tensor, t_l: float) -> torch.Tensor:
    """u^L = (eps - z_L) / (1 - T_L): the noise -> LR flow on t in [T_L, 1]."""
    return (eps - z_l) / (1.0 - t_l)


def sr_velocity(z_l: torch.Tensor, z_0: torch.Tensor, t_l: float) -> torch.Tensor:
    """u^SR = (z_L - z_0) / T_L: the LR -> HR flow on t in [0, T_L]; the student stands in for it."""
    return (z_l - z_0) / t_l


def noise_to_lr(eps: torch.Tensor, z_l: torch.Tensor, t: torch.Tensor | float, t_l: float) -> torch.Tensor:
    """z_t = (1 - t)/(1 - T_L) z_L + (t - T_L)/(1 - T_L) eps, for t in [T_L, 1]."""
    t = _bcast(t, z_l)
    return (1.0 - t) / (1.0 - t_l) * z_l + (t - t_l) / (1.0 - t_l) * eps


def distilled_velocity(u: torch.Tensor, v_theta: torch.Tensor, t_l: float) -> torch.Tensor:
    """v_phi = (u - T_L v_theta) / (1 - T_L): the LR-flow velocity implied by the student."""
    return (u - t_l * v_theta) / (1.0 - t_l)


def one_step(z_l: torch.Tensor, v_theta: torch.Tensor, t_l: float) -> torch.Tensor:
    """z_hat_0 = z_L - T_L v_theta(z_L, T_L): one Euler step from T_L to 0."""
    return z_l - t_l * v_theta


def sample_t(batch: int, t_l: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """t ~ U[T_L, 1] per sample, drawn on the CPU: [B]."""
    return t_l + (1.0 - t_l) * torch.rand(batch, generator=generator)
