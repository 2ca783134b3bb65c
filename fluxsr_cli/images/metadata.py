"""Image metadata kept through an upscale: EXIF (orientation reset), ICC profiles, resolution, TIFF tags.

Pure byte-level helpers: reading a TIFF's own tags as EXIF, swapping big-endian EXIF to
little-endian, and adding ICC, EXIF and resolution to PNG and TIFF files that the encoders wrote
without them (16-bit colour through OpenCV, TIFF with camera EXIF, which libtiff cannot take).
"""

from __future__ import annotations

import math
import struct
import warnings
import zlib
from fractions import Fraction

from PIL import Image

EXIF_ORIENTATION = 0x0112


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


def dpi_of(value: object) -> tuple[float, float] | None:
    """Pillow's ``info["dpi"]`` as two positive floats, or None."""
    try:
        x, y = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return (x, y) if x > 0 and y > 0 and math.isfinite(x + y) else None


def tiff_exif(im: Image.Image) -> bytes | None:
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
