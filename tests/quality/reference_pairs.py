"""Fixed image pairs for the learned metrics' pinned values: real photos, degraded with integers only.

Real photos from scikit-image, cropped to 100x132 (not a multiple of the pooling strides, so the floor
of every pooling step counts) and degraded with integer arithmetic only (hashed noise, a binomial
blur, box down-up scaling, posterisation), so the same bytes come out on any machine and in the
scratch environments where the reference values were computed (saved there with ``numpy.savez``).
"""

from __future__ import annotations

import numpy as np
import torch
from skimage import data

H, W = 100, 132


def _crop(name: str, top: int, left: int) -> np.ndarray:
    return getattr(data, name)()[top : top + H, left : left + W].astype(np.int64)  # [H, W, 3]


def _hash_noise(shape: tuple[int, ...], seed: int, amplitude: int) -> np.ndarray:
    """Integers in [-amplitude, amplitude] from a hash of the pixel index: the same on any machine."""
    h = (np.arange(int(np.prod(shape)), dtype=np.uint64) * np.uint64(2654435761) + np.uint64(seed)) % np.uint64(2**32)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x45D9F3B)) % np.uint64(2**32)
    h ^= h >> np.uint64(16)
    return (h % np.uint64(2 * amplitude + 1)).astype(np.int64).reshape(shape) - amplitude


def _blur(x: np.ndarray) -> np.ndarray:
    """Separable binomial [1, 4, 6, 4, 1] / 16 blur, edges replicated, rounded half up."""
    k = np.array([1, 4, 6, 4, 1], dtype=np.int64)
    p = np.pad(x, ((2, 2), (2, 2), (0, 0)), mode="edge")
    rows = sum(k[i] * p[i : i + H] for i in range(5))  # [H, W + 4, 3]
    both = sum(k[i] * rows[:, i : i + W] for i in range(5))  # [H, W, 3], weights sum to 256
    return (both + 128) // 256


def _down_up(x: np.ndarray, f: int = 4) -> np.ndarray:
    """Box average over f x f blocks, then nearest upscaling back (H, W are multiples of 4)."""
    blocks = x.reshape(H // f, f, W // f, f, 3).sum(axis=(1, 3))
    return ((blocks + f * f // 2) // (f * f)).repeat(f, axis=0).repeat(f, axis=1)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0, 255).astype(np.uint8)


def reference_pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (a, b), uint8 [H, W, 3] images."""
    astronaut, coffee = _crop("astronaut", 40, 170), _crop("coffee", 150, 240)
    chelsea, rocket = _crop("chelsea", 60, 140), _crop("rocket", 200, 260)
    return {
        "astronaut_noise": (astronaut, astronaut + _hash_noise(astronaut.shape, 1, 12)),
        "coffee_blur": (coffee, _blur(coffee)),
        "chelsea_down_up": (chelsea, _down_up(chelsea)),
        "rocket_posterised_noise": (rocket, (rocket // 32) * 32 + 16 + _hash_noise(rocket.shape, 2, 6)),
        "chelsea_blur_noise": (chelsea, _blur(chelsea) + _hash_noise(chelsea.shape, 3, 8)),
        "astronaut_vs_coffee": (astronaut, coffee),
    }


def pairs_as_tensors() -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The pair names and the two sides as float32 [N, 3, H, W] in [0, 1] (uint8 / 255)."""
    pairs = {k: (_u8(a), _u8(b)) for k, (a, b) in reference_pairs().items()}
    names = list(pairs)

    def stack(i: int) -> torch.Tensor:
        x = np.stack([pairs[n][i] for n in names]).astype(np.float32) / 255
        return torch.from_numpy(x).permute(0, 3, 1, 2)  # [N, 3, H, W] in [0, 1]

    return names, stack(0), stack(1)
