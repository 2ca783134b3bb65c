"""Reading and writing the photos users care about, without losing what makes them theirs.

``read_image`` turns any file Pillow reads into float RGB in [0, 1] (plus alpha), with EXIF
orientation applied and 16-bit precision kept; ``write_image`` writes an upscaled array back in the
input's mode and bit depth with its ICC profile and EXIF, atomically. Every refusal is an
:class:`InputError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fluxsr_cli.atomic import atomic_path
from fluxsr_cli.errors import InputError

# Suffixes that ``fluxsr batch`` picks up as images (lower case).
READ_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".tif", ".tiff", ".bmp", ".gif",
     ".ppm", ".pgm", ".pbm", ".pnm", ".tga"}
)
# Suffix -> Pillow format for the formats we write.
WRITE_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG",
    ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
}
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
PALETTE_MODES = frozenset({"P", "PA"})
EXIF_ORIENTATION = 0x0112


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


def reset_orientation(exif: bytes) -> bytes:
    """Return raw EXIF bytes with the orientation tag set to 1, everything else byte-identical.

    ``exif`` is a TIFF structure, optionally prefixed by ``Exif\\0\\0`` (as JPEG stores it).
    """
    start = 6 if exif.startswith(b"Exif\x00\x00") else 0
    data = bytearray(exif)
    try:
        endian = {b"II": "<", b"MM": ">"}[bytes(data[start:start + 2])]
        (ifd,) = struct.unpack_from(endian + "I", data, start + 4)
        (count,) = struct.unpack_from(endian + "H", data, start + ifd)
        for i in range(count):
            entry = start + ifd + 2 + 12 * i
            tag, typ = struct.unpack_from(endian + "HH", data, entry)
            if tag == EXIF_ORIENTATION and typ == 3:  # SHORT, stored inline
                struct.pack_into(endian + "H", data, entry + 8, 1)
    except (KeyError, struct.error):
        return exif  # not a structure we understand: leave it alone
    return bytes(data)


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


def icc_colour_space(icc: bytes | None) -> str | None:
    """The data colour space of an ICC profile ("RGB", "GRAY", "CMYK", ...), from its header."""
    if not icc or len(icc) < 20:
        return None
    return icc[16:20].decode("latin-1").strip()


def png_with_chunks(png: bytes, icc: bytes | None, exif: bytes | None,
                    dpi: tuple[float, float] | None = None) -> bytes:
    """Insert iCCP, eXIf and pHYs chunks right after IHDR of an encoded PNG (used for 16-bit colour)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    extra = b""
    if icc:
        extra += chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if exif:
        extra += chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    if dpi:  # pixels per metre, unit 1 (metre)
        extra += chunk(b"pHYs", struct.pack(">IIB", round(dpi[0] / 0.0254), round(dpi[1] / 0.0254), 1))
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length+type, 13 data bytes, CRC
    return png[:ihdr_end] + extra + png[ihdr_end:]


TIFF_ICC_TAG = 34675  # InterColorProfile
TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
EXIF_SUB_IFDS = frozenset({34665, 34853, 40965})  # Exif, GPS and Interoperability IFD pointers
# The IFD-0 tags that metadata may bring into an output: description, camera, date, rights and
# resolution. Everything else there describes pixel data (size, strips, colour map, ...), belongs
# to one program (Photoshop layers, GeoTIFF and ImageJ scales) or would be stale after upscaling.
METADATA_TAGS = frozenset({269, 270, 271, 272, 282, 283, 285, 296, 305, 306, 315, 316, 33432, 34665, 34853})
# Element sizes for byte-swapping: BYTE, ASCII, SBYTE and UNDEFINED are opaque bytes
TIFF_SWAP_BYTES = {3: 2, 4: 4, 5: 4, 8: 2, 9: 4, 10: 4, 11: 4, 12: 8, 13: 4}


def _ifd_entries(data: bytes | bytearray, at: int, e: str) -> tuple[list[bytes], int]:
    """The 12-byte entries of the IFD at ``at`` and the offset of the next IFD."""
    (n,) = struct.unpack_from(e + "H", data, at)
    if at + 6 + 12 * n > len(data):
        raise ValueError("IFD runs past the end")
    entries = [bytes(data[at + 2 + 12 * k:at + 14 + 12 * k]) for k in range(n)]
    return entries, struct.unpack_from(e + "I", data, at + 2 + 12 * n)[0]


def _relocated(blob: bytearray, at: int, base: int, seen: set[int]) -> list[bytes]:
    """Entries of the little-endian IFD at ``at`` in ``blob`` with every offset moved by ``base``.

    Sub-IFDs (Exif, GPS, Interoperability) are relocated in ``blob`` itself, recursively.
    """
    if at in seen or not 8 <= at < len(blob):
        raise ValueError("EXIF IFD offset out of range")
    seen.add(at)
    entries, _ = _ifd_entries(blob, at, "<")
    moved = []
    for entry in entries:
        tag, typ, count, value = struct.unpack("<HHII", entry)
        if tag in EXIF_SUB_IFDS:
            sub = _relocated(blob, value, base, seen)
            end = value + 2 + 12 * len(sub)
            blob[value + 2:end] = b"".join(sub)
            blob[end:end + 4] = b"\0\0\0\0"  # a sub-IFD has no next IFD
            value += base
        elif TIFF_TYPE_BYTES.get(typ, 1) * count > 4:
            if value + TIFF_TYPE_BYTES.get(typ, 1) * count > len(blob):
                raise ValueError("EXIF value out of range")
            value += base
        moved.append(struct.pack("<HHII", tag, typ, count, value))
    return moved


def _dpi(value: object) -> tuple[float, float] | None:
    """Pillow's ``info["dpi"]`` as two positive floats, or None."""
    try:
        x, y = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return (x, y) if x > 0 and y > 0 and math.isfinite(x + y) else None


def _tiff_exif(im: Image.Image) -> bytes | None:
    """A TIFF's own metadata as EXIF bytes: its :data:`METADATA_TAGS` of IFD 0 and its Exif and GPS
    sub-IFDs (TIFF keeps these in the image's own IFD, where Pillow's ``info`` has no ``exif``).
    Metadata that cannot be read is left out."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = im.getexif()
            kept = Image.Exif()
            for tag, value in source.items():
                if tag in METADATA_TAGS and tag not in EXIF_SUB_IFDS:
                    if tag == 270 and str(value).lstrip().startswith(("{", "ImageJ=")):
                        continue  # tifffile's / ImageJ's shape records, wrong after upscaling
                    kept[tag] = value
            for pointer in (0x8769, 0x8825):  # Exif, GPS
                sub = {k: v for k, v in source.get_ifd(pointer).items() if k not in EXIF_SUB_IFDS}
                if sub:  # (an Interoperability IFD inside would need its own pointer: left out)
                    kept[pointer] = sub
            return kept.tobytes() if len(kept) else None
    except Exception:  # noqa: BLE001 - metadata is optional; the pixels were read
        return None


def _swapped_to_little_endian(blob: bytes) -> bytes:
    """A big-endian TIFF structure (EXIF) rewritten little-endian, layout and tag types unchanged."""
    src, out = bytes(blob), bytearray(blob)
    out[:4] = b"II*\x00"
    struct.pack_into("<I", out, 4, struct.unpack_from(">I", src, 4)[0])

    def swap_ifd(at: int, seen: set[int]) -> None:
        if at in seen or not 8 <= at < len(src):
            raise ValueError("EXIF IFD offset out of range")
        seen.add(at)
        (n,) = struct.unpack_from(">H", src, at)
        if at + 6 + 12 * n > len(src):
            raise ValueError("EXIF IFD runs past the end")
        struct.pack_into("<H", out, at, n)
        for k in range(n):
            entry = at + 2 + 12 * k
            tag, typ, count = struct.unpack_from(">HHI", src, entry)
            struct.pack_into("<HHI", out, entry, tag, typ, count)
            size, unit = TIFF_TYPE_BYTES.get(typ, 1) * count, TIFF_SWAP_BYTES.get(typ, 1)
            where = entry + 8
            if size > 4 or tag in EXIF_SUB_IFDS:
                (where,) = struct.unpack_from(">I", src, entry + 8)
                struct.pack_into("<I", out, entry + 8, where)
                if tag in EXIF_SUB_IFDS:
                    swap_ifd(where, seen)
                    continue
                if where + size > len(src):
                    raise ValueError("EXIF value out of range")
            if unit > 1:  # swap each element; opaque bytes (MakerNote, strings) stay as they are
                for i in range(where, where + min(size, len(src) - where) // unit * unit, unit):
                    out[i:i + unit] = src[i:i + unit][::-1]
        (following,) = struct.unpack_from(">I", src, at + 2 + 12 * n)
        struct.pack_into("<I", out, at + 2 + 12 * n, following)
        if following:
            swap_ifd(following, seen)

    swap_ifd(struct.unpack_from(">I", src, 4)[0], set())
    return bytes(out)


def _exif_little_endian(exif: bytes) -> bytes:
    """EXIF as a little-endian TIFF structure (no ``Exif\\0\\0`` prefix); big-endian EXIF is swapped."""
    body = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
    if body[:4] == b"II*\x00":
        return body
    if body[:4] == b"MM\x00*":
        return _swapped_to_little_endian(body)
    raise ValueError("EXIF is not a TIFF structure")


def tiff_with_metadata(tiff: bytes, icc: bytes | None, exif: bytes | None,
                       dpi: tuple[float, float] | None = None) -> bytes:
    """A little-endian classic TIFF (OpenCV's) with ``icc`` and ``exif`` added to its first image.

    The pixel data stay where they are. Appended: the ICC profile (tag 34675); the EXIF structure,
    little-endian, with its offsets moved to where it now lies; and a copy of the first IFD that
    holds the profile, EXIF's :data:`METADATA_TAGS` the image does not set itself (camera, date,
    artist, copyright, ...) and its Exif/GPS sub-IFD pointers (entries in tag order), and
    ``dpi`` as the resolution tags when the image has none. The header is pointed at the new IFD. Raises
    ValueError for anything else than a little-endian classic TIFF, or a malformed EXIF.
    """
    if tiff[:4] != b"II*\x00" or len(tiff) < 8:
        raise ValueError("not a little-endian classic TIFF")
    (first,) = struct.unpack_from("<I", tiff, 4)
    entries, following = _ifd_entries(tiff, first, "<")
    tag = lambda entry: struct.unpack_from("<H", entry)[0]  # noqa: E731
    out = bytearray(tiff) + b"\0" * (len(tiff) % 2)  # TIFF offsets are word-aligned
    new: dict[int, bytes] = {}
    if icc and len(icc) > 4:  # (a real profile has at least 128 bytes; 4 would sit inside the entry)
        new[TIFF_ICC_TAG] = struct.pack("<HHII", TIFF_ICC_TAG, 7, len(icc), len(out))  # 7: UNDEFINED
        out += icc + b"\0" * (len(icc) % 2)
    own = {tag(x) for x in entries}
    if dpi and not own & {282, 283, 296}:  # X/YResolution (RATIONAL), ResolutionUnit 2: inch
        for code, value in ((282, dpi[0]), (283, dpi[1])):
            ratio = Fraction(value).limit_denominator(10000)
            new[code] = struct.pack("<HHII", code, 5, 1, len(out))
            out += struct.pack("<II", ratio.numerator, ratio.denominator)
        new[296] = struct.pack("<HHIHH", 296, 3, 1, 2, 0)
    if exif:
        blob = bytearray(_exif_little_endian(exif))
        if blob[:4] != b"II*\x00":
            raise ValueError("EXIF is not a TIFF structure")
        base = len(out)
        for entry in _relocated(blob, struct.unpack_from("<I", blob, 4)[0], base, set()):
            if tag(entry) in METADATA_TAGS and tag(entry) not in own | new.keys():  # the image's own tags win
                new[tag(entry)] = entry
        out += blob + b"\0" * (len(blob) % 2)
    kept = [x for x in entries if tag(x) not in new]
    merged = sorted(kept + list(new.values()), key=tag)
    ifd_at = len(out)
    out += struct.pack("<H", len(merged)) + b"".join(merged) + struct.pack("<I", following)
    if len(out) >= 2**32:
        raise ValueError("too large for a classic TIFF")
    out[4:8] = struct.pack("<I", ifd_at)
    return bytes(out)


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


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
        exif = im.info.get("exif") or (_tiff_exif(im) if im.format == "TIFF" else None)
        dpi = _dpi(im.info.get("dpi"))
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
