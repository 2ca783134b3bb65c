"""Writing an upscaled image back the way its input was: format, mode, bit depth and metadata.

``write_image`` writes float RGB (plus alpha) atomically, in the format the suffix names; with the
input as read (:class:`~fluxsr_cli.images.reading.LoadedImage`) grey and palette images stay grey
and palette, 16-bit stays 16-bit where the format allows, and ICC, EXIF and resolution are kept.
Whatever cannot be kept is returned as a note.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from fluxsr_cli.atomic import atomic_path
from fluxsr_cli.errors import InputError
from fluxsr_cli.images.metadata import icc_colour_space, png_with_chunks, tiff_with_metadata
from fluxsr_cli.images.reading import GREY_MODES, PALETTE_MODES, LoadedImage

# Suffix -> Pillow format for the formats we write.
WRITE_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG",
    ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
}


def to_uint(a: np.ndarray, bits: int) -> np.ndarray:
    """Float samples in [0, 1] rounded to uint8 or uint16.

    Works in bands of rows so that a 16000 x 12000 output needs no full-size float temporaries.
    """
    top = 65535.0 if bits == 16 else 255.0
    a = np.asarray(a, np.float32)
    out = np.empty(a.shape, np.uint16 if bits == 16 else np.uint8)
    if a.ndim == 0:
        return np.asarray(np.clip(np.rint(a * top), 0, top), out.dtype)
    rows = max(1, (1 << 22) // max(1, a[0].size))  # about 4 M samples per band
    for i in range(0, a.shape[0], rows):
        band = a[i:i + rows] * top
        np.rint(band, out=band)
        np.clip(band, 0, top, out=band)
        out[i:i + rows] = band
    return out


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma (what Pillow's ``convert("L")`` computes), [H, W, 3] -> [H, W]."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


# --------------------------------------------------------------------------- writing


def output_format(path: str | Path) -> str:
    """The Pillow format written for ``path``'s suffix; :class:`InputError` for unknown ones."""
    suffix = Path(path).suffix.lower()
    if suffix not in WRITE_FORMATS:
        known = ", ".join(sorted({s.lstrip(".") for s in WRITE_FORMATS}))
        raise InputError(f"{path}: cannot write '{suffix or 'no suffix'}' files; use one of {known}")
    return WRITE_FORMATS[suffix]


def _target_mode(like: LoadedImage | None, keep_mode: bool, has_alpha: bool) -> str:
    """The kind of image to write: "grey", "palette", "bilevel" or "rgb"."""
    if like is None or not keep_mode:
        return "rgb"
    if like.mode == "1":
        return "bilevel"
    if like.mode in GREY_MODES:
        return "grey"
    if like.mode in PALETTE_MODES:
        return "palette"
    return "rgb"


def _flatten(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite over white (for formats without alpha)."""
    a = alpha[..., None]
    return rgb * a + (1.0 - a)


def write_image(
    path: str | Path,
    rgb: np.ndarray,
    *,
    like: LoadedImage | None = None,
    alpha: np.ndarray | None = None,
    quality: int = 95,
    strip_metadata: bool = False,
    overwrite: bool = False,
    keep_mode: bool = True,
    bits: int | None = None,
) -> list[str]:
    """Write ``rgb`` ([H, W, 3] float in [0, 1]) and optional ``alpha`` ([H, W]) to ``path`` atomically.

    The format comes from the suffix. With ``like`` (the input as read), greyscale and palette
    inputs are written back as greyscale/palette (unless ``keep_mode`` is off), 16-bit inputs as
    16-bit where the format allows, and the ICC profile and EXIF are kept unless
    ``strip_metadata``. Returns notes on anything that could not be kept.
    """
    path = Path(path)
    fmt = output_format(path)
    rgb = np.asarray(rgb, dtype=np.float32)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be [H, W, 3], got {rgb.shape}")
    notes: list[str] = []
    bits = bits or (like.bits if like else 8)
    if bits == 16 and fmt not in ("PNG", "TIFF"):
        notes.append(f"{fmt} stores 8 bits; 16-bit input written as 8-bit")
        bits = 8
    kind = _target_mode(like, keep_mode, alpha is not None)
    if alpha is not None and fmt == "JPEG":
        notes.append("JPEG has no alpha; transparent areas composited over white")
        rgb, alpha = _flatten(rgb, alpha), None
    if kind == "palette" and (fmt in ("JPEG", "WEBP") or bits == 16):
        notes.append(f"palette image written as RGB ({fmt})")
        kind = "rgb"
    if kind in ("grey", "bilevel") and fmt == "WEBP":
        kind = "rgb"
    if kind == "bilevel" and alpha is not None:
        kind = "grey"

    icc = None if strip_metadata or like is None else like.icc_profile
    exif = None if strip_metadata or like is None else like.exif
    wants = {"grey": "GRAY", "bilevel": "GRAY"}.get(kind, "RGB")
    if icc and icc_colour_space(icc) != wants:
        notes.append(f"{icc_colour_space(icc)} ICC profile dropped (output is {wants})")
        icc = None
    if (icc or exif) and fmt == "BMP":
        notes.append("BMP cannot store ICC/EXIF metadata; dropped")
        icc = exif = None

    dpi = like.dpi if like is not None else None  # kept as stated: the printed size grows with the scale
    data: bytes | None = None  # encoded here (16-bit colour, TIFF with EXIF), else Pillow writes the file
    if bits == 16 and (kind == "rgb" or alpha is not None):  # (16 bits only reach PNG and TIFF)
        data = _encode_16bit_colour(path, fmt, rgb, alpha, icc, exif, notes, dpi)
    else:
        im = _to_pillow(rgb, alpha, kind, bits, like)
        params: dict = {}
        if dpi and fmt in ("PNG", "JPEG", "TIFF"):
            params["dpi"] = dpi
        if icc:
            params["icc_profile"] = icc
        if exif:
            params["exif"] = exif
        if fmt == "JPEG":
            params.update(quality=int(quality), subsampling=0 if quality >= 90 else 2, optimize=False)
            if exif and len(exif) > 65533:
                notes.append("EXIF too large for JPEG; dropped")
                params.pop("exif")
        elif fmt == "WEBP":
            params.update(quality=int(quality), lossless=quality >= 100, method=4)
        elif fmt == "TIFF":
            params["compression"] = "tiff_deflate"
            if exif:  # libtiff cannot take EXIF with sub-IFDs (every camera's): added to the bytes after
                params.pop("exif")
                encoded = io.BytesIO()
                im.save(encoded, format=fmt, **params)
                data = _add_exif_to_tiff(encoded.getvalue(), exif, notes)
        elif fmt == "PNG":
            params["compress_level"] = 6
    with atomic_path(path, overwrite=overwrite) as tmp:
        if data is not None:
            tmp.write_bytes(data)
        else:
            im.save(tmp, format=fmt, **params)
    return notes


def _add_exif_to_tiff(tiff: bytes, exif: bytes, notes: list[str]) -> bytes:
    """:func:`tiff_with_metadata` for EXIF alone; EXIF it cannot place is dropped with a note."""
    try:
        return tiff_with_metadata(tiff, None, exif)
    except (ValueError, struct.error) as e:
        notes.append(f"EXIF not written ({e}); the TIFF has no camera metadata")
        return tiff


def _to_pillow(rgb: np.ndarray, alpha: np.ndarray | None, kind: str, bits: int, like: LoadedImage | None) -> Image.Image:
    """Float arrays -> a Pillow image of the target kind (8-bit, or 16-bit grey without alpha)."""
    if kind in ("grey", "bilevel"):
        grey = luminance(rgb)
        if bits == 16:
            return Image.fromarray(to_uint(grey, 16))  # mode I;16
        if kind == "bilevel":
            return Image.fromarray(grey >= 0.5)  # mode 1, thresholded (no dithering)
        if alpha is not None:
            return Image.fromarray(np.dstack([to_uint(grey, 8), to_uint(alpha, 8)]), "LA")
        return Image.fromarray(to_uint(grey, 8))
    if alpha is not None:
        im = Image.fromarray(np.dstack([to_uint(rgb, 8), to_uint(alpha, 8)]), "RGBA")
    else:
        im = Image.fromarray(to_uint(rgb, 8))
    if kind == "palette":
        colours = max(2, min(256, (like.palette_size if like else None) or 256))
        method = Image.Quantize.FASTOCTREE if alpha is not None else Image.Quantize.MEDIANCUT
        im = im.quantize(colors=colours, method=method)
    return im


def _encode_16bit_colour(path: Path, fmt: str, rgb: np.ndarray, alpha: np.ndarray | None,
                         icc: bytes | None, exif: bytes | None, notes: list[str],
                         dpi: tuple[float, float] | None = None) -> bytes:
    """16-bit RGB(A) (which Pillow cannot write) through OpenCV; ICC (and EXIF for PNG) added by hand."""
    import cv2

    a = to_uint(rgb[..., ::-1], 16)  # BGR
    if alpha is not None:
        a = np.dstack([a, to_uint(alpha, 16)])
    # TIFF: deflate, as the 8-bit TIFFs (OpenCV's default LZW needs imagecodecs in tifffile)
    params = [] if fmt == "PNG" else [cv2.IMWRITE_TIFF_COMPRESSION, 8]  # 8: Adobe deflate
    ok, buf = cv2.imencode(".png" if fmt == "PNG" else ".tiff", a, params)
    if not ok:
        raise InputError(f"{path}: OpenCV could not encode a 16-bit {fmt}; write PNG instead")
    data = buf.tobytes()
    if fmt == "PNG":
        return png_with_chunks(data, icc, exif, dpi)
    if icc or dpi:
        try:
            data = tiff_with_metadata(data, icc, None, dpi)
        except (ValueError, struct.error) as e:
            notes.append(f"ICC profile and resolution not written ({e}); use PNG to keep them")
    return _add_exif_to_tiff(data, exif, notes) if exif else data
