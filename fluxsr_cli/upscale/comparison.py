"""The bicubic upscale beside FluxSR's: what ``fluxsr upscale --compare`` writes and the demo's "before".

"Before" is the bicubic upscale the restore itself starts from (:func:`~fluxsr_cli.upscale.bicubic.bicubic_upsample`),
so the two pictures differ by exactly what the model did. Outputs larger than
:data:`~fluxsr_cli.images.compare.MAX_PANEL` px a side are compared on a centred crop at 100 %.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fluxsr_cli.errors import InputError
from fluxsr_cli.images.compare import MAX_PANEL, crop_box, side_by_side
from fluxsr_cli.images.reading import read_image
from fluxsr_cli.images.writing import write_image
from fluxsr_cli.upscale import bicubic
from fluxsr_cli.upscale.tiling import Box


def bicubic_rgb(rgb: np.ndarray, scale: int, box: Box | None = None) -> np.ndarray:
    """The restore's bicubic upscale of ``rgb`` [h, w, 3] in [0, 1]: [h s, w s, 3] float32, or only ``box``
    of it (pixels of the upscale; only the input pixels the box needs are upsampled)."""
    lq = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    if box is None:
        up = bicubic.bicubic_upsample(lq, scale)
    else:
        up = bicubic.bicubic_crop(lq, scale, (lq.shape[-2] * scale, lq.shape[-1] * scale), box).clamp_(0.0, 1.0)
    return up[0].permute(1, 2, 0).numpy()


def comparison(lq: np.ndarray, result: np.ndarray, scale: int, max_panel: int = MAX_PANEL) -> np.ndarray:
    """The bicubic upscale of ``lq`` and ``result`` [h s, w s, 3] side by side, labelled "bicubic" and
    "FluxSR"; for outputs over ``max_panel`` px a side, the centred ``max_panel`` crop of each at 100 %."""
    size = (lq.shape[0] * scale, lq.shape[1] * scale)
    if result.shape[:2] != size:
        raise ValueError(f"the result is {result.shape[1]}x{result.shape[0]}, expected {size[1]}x{size[0]} "
                         f"(the input x{scale})")
    box = Box(*crop_box(size, max_panel))
    whole = (box.height, box.width) == size
    before = bicubic_rgb(lq, scale, None if whole else box)
    after = np.asarray(result, np.float32)[box.slices]
    where = "" if whole else f", centre {box.width}x{box.height} at 100 %"
    return side_by_side(before, after, (f"bicubic x{scale}{where}", f"FluxSR x{scale}{where}"))


def write_comparison(src: str | Path, result: str | Path, dst: str | Path, scale: int, *,
                     overwrite: bool = False, max_panel: int = MAX_PANEL) -> tuple[int, int]:
    """Write :func:`comparison` of the input ``src`` and its upscale ``result`` (files) to ``dst``
    atomically (its suffix picks the format); return its (width, height)."""
    lq, out = read_image(src).rgb, read_image(result).rgb
    if out.shape[:2] != (lq.shape[0] * scale, lq.shape[1] * scale):
        raise InputError(f"{result}: is {out.shape[1]}x{out.shape[0]}, not {src} x{scale}; "
                         "compare an input with its own upscale")
    sheet = comparison(lq, out, scale, max_panel)
    write_image(dst, sheet, overwrite=overwrite)
    return sheet.shape[1], sheet.shape[0]
