"""Tile geometry and blending: pure properties, no model."""

from __future__ import annotations

import pytest
import torch

from fluxsr_cli.upscale.tiling import BLENDS, axis_weights, tile_boxes, tile_starts, tile_weights, tiled_apply

CASES = [(64, 16, 4, 1), (100, 32, 8, 2), (130, 64, 16, 2), (17, 16, 4, 1), (16, 16, 4, 1), (8, 16, 4, 2),
         (512, 128, 32, 2), (151, 100, 50, 1), (96, 32, 0, 2), (300, 64, 31, 4), (66, 32, 16, 2)]


@pytest.mark.parametrize("length,tile,overlap,multiple", CASES)
def test_starts_cover_same_size_anchored_and_overlap(length, tile, overlap, multiple):
    starts = tile_starts(length, tile, overlap, multiple)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(s % multiple == 0 for s in starts)
    assert all(b > a for a, b in zip(starts, starts[1:], strict=False))
    for a, b in zip(starts, starts[1:], strict=False):
        assert a + size - b >= min(overlap, size - multiple)  # at least the overlap asked for
    covered = torch.zeros(length, dtype=torch.bool)
    for s in starts:
        covered[s:s + size] = True
    assert covered.all()


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("h,w,tile,overlap", [(40, 56, 16, 8), (130, 100, 64, 16), (33, 70, 32, 12), (20, 20, 32, 8)])
def test_weights_sum_to_exactly_one_and_are_one_at_borders(blend, h, w, tile, overlap):
    boxes = tile_boxes(h, w, tile, overlap)
    weights = tile_weights(boxes, h, w, blend)
    total = torch.zeros(h, w, dtype=torch.float32)
    for box, wt in zip(boxes, weights, strict=True):
        assert wt.dtype == torch.float32 and wt.shape == (box.height, box.width)
        assert wt.min() >= 0 and wt.max() <= 1
        total[box.slices] += wt
    assert torch.equal(total, torch.ones(h, w))  # exactly, not approximately
    # the image border and the corners belong wholly to the tile that holds them
    assert weights[0][0, 0] == 1 and weights[-1][-1, -1] == 1
    # a tile weighs 1 in its core (away from all neighbours)
    first = tile_boxes(h, w, tile, overlap)[0]
    assert weights[0][: first.height // 8 + 1, : first.width // 8 + 1].eq(1).all()


def test_reversed_tiles_sum_to_one_in_any_order():
    boxes = tile_boxes(97 * 2, 61 * 2, 48, 20, multiple=2)
    weights = tile_weights(boxes, 194, 122, "gaussian")
    total = torch.zeros(194, 122)
    for box, wt in reversed(list(zip(boxes, weights, strict=True))):
        total[box.slices] += wt
    assert torch.equal(total, torch.ones(194, 122))


def test_ramp_is_smooth_and_monotone():
    w = axis_weights([0, 24, 48], 32, 80, "cosine")
    assert torch.all(w[0, 1:] <= w[0, :-1]) and torch.all(w[-1, 1:] >= w[-1, :-1])
    assert w[0, 31] == 0 and w[1, 0] == 0  # tile edges inside the image carry no weight


def test_gap_is_refused():
    with pytest.raises(ValueError):
        axis_weights([0, 40], 32, 72)


def _tokenwise(x: torch.Tensor) -> torch.Tensor:
    """A local per-token model: 1x1 channel mixing and a nonlinearity (no spatial reach)."""
    mix = torch.linspace(-1, 1, x.shape[1] * 5).view(5, x.shape[1])
    return torch.tanh(torch.einsum("oc,nchw->nohw", mix, x)) + x[:, :1] ** 2


@pytest.mark.parametrize("batch", [1, 3])
def test_tiled_equals_untiled_for_a_per_token_model(batch):
    x = torch.randn(1, 4, 52, 70, generator=torch.Generator().manual_seed(0))
    tiled = tiled_apply(_tokenwise, x, (52, 70), tile=16, overlap=6, batch=batch, multiple=2)
    torch.testing.assert_close(tiled, _tokenwise(x), atol=1e-5, rtol=0)


def test_tiled_equals_untiled_for_a_convolution_with_reach_below_the_overlap():
    g = torch.Generator().manual_seed(1)
    kernels = [torch.randn(4, 4, 3, 3, generator=g) * 0.3 for _ in range(3)]  # reach 3 cells

    def conv(x: torch.Tensor) -> torch.Tensor:
        for k in kernels:
            x = torch.tanh(torch.nn.functional.conv2d(x, k, padding=1))
        return x

    x = torch.randn(1, 4, 64, 90, generator=g)
    for blend in BLENDS:
        tiled = tiled_apply(conv, x, (64, 90), tile=32, overlap=12, blend=blend)  # a quarter of 12 = 3
        torch.testing.assert_close(tiled, conv(x), atol=1e-5, rtol=0)
    x = x[..., :60, :60]
    crude = tiled_apply(conv, x, (60, 60), tile=32, overlap=4)  # two tiles per side, 4 cells overlap
    assert (crude - conv(x)).abs().max() > 1e-3  # the test can fail: too little overlap shows


def test_upsampling_model_and_streamed_source():
    """Out factor 8 (a decoder) and a callable source (streamed input) give the same as whole."""
    x = torch.randn(1, 3, 20, 36, generator=torch.Generator().manual_seed(2))

    def up(t: torch.Tensor) -> torch.Tensor:
        return torch.repeat_interleave(torch.repeat_interleave(t * 2 + 1, 8, dim=2), 8, dim=3)

    calls = []

    def read(box):
        calls.append(box)
        return x[(..., *box.slices)]

    tiled = tiled_apply(up, read, (20, 36), tile=12, overlap=4, out_factor=8, batch=2)
    torch.testing.assert_close(tiled, up(x), atol=1e-5, rtol=0)
    assert len(calls) == len(tile_boxes(20, 36, 12, 4)) and all(b.height == 12 for b in calls)


def test_one_tile_gives_the_untiled_bytes():
    x = torch.randn(1, 4, 16, 12, generator=torch.Generator().manual_seed(3))
    out = tiled_apply(_tokenwise, x, (16, 12), tile=16, overlap=4)
    assert out.numpy().tobytes() == _tokenwise(x).numpy().tobytes()
