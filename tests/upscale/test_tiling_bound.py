"""Tiled == whole, with bounds that a wrong tile fails.

With a model whose output at each place depends only on that place (a per-token transformer
stand-in, and a VAE stand-in that maps each 8x8 pixel cell to one latent cell and back), the
tiling's blend (weights summing to 1, zero near tile edges) must give the whole-image result up to
float rounding, through every path of ``upscale_tiled``: latent tiles with the VAE whole or tiled,
and pixel tiles. On the tiny random FLUX (attention reaches across tiles) the bound is 0.01 mean
absolute difference. Each test also runs the same path with each tile's result mirrored left-right
or shifted by one token and shows that those break the bound.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fluxsr_cli.model.student import Conditioning
from fluxsr_cli.upscale.options import ModelOptions, UpscaleOptions
from fluxsr_cli.upscale.restore import Upscaler, load_upscaler

EXACT = 1e-5  # per-token stand-ins: max absolute difference (float rounding)
TINY_MEAN = 0.01  # tiny random FLUX, latent tiles: mean absolute difference (measured 0.0024)
TILED = dict(tile="128", overlap=64, color_fix="none")  # a 160x208 output: 2 x 3 tiles


class PerTokenTransformer(torch.nn.Module):
    """Called like FluxTransformer2DModel; the velocity of each token depends on that token and t only."""

    config = SimpleNamespace(guidance_embeds=False)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mix = torch.nn.Linear(64, 64)

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids,
                guidance=None, return_dict=False):
        return (torch.tanh(self.mix(hidden_states)) * (1 + timestep[:, None, None]),)  # [B, N, 64]


class CellVAE(torch.nn.Module):
    """Called like AutoencoderKL; each 8x8 pixel cell <-> one latent cell, nothing reaches further."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.encoder = torch.nn.Conv2d(3, 16, 8, stride=8)
        self.decoder = torch.nn.ConvTranspose2d(16, 3, 8, stride=8)
        self.config = SimpleNamespace(shift_factor=0.1, scaling_factor=0.7, block_out_channels=[8, 8, 16, 16])

    def encode(self, x):
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=self.encoder(x)))

    def decode(self, z):
        return SimpleNamespace(sample=torch.tanh(self.decoder(z)))


BROKEN = {  # a tile's restored latent [n, 16, th, tw] put back wrongly
    "mirrored": lambda z: z.flip(-1),
    "shifted": lambda z: z.roll(2, dims=-1),  # one token (2 latent cells) to the right
}


def _tiled(up: Upscaler, lq: np.ndarray, options: UpscaleOptions, breakage=None) -> np.ndarray:
    """The tiled upscale; with ``breakage``, every tile's (not the whole image's) result goes through it."""
    if breakage is None:
        return up.upscale_array(lq, options)
    real = up.restore_latent
    up.restore_latent = lambda z: breakage(real(z))
    try:
        return up.upscale_array(lq, options)
    finally:
        del up.restore_latent


@pytest.fixture(scope="module")
def lq(photo) -> np.ndarray:
    return (photo[120:160, 170:222].astype(np.float32) / 255.0).copy()  # 40x52 -> 160x208


@pytest.fixture(scope="module")
def per_token() -> Upscaler:
    g = torch.Generator().manual_seed(2)
    cond = Conditioning(torch.randn(1, 4, 8, generator=g), torch.randn(1, 8, generator=g))
    return Upscaler(PerTokenTransformer().eval(), CellVAE().eval(), cond, 0.25, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("path", [dict(tile_space="latent"), dict(tile_space="latent", vae_tile="128"),
                                  dict(tile_space="pixel")], ids=["latent", "latent-vae-tiled", "pixel"])
def test_tiled_equals_whole_for_a_per_token_model(per_token, lq, path):
    whole = per_token.upscale_array(lq, UpscaleOptions(color_fix="none"))
    options = UpscaleOptions(**TILED, **path)
    tiled = _tiled(per_token, lq, options)
    assert tiled.shape == whole.shape == (160, 208, 3)
    assert np.abs(tiled - whole).max() < EXACT
    for name, breakage in BROKEN.items():
        assert np.abs(_tiled(per_token, lq, options, breakage) - whole).max() > 100 * EXACT, name


def test_tiled_is_close_to_whole_on_the_tiny_flux(tiny_ckpt, lq):
    up = load_upscaler(ModelOptions(model=str(tiny_ckpt), device="cpu"))
    whole = up.upscale_array(lq, UpscaleOptions(color_fix="none"))
    options = UpscaleOptions(**TILED)
    assert np.abs(_tiled(up, lq, options) - whole).mean() < TINY_MEAN
    for name, breakage in BROKEN.items():  # measured 0.085 and 0.053
        assert np.abs(_tiled(up, lq, options, breakage) - whole).mean() > 2 * TINY_MEAN, name
