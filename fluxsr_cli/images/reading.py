"""Reading the photos users care about, without losing what makes them theirs.

``read_image`` turns any file Pillow reads into float RGB in [0, 1] (plus alpha), with EXIF
orientation applied and 16-bit precision kept, and remembers what writing the upscaled version
needs (mode, bit depth, ICC profile, EXIF, resolution: :class:`LoadedImage`). Every refusal is an
:class:`InputError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fluxsr_cli.errors import InputError, one_line
from fluxsr_cli.images.metadata import (
    EXIF_ORIENTATION,
    dpi_of,
    icc_colour_space,
    reset_orientation,
    tiff_exif,
)

# Suffixes that ``fluxsr batch`` picks up as images (lower case).
READ_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".tif", ".tiff", ".bmp", ".gif",
     ".ppm", ".pgm", ".pbm", ".pnm", ".tga"}
)
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
PALETTE_MODES = frozenset({"P", "PA"})


@dataclass
class LoadedImage:
    """A decoded image and what is needed to write its upscaled version the same way."""

    rgb: np.ndarray  # [H, W, 3] float32 in [0, 1], EXIF orientation applied
    alpha: np.ndarray | None  # [H, W] float32 in [0, 1], or None
    mode: str  # the file's Pillow mode ("RGB", "L", "P", "I;16", "CMYK", ...)
    bits: int  # 8 or 16 bits per channel
    icc_profile: bytes | None
    exif: bytes | None  # with the orientation reset to 1
    format: str  # Pillow format name ("PNG", "JPEG", ...)
    path: Path
    notes: list[str] = field(default_factory=list)  # conversions made on the way in
    palette_size: int | None = None  # colours used, for palette ("P") inputs
    dpi: tuple[float, float] | None = None  # (x, y) after orientation, as the file states it

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) after orientation."""
        return self.rgb.shape[1], self.rgb.shape[0]


# --------------------------------------------------------------------------- pure helpers


def apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """Undo EXIF ``orientation`` (1-8) on an [H, W, ...] array, as viewers show the image."""
    ops = {
        1: lambda x: x,
        2: lambda x: x[:, ::-1],  # mirror left-right
        3: lambda x: x[::-1, ::-1],  # rotate 180
        4: lambda x: x[::-1],  # mirror top-bottom
        5: lambda x: x.swapaxes(0, 1),  # transpose
        6: lambda x: np.rot90(x, k=-1),  # rotate 90 clockwise
        7: lambda x: x.swapaxes(0, 1)[::-1, ::-1],  # transverse
        8: lambda x: np.rot90(x, k=1),  # rotate 90 counter-clockwise
    }
    return np.ascontiguousarray(ops.get(orientation, ops[1])(a))


def to_float(a: np.ndarray) -> np.ndarray:
    """Integer or float samples as float32 in [0, 1] (uint8 / 255, uint16 / 65535)."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    if a.dtype == bool:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):  # mode "I": 16-bit data widened to int32
        return np.clip(a.astype(np.float32) / 65535.0, 0.0, 1.0)
    return np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0)


# --------------------------------------------------------------------------- reading


@contextlib.contextmanager
def _open(path: Path):
    """Open ``path`` with Pillow, turning every failure into a one-line :class:`InputError`."""
    if not path.exists():
        raise InputError(f"{path}: file not found; check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; use `fluxsr batch` for folders")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes); re-copy or remove it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image Pillow can read; convert it to PNG or TIFF (16-bit keeps "
                         "precision)") from None
    except Image.DecompressionBombError:
        raise InputError(f"{path}: image is too large to decode safely; downscale it first") from None
    except OSError as e:
        raise InputError(f"{path}: cannot open ({one_line(e)})") from None
    with im:
        yield im


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not stop the image from loading
        return 1
    return value if 1 <= value <= 8 else 1


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), read from the header only."""
    path = Path(path)
    with _open(path) as im:
        w, h = im.size
        return (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)


def _is_16bit_colour(im: Image.Image, path: Path) -> bool:
    """True for 16-bit RGB(A)/grey-alpha PNG and TIFF, which Pillow would cut to 8 bits."""
    if im.mode not in ("RGB", "RGBA", "LA"):
        return False
    if im.format == "PNG":
        with path.open("rb") as f:
            header = f.read(26)
        return len(header) == 26 and header[24] == 16
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, (8,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        return max(bits) == 16
    return False


def _decode_16bit(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """16-bit colour through OpenCV: (rgb [H, W, 3] float32, alpha [H, W] or None)."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)
    a = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)  # BGR(A) uint16, EXIF orientation not applied
    if a is None or a.dtype != np.uint16:
        raise InputError(f"{path}: cannot decode this 16-bit image; convert it to 8-bit PNG")
    if a.ndim == 2:
        a = a[..., None]
    alpha = to_float(a[..., 3]) if a.shape[2] == 4 else None
    if a.shape[2] == 1:
        rgb = np.repeat(a, 3, axis=2)
    else:
        rgb = a[..., 2::-1] if a.shape[2] >= 3 else np.repeat(a[..., :1], 3, axis=2)
    return to_float(rgb), alpha


def _decode_pillow(im: Image.Image, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Pillow image (loaded) -> (rgb float32 [H, W, 3], alpha or None, bits)."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = to_float(np.asarray(im))
        return np.repeat(grey[..., None], 3, axis=2), None, 16
    if mode == "F":
        notes.append("32-bit float samples clipped to [0, 1] and written as 16-bit")
        grey = to_float(np.asarray(im))
        return np.repeat(grey[..., None], 3, axis=2), None, 16
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info
    if mode == "LAB":  # Pillow's plain convert() would read L*a*b* as if it were RGB
        from PIL import ImageCms

        lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
        im = ImageCms.applyTransform(im, ImageCms.buildTransform(lab, srgb, "LAB", "RGB"))
        notes.append("LAB converted to sRGB")
    elif mode not in ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX"):
        notes.append(f"{mode} converted to RGB" + (" (approximate colours)" if mode == "CMYK" else ""))
    try:
        with warnings.catch_warnings():  # "palette images with transparency ... convert to RGBA": we do
            warnings.simplefilter("ignore", UserWarning)
            rgba = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    except (ValueError, OSError) as e:
        raise InputError(f"colour mode {mode} cannot be converted to RGB ({one_line(e)}); convert it to RGB first") from None
    alpha = to_float(rgba[..., 3]) if has_alpha else None
    return to_float(rgba[..., :3]), alpha, 8


def read_image(path: str | Path) -> LoadedImage:
    """Decode ``path`` as float RGB in [0, 1] (+ alpha), with EXIF orientation applied.

    16-bit PNG/TIFF keep their precision; greyscale and palette images come back as RGB (their
    ``mode`` says how to write them back); CMYK and other modes are converted with a note.
    Raises :class:`InputError` for missing, zero-byte, truncated or unreadable files.
    """
    path = Path(path)
    notes: list[str] = []
    with _open(path) as im:
        fmt = im.format or "unknown"
        mode = im.mode
        frames = getattr(im, "n_frames", 1)
        if frames > 1 and fmt != "MPO":  # MPO: a phone JPEG with a depth map or preview beside it
            notes.append(f"only the first of its {frames} pages/frames is upscaled; split the file to do the others")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im.load()
        except (OSError, SyntaxError, ValueError, struct.error) as e:
            reason = one_line(e)
            if "truncated" in reason or "broken data stream" in reason or isinstance(e, SyntaxError):
                raise InputError(f"{path}: truncated or corrupt image ({reason}); re-copy the file") from None
            raise InputError(f"{path}: cannot decode ({reason}); re-copy or convert the file") from None
        orientation = _orientation(im)
        palette_size = len(im.getcolors(256) or ()) or 256 if mode in PALETTE_MODES else None
        icc = im.info.get("icc_profile") or None
        exif = im.info.get("exif") or (tiff_exif(im) if im.format == "TIFF" else None)
        dpi = dpi_of(im.info.get("dpi"))
        if isinstance(exif, bytes):
            exif = reset_orientation(exif)
        else:
            exif = None
        if _is_16bit_colour(im, path):
            rgb, alpha = _decode_16bit(path)
            bits = 16
        else:
            rgb, alpha, bits = _decode_pillow(im, notes)
    if mode == "CMYK" or icc_colour_space(icc) not in (None, "RGB", "GRAY"):
        if icc:
            notes.append(f"{icc_colour_space(icc)} ICC profile dropped (colours converted to RGB)")
        icc = None
    rgb = apply_orientation(rgb, orientation)
    if alpha is not None:
        alpha = apply_orientation(alpha, orientation)
    if dpi and orientation >= 5:  # turned by a quarter: the axes trade places
        dpi = (dpi[1], dpi[0])
    return LoadedImage(
        rgb=rgb.astype(np.float32, copy=False), alpha=alpha, mode=mode, bits=bits, icc_profile=icc,
        exif=exif, format=fmt, path=path, notes=notes, palette_size=palette_size, dpi=dpi,
    )
