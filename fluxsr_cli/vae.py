"""VAE encode/decode in the transformer's latent space, shared by restore, pairs and training.

Images are [B, 3, H, W] in [0, 1]; latents are normalised, ``(z - shift) * scale``, [B, 16, H/8, W/8].
Encoding takes the posterior mean (never a sample), so the same image always gives the same latent.
"""

from __future__ import annotations

import torch

from fluxsr_cli.latents import denormalize, normalize


def encode(vae: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] (sides multiples of 16) -> normalised latent [B, 16, H/8, W/8], fp32."""
    param = next(vae.parameters())
    z = vae.encode((x * 2 - 1).to(param.device, param.dtype)).latent_dist.mean
    return normalize(z.float(), vae.config.shift_factor, vae.config.scaling_factor)


def decode(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Normalised latent [B, 16, h, w] -> image [B, 3, 8h, 8w] in [0, 1], fp32 (differentiable)."""
    param = next(vae.parameters())
    raw = denormalize(z, vae.config.shift_factor, vae.config.scaling_factor)
    x = vae.decode(raw.to(param.device, param.dtype)).sample
    return ((x.float() + 1) / 2).clamp(0.0, 1.0)
