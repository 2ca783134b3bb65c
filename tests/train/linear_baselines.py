"""Linear baselines for the learning test: z_0 predicted from z_L by least squares on the training pairs.

A student that learned something beyond a linear filter must beat all of them on held-out pairs:

- ``affine``: z_0 = a z_L + b with two scalars;
- ``filter``: a 3x3 filter per latent channel plus a bias (16 x 10 numbers);
- ``conv``: a full 3x3 convolution 16 -> 16 channels plus a bias (16 x 145 numbers), the
  strongest linear map of a 3x3 neighbourhood.

Borders are padded by replication. The fits solve the normal equations in float64 with
``torch.linalg.lstsq``; errors are measured as the trainer's validation measures them (the mean
over pairs of each pair's RMS latent error).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Predictor = Callable[[torch.Tensor], torch.Tensor]


def rms_error(pred: torch.Tensor, z_0: torch.Tensor) -> float:
    """Mean over pairs [N, C, h, w] of each pair's root-mean-square error."""
    return float((pred - z_0).square().flatten(1).mean(1).sqrt().mean())


def _patches(z: torch.Tensor) -> torch.Tensor:
    """[N, C, h, w] -> [N * h * w, C, 9]: each cell's 3x3 neighbourhood per channel (replicated borders)."""
    n, c, h, w = z.shape
    cols = F.unfold(F.pad(z.double(), (1, 1, 1, 1), mode="replicate"), 3)  # [N, C * 9, h * w]
    return cols.view(n, c, 9, h * w).permute(0, 3, 1, 2).reshape(n * h * w, c, 9)


def _solve(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Least squares with a bias column: x [M, K], y [M, J] -> weights [K + 1, J]."""
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    return torch.linalg.lstsq(x, y).solution


def _cells(z: torch.Tensor) -> torch.Tensor:
    """[N, C, h, w] -> [N * h * w, C] float64."""
    return z.double().permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def _uncells(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    n, c, h, w = like.shape
    return values.view(n, h, w, c).permute(0, 3, 1, 2).to(like.dtype)


def fit_affine(z_l: torch.Tensor, z_0: torch.Tensor) -> Predictor:
    a, b = _solve(z_l.double().reshape(-1, 1), z_0.double().reshape(-1, 1))[:, 0]
    return lambda z: (a * z.double() + b).to(z.dtype)


def fit_filter(z_l: torch.Tensor, z_0: torch.Tensor) -> Predictor:
    x, y = _patches(z_l), _cells(z_0)
    weights = [_solve(x[:, c], y[:, c:c + 1])[:, 0] for c in range(z_l.shape[1])]  # [10] per channel

    def predict(z: torch.Tensor) -> torch.Tensor:
        p = _patches(z)
        out = torch.stack([p[:, c] @ w[:9] + w[9] for c, w in enumerate(weights)], dim=1)
        return _uncells(out, z)

    return predict


def fit_conv(z_l: torch.Tensor, z_0: torch.Tensor) -> Predictor:
    w = _solve(_patches(z_l).flatten(1), _cells(z_0))  # [C * 9 + 1, C]
    return lambda z: _uncells(_patches(z).flatten(1) @ w[:-1] + w[-1], z)


def linear_errors(train: tuple[torch.Tensor, torch.Tensor], held_out: tuple[torch.Tensor, torch.Tensor]
                  ) -> dict[str, float]:
    """Held-out RMS error of each baseline fitted on ``train`` = (z_L, z_0) stacks [N, C, h, w]."""
    z_l, z_0 = held_out
    return {name: rms_error(fit(*train)(z_l), z_0)
            for name, fit in (("affine", fit_affine), ("filter", fit_filter), ("conv", fit_conv))}
