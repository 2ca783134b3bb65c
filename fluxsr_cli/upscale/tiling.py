"""Tiles and their blending (docs/method.md section 7): pure geometry plus one generic tiled apply.

Tiles live on a *grid* (latent cells for the transformer and the VAE). Every tile has the same
shape, so a batch of tiles is one tensor and a compiled model sees one shape; the first tile of a
row/column starts at 0, the last ends exactly at the border, and the ones between are spaced
evenly, so every overlap is at least the one asked for.

Blending is a partition of unity built by telescoping. Along one axis, tile ``i`` ramps in over
``[a_i, b_i)``, the middle half of its overlap with tile ``i - 1`` (a quarter of the overlap at
each end keeps weight 0, so a model whose reach is at most that quarter gives exactly the untiled
result, and the least reliable pixels at tile edges never count); with ``c_i`` the ramp (0 before, 1 after,
``c_0 = 1``, ``c_n = 0``) the weight of tile ``i`` is ``w_i = c_i - c_{i+1}``. The weights are
therefore 1 in tile cores and at the image border and sum to 1 by construction. Ramp values are
multiples of 2**-12, so 2-D weights ``w_y * w_x`` are multiples of 2**-24 and their float32 sum is
exactly 1.0, in any order. Outputs are accumulated in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fluxsr_cli.model.latents import padded_size
from fluxsr_cli.progress import ProgressFn, no_progress

BLENDS = ("cosine", "gaussian", "linear")
RAMP_STEPS = 2**12  # ramp values are multiples of 1/RAMP_STEPS
GAUSSIAN_SIGMA = 0.25  # of the ramp width: the --blend gaussian ramp is a normal CDF with this sigma


@dataclass(frozen=True)
class Box:
    """A rectangle ``[top, top + height) x [left, left + width)`` in some unit (cells or pixels)."""

    top: int
    left: int
    height: int
    width: int

    def scaled(self, factor: int) -> Box:
        return Box(self.top * factor, self.left * factor, self.height * factor, self.width * factor)

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def tile_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Starts of same-size tiles covering ``[0, length)``: first at 0, last at ``length - tile``.

    ``tile``, ``length`` and the starts are multiples of ``multiple``; consecutive tiles overlap by at
    least ``overlap``. A side no longer than the tile gives one tile (of size ``length``).
    """
    if tile <= 0 or tile % multiple or length % multiple:
        raise ValueError(f"tile {tile} and length {length} must be positive multiples of {multiple}")
    if length <= tile:
        return [0]
    stride = max(multiple, (tile - min(overlap, tile - multiple)) // multiple * multiple)
    n = -(-(length - tile) // stride) + 1
    span = (length - tile) // multiple  # in units of ``multiple``
    starts = [(i * span // (n - 1)) * multiple for i in range(n)]
    return sorted(set(starts))


def tile_boxes(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> list[Box]:
    """Row-major boxes of the tiles of a ``height`` x ``width`` grid, all of one shape."""
    th, tw = min(tile, height), min(tile, width)
    return [Box(top, left, th, tw)
            for top in tile_starts(height, tile, overlap, multiple)
            for left in tile_starts(width, tile, overlap, multiple)]


def ramp(n: int, blend: str = "cosine") -> torch.Tensor:
    """``n`` increasing ramp values in [0, 1] (float64, multiples of 2**-12), sampled at pixel centres."""
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    if blend == "cosine":
        r = 0.5 - 0.5 * torch.cos(math.pi * t)
    elif blend == "linear":
        r = t
    else:
        phi = lambda u: 0.5 * (1.0 + torch.erf(u / (GAUSSIAN_SIGMA * math.sqrt(2.0))))  # noqa: E731
        lo, hi = phi(torch.tensor(-0.5, dtype=torch.float64)), phi(torch.tensor(0.5, dtype=torch.float64))
        r = (phi(t - 0.5) - lo) / (hi - lo)
    return torch.round(r * RAMP_STEPS) / RAMP_STEPS


def axis_weights(starts: list[int], size: int, length: int, blend: str = "cosine") -> torch.Tensor:
    """Weights [n_tiles, size] of same-size tiles at ``starts`` along one axis (float64, sum 1).

    Row ``i`` is the weight of tile ``i`` over its own extent ``[starts[i], starts[i] + size)``.
    """
    n = len(starts)
    if starts[0] != 0 or starts[-1] + size != length or any(b <= a for a, b in zip(starts, starts[1:], strict=False)):
        raise ValueError(f"tiles {starts} of size {size} do not cover [0, {length}) in order")
    c = torch.zeros(n + 1, length, dtype=torch.float64)  # c[i]: how far tile i has taken over
    c[0] = 1.0
    ramp_end = 0
    for i in range(1, n):
        if starts[i] > starts[i - 1] + size:
            raise ValueError(f"tiles at {starts[i - 1]} and {starts[i]} of size {size} leave a gap")
        margin = (starts[i - 1] + size - starts[i]) // 4  # a quarter of the overlap at each end stays out
        b = max(starts[i - 1] + size - margin, ramp_end)
        a = min(max(starts[i] + margin, ramp_end), b)  # ramp in [a, b): the middle half of the overlap
        c[i, b:] = 1.0
        c[i, a:b] = ramp(b - a, blend)
        ramp_end = b
    w = c[:-1] - c[1:]
    return torch.stack([w[i, s:s + size] for i, s in enumerate(starts)])


class TileWeights:
    """Blend weights of the boxes of :func:`tile_boxes`, made one box at a time.

    Only the two axis profiles are stored; a box's weight [th, tw] is their outer product, so the
    memory for weights does not grow with the number of tiles.
    """

    def __init__(self, boxes: list[Box], height: int, width: int, blend: str = "cosine") -> None:
        self.boxes = boxes
        self.tops = sorted({b.top for b in boxes})
        self.lefts = sorted({b.left for b in boxes})
        self.wy = axis_weights(self.tops, boxes[0].height, height, blend)
        self.wx = axis_weights(self.lefts, boxes[0].width, width, blend)

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, i: int) -> torch.Tensor:
        b = self.boxes[i]
        return (self.wy[self.tops.index(b.top), :, None] * self.wx[self.lefts.index(b.left), None, :]).float()


def tile_weights(boxes: list[Box], height: int, width: int, blend: str = "cosine") -> list[torch.Tensor]:
    """Float32 weights [th, tw] for each box of :func:`tile_boxes` (same order); they sum to exactly 1."""
    weights = TileWeights(boxes, height, width, blend)
    return [weights[i] for i in range(len(weights))]


def default_overlap(tile: int) -> int:
    """25 % of the tile, at least 128 px, in output pixels (docs/method.md section 7)."""
    return max(128, tile // 4)


def tile_overlap(tile: int, overlap: int | None) -> int:
    """The overlap the restore uses with ``tile`` px tiles: ``overlap`` (else :func:`default_overlap`) in
    whole padded units of output pixels, at most half the tile."""
    return min(padded_size(overlap if overlap is not None else default_overlap(tile)), tile // 2)


Source = torch.Tensor | Callable[[Box], torch.Tensor]


def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], source: Source, grid: tuple[int, int], *,
                tile: int, overlap: int, blend: str = "cosine", batch: int = 1, multiple: int = 1,
                in_factor: int = 1, out_factor: int = 1, out: torch.Tensor | None = None,
                device: torch.device | str = "cpu", progress: ProgressFn = no_progress,
                stage: str = "tiles") -> torch.Tensor:
    """Apply ``fn`` tile by tile over a ``grid`` = (h, w) of cells and blend the results.

    ``source`` is a tensor [1, C, h * in_factor, w * in_factor] or a function that returns the crop
    of such a tensor for a box in its units (so huge inputs can be streamed). ``fn`` maps a batch of
    up to ``batch`` crops [n, C, th * in_factor, tw * in_factor] to [n, C', th * out_factor, tw *
    out_factor] and must not change its input in place (a single crop may be a view of ``source``).
    ``tile`` and ``overlap`` are in cells. Returns ``out`` (allocated as float32 zeros
    [1, C', h * out_factor, w * out_factor] on ``device`` if not given; a given one must hold zeros). When one tile
    covers the grid, ``fn`` runs once on the whole input and its float32 result is returned unchanged.
    """
    h, w = grid
    read = source if callable(source) else (lambda box: source[(..., *box.slices)])
    boxes = tile_boxes(h, w, tile, overlap, multiple)
    if len(boxes) == 1 and out is None:
        progress(stage, 0, 1)
        result = fn(read(boxes[0].scaled(in_factor))).float()
        progress(stage, 1, 1)
        return result
    weights = TileWeights([b.scaled(out_factor) for b in boxes], h * out_factor, w * out_factor, blend)
    progress(stage, 0, len(boxes))
    for first in range(0, len(boxes), batch):
        group = boxes[first:first + batch]
        crops = [read(b.scaled(in_factor)) for b in group]
        crops = crops[0] if len(crops) == 1 else torch.cat(crops)  # one crop: no copy
        results = fn(crops)  # [n, C', th * out_factor, tw * out_factor]
        if out is None:
            out = torch.zeros(1, results.shape[1], h * out_factor, w * out_factor, dtype=torch.float32, device=device)
        for k, box in enumerate(group):
            target = out[(0, slice(None), *box.scaled(out_factor).slices)]
            if results.device == out.device:
                target.addcmul_(results[k].float(), weights[first + k].to(out.device))
            else:
                target += (results[k].float() * weights[first + k].to(results.device)).to(out.device)
        del crops, results
        progress(stage, first + len(group), len(boxes))
    return out
