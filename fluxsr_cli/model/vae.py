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


# -- GroupNorm with statistics from elsewhere (the tiled VAE) ------------------------------------------
class StatsGroupNorm(torch.nn.GroupNorm):
    """``nn.GroupNorm`` that can also pool its inputs' statistics over several calls, or normalise with
    given statistics instead of its input's: what a VAE run in tiles needs so that every tile gets the
    whole image's numbers (:mod:`fluxsr_cli.upscale.tiled_vae`).

    ``mode`` is ``"plain"`` (``nn.GroupNorm``), ``"record"`` (plain output; per-image float32 mean and
    variance per group pooled into float64 sums, :attr:`pooled` [3, G]: count, sum, sum of squares) or
    ``"fixed"`` (one per-channel affine map from the buffers :attr:`mean`, :attr:`var` [G]). Everything
    lives in buffers and plain tensor code, so a compiled encoder or decoder runs every mode compiled
    (one graph per mode and shape; new statistics are new buffer values, not a recompile).
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__(num_groups, num_channels, eps, affine, device=device, dtype=dtype)
        self.mode = "plain"
        self.register_buffer("pooled", torch.zeros(3, num_groups, dtype=torch.float64, device=device),
                             persistent=False)
        self.register_buffer("mean", torch.zeros(num_groups, device=device), persistent=False)
        self.register_buffer("var", torch.ones(num_groups, device=device), persistent=False)

    @classmethod
    def like(cls, gn: torch.nn.GroupNorm) -> StatsGroupNorm:
        """One with ``gn``'s settings and its very parameters (shared, not copied)."""
        new = cls(gn.num_groups, gn.num_channels, gn.eps, gn.affine, device=gn.weight.device if gn.affine else None)
        if gn.affine:
            new.weight, new.bias = gn.weight, gn.bias
        new.train(gn.training)
        return new

    def _record(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(x.shape[0], self.num_groups, -1).float()  # [B, G, n] per image
        if flat.device.type == "cpu":  # two passes: as exact as var_mean, many times faster there
            mean = flat.mean(dim=2)
            var = (flat - mean[..., None]).square_().mean(dim=2)
        else:  # no second full-size copy on the GPU
            var, mean = torch.var_mean(flat, dim=2, unbiased=False)
        n = float(flat.shape[2])
        mean, var = mean.double(), var.double()  # [B, G]
        self.pooled += torch.stack([torch.full_like(mean, n), mean * n, (var + mean * mean) * n]).sum(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "fixed":
            per = x.shape[1] // self.num_groups
            scale = torch.rsqrt(self.var + self.eps).repeat_interleave(per)  # [C]
            shift = -self.mean.repeat_interleave(per) * scale
            if self.affine:
                scale, shift = scale * self.weight.float(), shift * self.weight.float() + self.bias.float()
            view = (1, -1) + (1,) * (x.ndim - 2)
            return torch.addcmul(shift.view(view).to(x.dtype), x, scale.view(view).to(x.dtype))
        if self.mode == "record":
            self._record(x)
        return super().forward(x)


def install_stats_group_norms(module: torch.nn.Module) -> dict[str, StatsGroupNorm]:
    """Replace every ``nn.GroupNorm`` inside ``module`` by a :class:`StatsGroupNorm` sharing its parameters
    (idempotent); returns them all by name. The module's outputs do not change."""
    for name, child in list(module.named_modules()):
        if isinstance(child, torch.nn.GroupNorm) and not isinstance(child, StatsGroupNorm) and name:
            parent_name, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent_name), attr, StatsGroupNorm.like(child))
    return {name: m for name, m in module.named_modules() if isinstance(m, StatsGroupNorm)}
