"""Latent packing agrees with diffusers' FLUX layout; padding and normalisation round-trip."""

import pytest
import torch

from fluxsr_cli.model import latents


@pytest.mark.parametrize("h,w", [(2, 2), (6, 10), (16, 4)])
def test_pack_unpack_round_trip(h, w):
    z = torch.randn(2, 16, h, w)
    tokens = latents.pack(z)
    assert tokens.shape == (2, h * w // 4, 64)
    assert torch.equal(latents.unpack(tokens, h, w), z)


def test_pack_matches_diffusers_layout():
    """Our tokens and position ids are exactly the ones FluxPipeline builds (its private helpers,
    used here only as the reference)."""
    from diffusers import FluxPipeline

    z = torch.randn(1, 16, 12, 8)
    assert torch.equal(latents.pack(z), FluxPipeline._pack_latents(z, 1, 16, 12, 8))
    assert torch.equal(latents.unpack(latents.pack(z), 12, 8),
                       FluxPipeline._unpack_latents(latents.pack(z), 12 * 8, 8 * 8, 8))
    ref = FluxPipeline._prepare_latent_image_ids(1, 6, 4, "cpu", torch.float32)
    assert torch.equal(latents.image_ids(12, 8), ref)


def test_token_order_is_row_major_patches():
    z = torch.arange(16 * 4 * 4, dtype=torch.float32).reshape(1, 16, 4, 4)
    tokens = latents.pack(z)
    # token 1 is the patch at row 0, col 1: latent cells (0..1, 2..3) of every channel
    assert torch.equal(tokens[0, 1].reshape(16, 2, 2), z[0, :, 0:2, 2:4])


def test_pack_rejects_odd_sides():
    with pytest.raises(ValueError):
        latents.pack(torch.zeros(1, 16, 3, 4))


def test_normalize_round_trip():
    z = torch.randn(1, 16, 4, 4)
    back = latents.denormalize(latents.normalize(z, 0.1159, 0.3611), 0.1159, 0.3611)
    torch.testing.assert_close(back, z)


@pytest.mark.parametrize("h,w", [(37, 53), (16, 16), (148, 212), (5, 3)])
def test_pad_to_multiple(h, w):
    x = torch.rand(1, 3, h, w)
    padded, size = latents.pad_to_multiple(x)
    assert size == (h, w)
    assert padded.shape[-2] % 16 == 0 and padded.shape[-1] % 16 == 0
    assert padded.shape[-2] - h < 16 and padded.shape[-1] - w < 16
    assert torch.equal(padded[..., :h, :w], x)  # padding only at the bottom/right, content untouched
