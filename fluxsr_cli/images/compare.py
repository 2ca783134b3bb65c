"""Pictures to judge an upscaler by: two results side by side, labelled tiles, contact sheets.

Pure functions on float RGB arrays ([H, W, 3] in [0, 1], what :func:`~fluxsr_cli.images.reading.read_image`
gives) that return a new array; labels are drawn with Pillow's default font. Writing the result is the
caller's (:func:`~fluxsr_cli.images.writing.write_image` writes atomically). Used by ``fluxsr upscale
--compare`` (:func:`side_by_side`) and ``fluxsr eval --grid`` (:func:`contact_sheet`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_HEIGHT = 28  # px: the band above each panel or cell
FONT_SIZE = 18
GAP = 8  # px between panels and cells
BACKGROUND = 0.12  # the bands and gaps: a dark grey, so white text and most photos stand out
INK = (255, 255, 255)
MAX_PANEL = 1024  # px: a larger output is shown as a centred crop at 100 %


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def fit_text(text: str, width: int, size: int = FONT_SIZE) -> str:
    """``text``, cut at the end with an ellipsis until it is at most ``width`` px wide in the label font."""
    font = _font(size)
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…" if text else ""


def label_band(text: str, width: int, height: int = LABEL_HEIGHT, size: int = FONT_SIZE) -> np.ndarray:
    """A dark band [height, width, 3] with ``text`` in white, left-aligned, cut to fit the width."""
    band = Image.new("RGB", (width, height), (round(BACKGROUND * 255),) * 3)
    font = _font(size)
    text = fit_text(text, width - 12, size)
    draw = ImageDraw.Draw(band)
    top, bottom = font.getbbox("Ag")[1::2]  # centre a line of capitals and descenders, whatever the text
    draw.text((6, (height - (bottom + top)) / 2), text, fill=INK, font=font)
    return np.asarray(band, np.float32) / 255.0


def labelled(rgb: np.ndarray, text: str) -> np.ndarray:
    """``rgb`` [H, W, 3] with a label band above it: [LABEL_HEIGHT + H, W, 3]."""
    return np.concatenate([label_band(text, rgb.shape[1]), np.asarray(rgb, np.float32)], axis=0)


def crop_box(size: tuple[int, int], max_panel: int = MAX_PANEL) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the centred crop at most ``max_panel`` px a side of a ``size`` = (h, w)
    image; the whole image when it fits."""
    h, w = size
    ch, cw = min(h, max_panel), min(w, max_panel)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _row(panels: Sequence[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Panels of one height, left to right, with ``gap`` px of background between them."""
    h = panels[0].shape[0]
    spacer = np.full((h, gap, 3), BACKGROUND, np.float32)
    parts: list[np.ndarray] = []
    for i, p in enumerate(panels):
        parts += [spacer] if i else []
        parts.append(np.asarray(p, np.float32))
    return np.concatenate(parts, axis=1)


def side_by_side(left: np.ndarray, right: np.ndarray, labels: tuple[str, str] = ("bicubic", "FluxSR"),
                 gap: int = GAP) -> np.ndarray:
    """Two images of one size [H, W, 3], each under its label: [LABEL_HEIGHT + H, 2 W + gap, 3]."""
    if left.shape != right.shape:
        raise ValueError(f"side_by_side wants two images of one size, got {left.shape} and {right.shape}")
    return _row([labelled(left, labels[0]), labelled(right, labels[1])], gap)


def thumbnail(rgb: np.ndarray, cell: int) -> np.ndarray:
    """``rgb`` shrunk (never enlarged) to fit ``cell`` x ``cell`` px, centred on the background."""
    h, w = rgb.shape[:2]
    k = min(1.0, cell / max(h, w))
    tw, th = max(1, round(w * k)), max(1, round(h * k))
    image = Image.fromarray(np.clip(np.rint(np.asarray(rgb) * 255), 0, 255).astype(np.uint8))
    if (tw, th) != (w, h):
        image = image.resize((tw, th), Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = np.full((cell, cell, 3), BACKGROUND, np.float32)
    top, left = (cell - th) // 2, (cell - tw) // 2
    out[top:top + th, left:left + tw] = np.asarray(image, np.float32) / 255.0
    return out


def contact_sheet(rows: Sequence[tuple[str, Sequence[tuple[np.ndarray, str]]]], cell: int = 256,
                  gap: int = GAP) -> np.ndarray:
    """Rows of labelled thumbnails under a title each: ``[(title, [(rgb, label), ...]), ...]``.

    Every cell is ``cell`` x ``cell`` px (images shrunk to fit), under a label band; each row is
    under a title band as wide as the sheet. The sheet is as wide as the longest row:
    ``n cell + (n - 1) gap`` px, and ``sum(2 LABEL_HEIGHT + cell) + (rows - 1) gap`` px high.
    """
    if not rows or not any(items for _, items in rows):
        raise ValueError("contact_sheet needs at least one image")
    n = max(len(items) for _, items in rows)
    width = n * cell + (n - 1) * gap
    parts: list[np.ndarray] = []
    for i, (title, items) in enumerate(rows):
        if i:
            parts.append(np.full((gap, width, 3), BACKGROUND, np.float32))
        parts.append(label_band(title, width))
        cells = [labelled(thumbnail(rgb, cell), text) for rgb, text in items]
        cells += [np.full((LABEL_HEIGHT + cell, cell, 3), BACKGROUND, np.float32)] * (n - len(items))
        parts.append(_row(cells, gap))
    return np.concatenate(parts, axis=0)
