"""The bicubic upscale the restore starts from, and crops of it for images too large to upscale whole.

:func:`bicubic_upsample` is PyTorch's bicubic (OpenCV's on the CPU, the same function, faster);
:func:`bicubic_crop` makes one box of the reflect-padded upscale from the input rows and columns it
needs; :class:`BicubicSource` serves the boxes of a tiled upscale from bands of rows made once.
Training data (:mod:`fluxsr_cli.train.pairs`) uses the same upsampling as inference.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fluxsr_cli.upscale.tiling import Box

FILL_BAND_BYTES = 16 * 2**20  # a kept whole upscale is made in bands of this size (no full-size temporaries)


def bicubic_upsample(lq: torch.Tensor, scale: int) -> torch.Tensor:
    """[B, 3, h, w] in [0, 1] -> [B, 3, h*scale, w*scale] bicubic, clamped. Training data uses it too.

    PyTorch's bicubic (``align_corners=False``, a = -0.75, clamped borders). On the CPU, for float32
    without autograd, OpenCV's ``INTER_CUBIC`` computes the same function 3-9x faster (measured on
    2 cores: 128 -> 512 px 0.4 vs 3.9 ms, 1024 -> 4096 px 82 vs 256 ms). The two agree to 3e-7 for
    power-of-two scales; for others (x3, x5, ...) PyTorch's float32 source coordinates drift, by up
    to ~1e-4 at 4096 px, while OpenCV stays within 2e-7 of a float64 reference: there the CPU result
    is the more exact one and differs from the GPU's by that much.
    """
    if scale == 1:
        return lq
    if lq.device.type == "cpu" and lq.dtype == torch.float32 and not lq.requires_grad:
        return _bicubic_opencv(lq, scale).clamp_(0.0, 1.0)
    return F.interpolate(lq, scale_factor=scale, mode="bicubic", align_corners=False).clamp_(0.0, 1.0)


def _bicubic_opencv(lq: torch.Tensor, scale: int) -> torch.Tensor:
    """:func:`bicubic_upsample` of a CPU float32 tensor through ``cv2.resize``, unclamped: one channel
    plane at a time, written straight into the NCHW result (no HWC copies), with as many threads
    as PyTorch is allowed."""
    import cv2

    b, c, h, w = lq.shape
    out = torch.empty(b, c, h * scale, w * scale, dtype=torch.float32, device="cpu")
    src, dst = lq.contiguous().numpy(), out.numpy()
    cv2.setNumThreads(torch.get_num_threads())
    for i in range(b):
        for j in range(c):
            made = cv2.resize(src[i, j], (w * scale, h * scale), dst=dst[i, j], interpolation=cv2.INTER_CUBIC)
            if not np.shares_memory(made, dst[i, j]):  # OpenCV made its own array instead of filling dst
                dst[i, j] = made
    return out


def _source_index(n: int, length: int, mode: str, device: torch.device) -> torch.Tensor:
    """Where each index of a side padded to ``n`` reads from the unpadded side (as :func:`pad_to_multiple`)."""
    i = torch.arange(n, device=device)
    if mode == "reflect":
        return torch.where(i < length, i, 2 * (length - 1) - i)
    return i.clamp(max=length - 1)


def _take(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """``x.index_select(dim, index)``, as a plain slice when ``index`` is a run of consecutive indices."""
    first = int(index[0])
    if int(index[-1]) - first == index.numel() - 1 and bool((index.diff() == 1).all()):
        return x.narrow(dim, first, index.numel())
    return x.index_select(dim, index)


def bicubic_crop(lq: torch.Tensor, scale: int, size: tuple[int, int], box: Box) -> torch.Tensor:
    """``box`` of the bicubic upscale of ``lq`` [1, 3, h, w], reflect-padded to ``size`` (pixels).

    Equals cropping ``pad_to_multiple(bicubic_upsample(lq, scale))`` (to float rounding) but only
    upsamples the input rows and columns the box needs, so huge upscales are never held whole.
    """
    h, w = lq.shape[-2] * scale, lq.shape[-1] * scale
    mode = "reflect" if size[0] - h < h and size[1] - w < w else "replicate"
    rows = _source_index(size[0], h, mode, lq.device)[box.top:box.top + box.height]
    cols = _source_index(size[1], w, mode, lq.device)[box.left:box.left + box.width]
    margin = 3  # LR pixels: bicubic reads two either side
    r0, r1 = max(0, int(rows.min()) // scale - margin), min(lq.shape[-2], int(rows.max()) // scale + margin + 1)
    c0, c1 = max(0, int(cols.min()) // scale - margin), min(lq.shape[-1], int(cols.max()) // scale + margin + 1)
    up = bicubic_upsample(lq[..., r0:r1, c0:c1].float(), scale)
    return _take(_take(up, rows - r0 * scale, -2), cols - c0 * scale, -1)


class BicubicSource:
    """Crops (boxes in px) of the padded bicubic upscale, made one band of rows at a time.

    Tiles are read row by row, and every tile of a row has the same rows: the band of those rows is
    upsampled once, across the whole width, and the tiles are sliced out of it (instead of upsampling
    each tile's crop, which for overlapping tiles repeats most of the work). A band larger than
    ``max_band_bytes`` is not kept: each box is then made on its own (:func:`bicubic_crop`). When
    the whole padded upscale fits ``max_band_bytes`` it is made once, on the first read, and kept
    (:attr:`whole_fits`): the passes of a tiled VAE and the colour fix then all slice one image. It
    is filled band by band (:data:`FILL_BAND_BYTES`), so making it needs no full-size temporaries.
    """

    def __init__(self, lq: torch.Tensor, scale: int, size: tuple[int, int], max_band_bytes: int = 64 * 2**20) -> None:
        self.lq, self.scale, self.size, self.max_band_bytes = lq, scale, size, max_band_bytes
        self.rows: tuple[int, int] | None = None
        self.band: torch.Tensor | None = None

    def clear(self) -> None:
        """Drop the kept band."""
        self.rows, self.band = None, None

    @property
    def whole_fits(self) -> bool:
        """Whether the whole padded upscale fits the band budget (then it is made once and kept)."""
        return self.size[0] * self.size[1] * self.lq.shape[1] * 4 <= self.max_band_bytes

    def _whole(self) -> torch.Tensor:
        (height, width), channels = self.size, self.lq.shape[1]
        rows = max(16, FILL_BAND_BYTES // (width * channels * 4))
        if rows >= height:
            return bicubic_crop(self.lq, self.scale, self.size, Box(0, 0, height, width))
        whole = torch.empty(1, channels, height, width, device=self.lq.device)
        for top in range(0, height, rows):
            n = min(rows, height - top)
            whole[..., top:top + n, :] = bicubic_crop(self.lq, self.scale, self.size, Box(top, 0, n, width))
        return whole

    def __call__(self, box: Box) -> torch.Tensor:
        if self.whole_fits:  # one band: the whole image
            if self.rows is None:
                self.band = self._whole()
                self.rows = (0, self.size[0])
            return self.band[..., box.top:box.top + box.height, box.left:box.left + box.width]
        if box.height * self.size[1] * self.lq.shape[1] * 4 > self.max_band_bytes:
            return bicubic_crop(self.lq, self.scale, self.size, box)
        if self.rows is None or not self.rows[0] <= box.top <= box.top + box.height <= self.rows[1]:
            self.band = None  # free the old band before making the new one
            self.band = bicubic_crop(self.lq, self.scale, self.size, Box(box.top, 0, box.height, self.size[1]))
            self.rows = (box.top, box.top + box.height)
        top = box.top - self.rows[0]
        return self.band[..., top:top + box.height, box.left:box.left + box.width]
