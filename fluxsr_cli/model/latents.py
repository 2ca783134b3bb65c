"""Latent geometry: image <-> VAE latent <-> FLUX tokens (docs/method.md section 1).

Pure functions, no I/O, no device choice. Shapes follow diffusers' FLUX layout: a VAE latent
[B, 16, h, w] is normalised as ``(z - shift) * scale`` and packed in 2x2 patches into tokens
[B, h/2 * w/2, 64]; each token has a position id (0, row, col) for the rotary embedding.
"""

from __future__ import annotations

import torch

VAE_FACTOR = 8  # pixels per latent cell
PATCH = 2  # latent cells per token side
PIXELS_PER_TOKEN = VAE_FACTOR * PATCH  # image sides must be multiples of 16 px


def pack(z: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] latent -> [B, h/2 * w/2, 4C] tokens (row-major 2x2 patches)."""
    b, c, h, w = z.shape
    if h % PATCH or w % PATCH:
        raise ValueError(f"latent sides must be even, got {h}x{w}")
    z = z.view(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
    z = z.permute(0, 2, 4, 1, 3, 5)  # [B, h/2, w/2, C, 2, 2]
    return z.reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, h/2 * w/2, 4C] tokens -> [B, C, h, w] latent; ``h``, ``w`` are latent sides."""
    b, n, d = tokens.shape
    if n != (h // PATCH) * (w // PATCH):
        raise ValueError(f"{n} tokens do not tile a {h}x{w} latent")
    z = tokens.view(b, h // PATCH, w // PATCH, d // (PATCH * PATCH), PATCH, PATCH)
    z = z.permute(0, 3, 1, 4, 2, 5)  # [B, C, h/2, 2, w/2, 2]
    return z.reshape(b, d // (PATCH * PATCH), h, w)


def image_ids(h: int, w: int, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Position ids [h/2 * w/2, 3] = (0, row, col) of the tokens of a ``h`` x ``w`` latent."""
    rows = torch.arange(h // PATCH, device=device, dtype=dtype)
    cols = torch.arange(w // PATCH, device=device, dtype=dtype)
    ids = torch.zeros(h // PATCH, w // PATCH, 3, device=device, dtype=dtype)
    ids[..., 1] = rows[:, None]
    ids[..., 2] = cols[None, :]
    return ids.reshape(-1, 3)


def text_ids(length: int, device: torch.device | str | None = None,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Position ids [L, 3] of the text tokens: all zeros, as FLUX uses them."""
    return torch.zeros(length, 3, device=device, dtype=dtype)


def normalize(z: torch.Tensor, shift: float, scale: float) -> torch.Tensor:
    """Raw VAE latent -> the transformer's latent space: ``(z - shift) * scale``."""
    return (z - shift) * scale


def denormalize(z: torch.Tensor, shift: float, scale: float) -> torch.Tensor:
    """Inverse of :func:`normalize`: ``z / scale + shift``."""
    return z / scale + shift


def padded_size(size: int, multiple: int = PIXELS_PER_TOKEN) -> int:
    """The smallest multiple of ``multiple`` that is >= ``size``."""
    return -(-size // multiple) * multiple


def pad_to_multiple(x: torch.Tensor, multiple: int = PIXELS_PER_TOKEN) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad an image [B, C, H, W] at the bottom/right up to multiples of ``multiple``.

    Returns the padded image and the original (H, W) to crop back to. Reflection needs the pad to
    be smaller than the side; very thin images are padded by replication instead.
    """
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, multiple) - h, padded_size(w, multiple) - w
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode), (h, w)
