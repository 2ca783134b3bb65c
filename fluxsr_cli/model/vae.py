"""VAE encode/decode in the transformer's latent space, shared by restore, pairs and training.

Images are [B, 3, H, W] in [0, 1]; latents are normalised, ``(z - shift) * scale``, [B, 16, H/8, W/8].
Encoding takes the posterior mean (never a sample), so the same image always gives the same latent.
Large images are encoded and decoded in tiles by :mod:`fluxsr_cli.upscale.tiled_vae`.
"""

from __future__ import annotations

import torch

from fluxsr_cli.model.latents import denormalize, normalize
from fluxsr_cli.model.placement import execution_device


def _dtype(vae: torch.nn.Module) -> torch.dtype:
    return next(vae.parameters()).dtype


def encode(vae: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] (sides multiples of 16) -> normalised latent [B, 16, H/8, W/8], fp32."""
    z = vae.encode(x.mul(2).sub_(1).to(execution_device(vae), _dtype(vae))).latent_dist.mean
    return normalize(z.float(), vae.config.shift_factor, vae.config.scaling_factor)


def decode(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Normalised latent [B, 16, h, w] -> image [B, 3, 8h, 8w] in [0, 1], fp32 (differentiable)."""
    raw = denormalize(z, vae.config.shift_factor, vae.config.scaling_factor)
    x = vae.decode(raw.to(execution_device(vae), _dtype(vae))).sample
    if x.requires_grad:
        return ((x.float() + 1) / 2).clamp(0.0, 1.0)
    return x.float().mul_(0.5).add_(0.5).clamp_(0.0, 1.0)  # in place, no temporaries; the same bits
