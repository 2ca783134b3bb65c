"""The losses of FluxSR training (docs/method.md sections 3 and 5), as pure functions.

    L = lambda_ftd * L_FTD + lambda_rec * (MSE(x_hat_H, x_0) + lambda_tv * TV-LPIPS(x_hat_H, x_0))
        + lambda_adl * L_ADL

The student's velocities enter as tensors, so every function here can be checked on random tensors
against the identities of docs/method.md. Randomness (the flow times t) is a ``torch.Generator``
argument, drawn on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fluxsr_cli.errors import ConfigError
from fluxsr_cli.model.flows import (
    distilled_velocity,
    lr_velocity,
    noise_to_lr,
    sample_t,
    sr_velocity,
    teacher_velocity,
)


@dataclass(frozen=True)
class LossWeights:
    """lambda_ftd, lambda_rec, lambda_tv, lambda_adl and the TV-LPIPS gamma (all *unknown* in the paper)."""

    ftd: float = 1.0
    rec: float = 1.0
    tv: float = 0.5
    adl: float = 0.01
    gamma: float = 0.5

    def __post_init__(self) -> None:
        for name in ("ftd", "rec", "tv", "adl", "gamma"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss weight {name} must be >= 0, got {getattr(self, name)}")

    @property
    def needs_lpips(self) -> bool:
        return self.rec > 0 and self.tv > 0


def ftd_point(eps: torch.Tensor, z_l: torch.Tensor, t_l: float, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~ U[T_L, 1] per sample (drawn on the CPU) and z_t on the noise -> LR segment: ([B, C, h, w], [B])."""
    t = sample_t(eps.shape[0], t_l, generator).to(eps.device)  # [B]
    return noise_to_lr(eps, z_l, t, t_l), t


def ftd_loss(v_theta: torch.Tensor, eps: torch.Tensor, z_0: torch.Tensor, z_l: torch.Tensor, t_l: float
             ) -> torch.Tensor:
    """L_FTD = E || v_phi - u^L ||^2 (docs/method.md section 3), the mean over all elements.

    ``v_theta``: the student's velocity v_theta(z_t, t) at the point of :func:`ftd_point`; eps, z_0,
    z_l: [B, C, h, w] normalised latents. It equals (T_L / (1 - T_L))^2 E || v_theta - (z_L - z_0) / T_L ||^2.
    """
    u = teacher_velocity(eps, z_0)  # u = eps - z_0
    v_phi = distilled_velocity(u, v_theta, t_l)  # (u - T_L v_theta) / (1 - T_L)
    u_l = lr_velocity(eps, z_l, t_l)  # (eps - z_L) / (1 - T_L)
    return F.mse_loss(v_phi, u_l)


def ftd_loss_reference(v_theta: torch.Tensor, z_0: torch.Tensor, z_l: torch.Tensor, t_l: float) -> torch.Tensor:
    """The closed form (T_L / (1 - T_L))^2 * mean || v_theta - u^SR ||^2 that L_FTD must equal."""
    return (t_l / (1.0 - t_l)) ** 2 * F.mse_loss(v_theta, sr_velocity(z_l, z_0, t_l))


def reconstruction_loss(x_hat: torch.Tensor, x_0: torch.Tensor, lpips: torch.nn.Module | None, weights: LossWeights
                        ) -> dict[str, torch.Tensor]:
    """MSE(x_hat_H, x_0) and TV-LPIPS(x_hat_H, x_0) of images [B, 3, H, W] in [0, 1].

    Returns ``{"mse", "tv_lpips", "rec"}`` with rec = MSE + lambda_tv * TV-LPIPS. Without an LPIPS model
    (allowed only when lambda_tv = 0) the TV-LPIPS term is zero.
    """
    from fluxsr_cli.quality.lpips import tv_lpips

    mse = F.mse_loss(x_hat.float(), x_0.float())
    if weights.tv > 0:
        if lpips is None:
            raise ValueError("lambda_tv > 0 needs an LPIPS model")
        tvl = tv_lpips(lpips, x_hat.float(), x_0.float(), weights.gamma).mean()
    else:
        tvl = mse.new_zeros(())
    return {"mse": mse, "tv_lpips": tvl, "rec": mse + weights.tv * tvl}


def adl_loss(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """L_ADL = mean_l s_l, s_l = mean_i cos(H_l[:, i], mean_j H_l[:, j]) (docs/method.md section 5).

    ``features``: image-token features H_l [B, N, C] of the chosen blocks. s_l is 1 when all tokens
    are equal and falls towards 0 as the tokens diversify (1/sqrt(N) for N orthonormal tokens).
    """
    if not features:
        raise ValueError("adl_loss needs the features of at least one block")
    scores = []
    for h in features:
        h = h.float()  # [B, N, C]
        centre = h.mean(dim=1, keepdim=True)  # [B, 1, C]
        scores.append(F.cosine_similarity(h, centre.expand_as(h), dim=-1, eps=1e-8).mean())
    return torch.stack(scores).mean()


def total_loss(terms: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """L = lambda_ftd L_FTD + lambda_rec (MSE + lambda_tv TV-LPIPS) + lambda_adl L_ADL from named terms."""
    zero = terms["ftd"].new_zeros(())
    return (weights.ftd * terms["ftd"] + weights.rec * terms.get("rec", zero)
            + weights.adl * terms.get("adl", zero))
