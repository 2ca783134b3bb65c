"""Reading and writing real photos and the odd files users have: modes, bit depths, metadata, damage.

The file makers here are shared with test_batch.py and test_cli_batch.py.
"""

from __future__ import annotations

import functools
import io
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps
from skimage import data

from fluxsr_cli.errors import InputError
from fluxsr_cli.images.metadata import png_with_chunks, reset_orientation, tiff_with_metadata
from fluxsr_cli.images.reading import apply_orientation, image_size, read_image
from fluxsr_cli.images.writing import write_image

# --------------------------------------------------------------------------- file makers


def photo(name: str = "astronaut", size: tuple[int, int] = (48, 32)) -> np.ndarray:
    """A real photo from skimage.data, shrunk to ``size`` = (width, height): uint8 [H, W, 3] or [H, W]."""
    return cv2.resize(getattr(data, name)(), size, interpolation=cv2.INTER_AREA)


@functools.cache
def srgb_icc() -> bytes:
    """One sRGB profile per test run (the header holds its creation time)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_bytes(orientation: int = 1, make: str = "fluxsr-test-camera") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = make
    return exif.tobytes()


def make_rgba(path: Path) -> Path:
    rgb = photo("coffee")
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[:, : rgb.shape[1] // 2] = 255
    alpha[:, rgb.shape[1] // 2 :] = np.linspace(0, 255, rgb.shape[0], dtype=np.uint8)[:, None]
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    return path


def make_la(path: Path) -> Path:
    grey = photo("camera")
    alpha = np.full_like(grey, 255)
    alpha[:8] = 0
    Image.fromarray(np.dstack([grey, alpha]), "LA").save(path)
    return path


def make_palette(path: Path, transparency: bool = False) -> Path:
    im = Image.fromarray(photo("chelsea")).quantize(colors=16)
    if transparency:
        im.info["transparency"] = 0
    im.save(path, **({"transparency": 0} if transparency else {}))
    return path


def make_16bit_rgb(path: Path) -> Path:
    """16-bit RGB PNG/TIFF whose low bytes carry information (values are not multiples of 257)."""
    a = photo("astronaut").astype(np.uint16) * 256 + np.arange(48, dtype=np.uint16)[None, :, None] * 5 + 3
    ok, buf = cv2.imencode(path.suffix, a[..., ::-1])
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def make_16bit_grey(path: Path) -> Path:
    a = photo("camera").astype(np.uint16) * 256 + 77
    Image.fromarray(a).save(path)  # mode I;16
    return path


def make_cmyk_jpeg(path: Path) -> Path:
    Image.fromarray(photo("astronaut")).convert("CMYK").save(path, quality=95)
    return path


def make_rotated_jpeg(path: Path, orientation: int) -> Path:
    """A 48x32 stored image that viewers show rotated (orientation 6/8: 32 wide, 48 high)."""
    Image.fromarray(photo("astronaut")).save(path, quality=95, exif=exif_bytes(orientation))
    return path


def make_icc(path: Path) -> Path:
    Image.fromarray(photo("coffee")).save(path, icc_profile=srgb_icc())
    return path


def make_truncated_jpeg(path: Path) -> Path:
    good = path.with_name("full_" + path.name)
    Image.fromarray(photo("astronaut", (96, 64))).save(good, quality=95)
    path.write_bytes(good.read_bytes()[:1200])
    good.unlink()
    return path


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_matches_pillow_exif_transpose(tmp_path, orientation):
    path = make_rotated_jpeg(tmp_path / "r.jpg", orientation)
    with Image.open(path) as im:
        stored = np.asarray(im.convert("RGB"))
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    np.testing.assert_array_equal(apply_orientation(stored, orientation), expected)


def test_reset_orientation_changes_only_the_orientation():
    raw = exif_bytes(6)  # with the "Exif\0\0" prefix JPEG uses
    assert raw.startswith(b"Exif\x00\x00")
    for block in (raw, raw[6:]):  # and without it (PNG eXIf)
        out = reset_orientation(block)
        assert len(out) == len(block) and sum(a != b for a, b in zip(block, out, strict=True)) == 1
        exif = Image.Exif()
        exif.load(out)
        assert exif[0x0112] == 1 and exif[0x010F] == "fluxsr-test-camera"
    assert reset_orientation(b"garbage") == b"garbage"


# --------------------------------------------------------------------------- round trips


def test_real_photo_png_round_trip_is_exact(tmp_path):
    src = tmp_path / "astronaut.png"
    Image.fromarray(photo()).save(src)
    img = read_image(src)
    assert img.rgb.dtype == np.float32 and img.rgb.shape == (32, 48, 3) and img.alpha is None
    assert (img.mode, img.bits, img.format, img.size) == ("RGB", 8, "PNG", (48, 32))
    write_image(tmp_path / "out.png", img.rgb, like=img)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), photo())


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_jpeg_is_shown_upright_and_keeps_exif(tmp_path, orientation):
    path = make_rotated_jpeg(tmp_path / f"rot{orientation}.jpg", orientation)
    assert image_size(path) == (32, 48)
    img = read_image(path)
    assert img.rgb.shape == (48, 32, 3)
    with Image.open(path) as im:
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), np.float32) / 255
    np.testing.assert_allclose(img.rgb, upright, atol=1e-6)
    write_image(tmp_path / "out.jpg", img.rgb, like=img)
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (32, 48)
        exif = out.getexif()
        assert exif[0x0112] == 1 and exif[0x010F] == "fluxsr-test-camera"


def test_rgba_alpha_is_read_and_written(tmp_path):
    img = read_image(make_rgba(tmp_path / "a.png"))
    assert img.alpha is not None and img.alpha[:, :10].min() == 1.0 and img.alpha[0, -1] == 0.0
    write_image(tmp_path / "out.png", img.rgb, like=img, alpha=img.alpha)
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(out)[..., 3], np.asarray(Image.open(tmp_path / "a.png"))[..., 3])


def test_alpha_to_jpeg_is_composited_over_white(tmp_path):
    img = read_image(make_rgba(tmp_path / "a.png"))
    notes = write_image(tmp_path / "out.jpg", img.rgb, like=img, alpha=img.alpha)
    assert any("alpha" in n for n in notes)
    out = np.asarray(Image.open(tmp_path / "out.jpg"))
    assert out[0, -1].min() >= 250  # fully transparent pixel -> white, not black


def test_la_stays_grey_with_alpha(tmp_path):
    img = read_image(make_la(tmp_path / "la.png"))
    assert img.mode == "LA" and img.alpha is not None and img.alpha[:8].max() == 0.0
    np.testing.assert_array_equal(img.rgb[..., 0], img.rgb[..., 2])
    write_image(tmp_path / "out.png", img.rgb, like=img, alpha=img.alpha)
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == "LA"
        np.testing.assert_array_equal(np.asarray(out)[..., 0], photo("camera"))


def test_grey_written_back_grey_unless_rgb_asked(tmp_path):
    Image.fromarray(photo("camera")).save(tmp_path / "g.jpg", quality=95)
    img = read_image(tmp_path / "g.jpg")
    write_image(tmp_path / "keep.png", img.rgb, like=img)
    write_image(tmp_path / "rgb.png", img.rgb, like=img, keep_mode=False)
    assert Image.open(tmp_path / "keep.png").mode == "L"
    assert Image.open(tmp_path / "rgb.png").mode == "RGB"


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_written_back_as_palette(tmp_path, transparency):
    src = make_palette(tmp_path / "p.png", transparency)
    img = read_image(src)
    assert img.mode == "P" and img.palette_size == 16 and (img.alpha is not None) == transparency
    write_image(tmp_path / "out.png", img.rgb, like=img, alpha=img.alpha)
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == "P" and len(out.getcolors(256)) <= 16
        assert ("transparency" in out.info) == transparency
        rgb = np.asarray(out.convert("RGBA"), np.float32)[..., :3] / 255
    assert np.abs(rgb - img.rgb).mean() < 0.02


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_colour_keeps_precision(tmp_path, suffix):
    src = make_16bit_rgb(tmp_path / f"deep{suffix}")
    img = read_image(src)
    assert img.bits == 16 and img.mode == "RGB"
    stored = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)[..., ::-1]
    np.testing.assert_array_equal(np.rint(img.rgb * 65535).astype(np.uint16), stored)
    write_image(tmp_path / f"out{suffix}", img.rgb, like=img)
    back = cv2.imread(str(tmp_path / f"out{suffix}"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back[..., ::-1], stored)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_grey_keeps_precision(tmp_path, suffix):
    src = make_16bit_grey(tmp_path / f"g16{suffix}")
    img = read_image(src)
    assert img.bits == 16 and img.mode.startswith("I;16")
    write_image(tmp_path / f"out{suffix}", img.rgb, like=img)
    with Image.open(tmp_path / f"out{suffix}") as out:
        assert out.mode.startswith("I;16")
        np.testing.assert_array_equal(np.asarray(out), np.asarray(Image.open(src)))


def test_16bit_to_jpeg_is_8bit_with_a_note(tmp_path):
    img = read_image(make_16bit_rgb(tmp_path / "deep.png"))
    notes = write_image(tmp_path / "out.jpg", img.rgb, like=img)
    assert any("8-bit" in n for n in notes) and Image.open(tmp_path / "out.jpg").mode == "RGB"


def test_16bit_png_keeps_icc_and_exif(tmp_path):
    img = read_image(make_16bit_rgb(tmp_path / "deep.png"))
    img.icc_profile, img.exif = srgb_icc(), exif_bytes(1)
    write_image(tmp_path / "out.png", img.rgb, like=img)
    with Image.open(tmp_path / "out.png") as out:
        out.load()
        assert out.info["icc_profile"] == srgb_icc() and out.getexif()[0x010F] == "fluxsr-test-camera"


def camera_exif(endian: str = ">") -> bytes:
    """EXIF as cameras write it: IFD-0 tags, an Exif sub-IFD with a signed rational and a MakerNote,
    and a GPS sub-IFD (Pillow writes big-endian by default, as many cameras do)."""
    from PIL.TiffImagePlugin import IFDRational

    exif = Image.Exif()
    exif.endian = endian
    exif[0x010F] = "fluxsr-test-camera"
    exif[0x8298] = "(c) the archive"
    exif[0x8769] = {0x9003: "2026:11:27 10:00:00", 0x9201: IFDRational(-3, 2), 0x927C: b"MAKERNOTE\x00\x01"}
    exif[0x8825] = {1: "N", 2: (IFDRational(52, 1), IFDRational(31, 1), IFDRational(7, 2))}
    return exif.tobytes()


def assert_camera_exif(path: Path) -> None:
    with Image.open(path) as im:
        exif = im.getexif()
        assert exif[0x010F] == "fluxsr-test-camera" and exif[0x8298] == "(c) the archive"
        sub = exif.get_ifd(0x8769)
        assert sub[0x9003] == "2026:11:27 10:00:00" and sub[0x9201] == -1.5  # the sign survives
        assert sub[0x927C] == b"MAKERNOTE\x00\x01" and exif.get_ifd(0x8825)[2] == (52.0, 31.0, 3.5)


@pytest.mark.parametrize("endian", [">", "<"])
def test_16bit_tiff_keeps_icc_exif_and_pixels(tmp_path, endian):
    img = read_image(make_16bit_rgb(tmp_path / "deep.tif"))
    img.icc_profile, img.exif = srgb_icc(), camera_exif(endian)
    assert write_image(tmp_path / "out.tif", img.rgb, like=img) == []
    back = read_image(tmp_path / "out.tif")
    assert back.bits == 16 and back.icc_profile == srgb_icc() and back.exif
    assert np.array_equal(back.rgb, img.rgb)  # 16-bit values unchanged
    assert_camera_exif(tmp_path / "out.tif")
    tifffile = pytest.importorskip("tifffile")  # (comes with scikit-image) a second, strict reader
    with tifffile.TiffFile(tmp_path / "out.tif") as f:
        assert f.pages[0].tags[34675].value == srgb_icc() and f.pages[0].shape == (32, 48, 3)
        decoded = f.pages[0].asarray()  # deflate: no imagecodecs needed (LZW would)
    assert np.array_equal(decoded.astype(np.float32) / 65535, img.rgb)


@pytest.mark.parametrize("ext", [".tif", ".png", ".jpg"])
def test_camera_exif_reaches_every_format(tmp_path, ext):
    """A camera JPEG's EXIF (with its Exif sub-IFD) used to make 8-bit TIFF writing fail in libtiff."""
    Image.fromarray(photo()).save(tmp_path / "cam.jpg", exif=camera_exif(), quality=95)
    img = read_image(tmp_path / "cam.jpg")
    assert write_image(tmp_path / f"out{ext}", img.rgb, like=img) == []
    assert_camera_exif(tmp_path / f"out{ext}")


@pytest.mark.parametrize("ext", [".tif", ".png", ".jpg"])
def test_a_tiffs_own_metadata_is_kept_and_its_structure_is_not_copied(tmp_path, ext):
    Image.fromarray(photo()).save(tmp_path / "scan.tif", exif=camera_exif(), dpi=(300, 300))
    img = read_image(tmp_path / "scan.tif")
    write_image(tmp_path / f"out{ext}", img.rgb, like=img)
    assert_camera_exif(tmp_path / f"out{ext}")
    with Image.open(tmp_path / f"out{ext}") as out:
        assert out.size == (48, 32) and out.info["dpi"][0] == pytest.approx(300, abs=0.01)  # PNG: per metre
        if ext != ".tif":  # the EXIF block of a PNG/JPEG holds no TIFF image structure (size, strips)
            assert not {256, 257, 273, 279} & set(out.getexif())


def test_tiff_with_metadata_replaces_a_profile_and_refuses_what_it_cannot_place():
    ok, buf = cv2.imencode(".tif", photo()[:8, :8].astype(np.uint16) * 257)
    once = tiff_with_metadata(buf.tobytes(), b"A" * 201, None)  # odd length: padded to a word
    twice = tiff_with_metadata(once, srgb_icc(), camera_exif())
    assert Image.open(io.BytesIO(twice)).info["icc_profile"] == srgb_icc()
    decoded = cv2.imdecode(np.frombuffer(twice, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(decoded, cv2.imdecode(buf, cv2.IMREAD_UNCHANGED))
    with pytest.raises(ValueError):  # not a TIFF
        tiff_with_metadata(b"\x89PNG\r\n\x1a\n" + b"\0" * 40, srgb_icc(), None)
    with pytest.raises(ValueError):  # big-endian TIFF (OpenCV and libtiff write little-endian here)
        tiff_with_metadata(b"MM\0*" + b"\0" * 40, srgb_icc(), None)
    broken = bytearray(camera_exif("<"))
    struct.pack_into("<I", broken, 6 + 4, 10**6)  # IFD-0 offset far past the end
    with pytest.raises((ValueError, struct.error)):
        tiff_with_metadata(buf.tobytes(), None, bytes(broken))


@pytest.mark.parametrize("src_ext", [".png", ".jpg", ".tif"])
@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif"])
def test_the_resolution_is_kept_as_stated(tmp_path, src_ext, ext):
    """dpi (PNG pHYs, JPEG JFIF, TIFF tags) carried as the input states it; 16-bit outputs too."""
    Image.fromarray(photo()).save(tmp_path / f"in{src_ext}", dpi=(300, 150))
    img = read_image(tmp_path / f"in{src_ext}")
    assert img.dpi == pytest.approx((300, 150), rel=1e-3)
    write_image(tmp_path / f"out{ext}", img.rgb, like=img)
    with Image.open(tmp_path / f"out{ext}") as out:
        assert out.info["dpi"] == pytest.approx((300, 150), rel=1e-3)
    if ext != ".jpg":  # 16-bit colour goes through OpenCV plus our own chunks / tags
        img.bits = 16
        write_image(tmp_path / f"deep{ext}", img.rgb, like=img)
        with Image.open(tmp_path / f"deep{ext}") as out:
            assert out.info["dpi"] == pytest.approx((300, 150), rel=1e-3)


def test_a_quarter_turn_swaps_the_resolution(tmp_path):
    im = Image.fromarray(photo())
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "turned.jpg", exif=exif.tobytes(), dpi=(300, 150))
    assert read_image(tmp_path / "turned.jpg").dpi == pytest.approx((150, 300))


def test_a_palette_tiffs_colour_map_is_the_outputs_own(tmp_path):
    """A palette TIFF's metadata must not bring its colour map into an output with other colours."""
    Image.fromarray(photo()).quantize(3).save(tmp_path / "pal.tif")
    img = read_image(tmp_path / "pal.tif")
    shifted = img.rgb[..., [1, 2, 0]] * 0.5 + 0.25
    write_image(tmp_path / "out.tif", shifted, like=img)
    with Image.open(tmp_path / "out.tif") as out:
        got = np.asarray(out.convert("RGB")).astype(np.float32) / 255
    assert np.abs(got - shifted).mean() < 0.1


def test_tifffile_shape_records_are_not_carried(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "t.tif", photo(), photometric="rgb")  # ImageDescription {"shape": [...]}
    img = read_image(tmp_path / "t.tif")
    write_image(tmp_path / "out.tif", img.rgb, like=img)
    with tifffile.TiffFile(tmp_path / "out.tif") as f:
        assert "shape" not in str(f.pages[0].tags.get("ImageDescription", ""))


def test_exif_that_is_no_tiff_structure_is_dropped_with_a_note(tmp_path):
    Image.fromarray(photo()).save(tmp_path / "odd.jpg", exif=b"Exif\x00\x00this is not a tiff structure")
    img = read_image(tmp_path / "odd.jpg")
    for name in ("out.tif", "deep.tif"):
        if name == "deep.tif":
            img = read_image(make_16bit_rgb(tmp_path / "in16.tif"))
            img.exif = b"Exif\x00\x00this is not a tiff structure"
        notes = write_image(tmp_path / name, img.rgb, like=img)
        assert any("EXIF not written" in n for n in notes)
        assert read_image(tmp_path / name).rgb.shape == img.rgb.shape


def test_exif_that_cannot_be_placed_is_dropped_with_a_note(tmp_path):
    img = read_image(make_16bit_rgb(tmp_path / "deep.tif"))
    broken = bytearray(camera_exif("<"))
    struct.pack_into("<I", broken, 6 + 4, 10**6)
    img.exif = bytes(broken)
    notes = write_image(tmp_path / "out.tif", img.rgb, like=img)
    assert any("EXIF not written" in n for n in notes)
    assert np.array_equal(read_image(tmp_path / "out.tif").rgb, img.rgb)


def test_cmyk_jpeg_is_converted_with_a_note(tmp_path):
    img = read_image(make_cmyk_jpeg(tmp_path / "cmyk.jpg"))
    assert img.mode == "CMYK" and img.rgb.shape == (32, 48, 3)
    assert any("CMYK" in n for n in img.notes)
    assert np.abs(img.rgb - photo() / 255.0).mean() < 0.03
    write_image(tmp_path / "out.jpg", img.rgb, like=img)
    assert Image.open(tmp_path / "out.jpg").mode == "RGB"


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".webp"])
def test_icc_profile_kept_unless_stripped(tmp_path, suffix):
    img = read_image(make_icc(tmp_path / f"icc{suffix}"))
    assert img.icc_profile == srgb_icc()
    write_image(tmp_path / f"keep{suffix}", img.rgb, like=img)
    write_image(tmp_path / f"strip{suffix}", img.rgb, like=img, strip_metadata=True)
    assert Image.open(tmp_path / f"keep{suffix}").info.get("icc_profile") == srgb_icc()
    assert not Image.open(tmp_path / f"strip{suffix}").info.get("icc_profile")


def test_png_with_chunks_is_a_valid_png(tmp_path):
    ok, buf = cv2.imencode(".png", photo())
    path = tmp_path / "x.png"
    path.write_bytes(png_with_chunks(buf.tobytes(), srgb_icc(), None))
    with Image.open(path) as im:
        im.load()
        assert im.info["icc_profile"] == srgb_icc()


# --------------------------------------------------------------------------- refusals


def test_truncated_jpeg_is_refused_in_one_line(tmp_path):
    path = make_truncated_jpeg(tmp_path / "cut.jpg")
    with pytest.raises(InputError, match="truncated") as e:
        read_image(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_zero_byte_and_garbage_files_are_refused(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(InputError, match="empty file"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(InputError, match="not an image"):
        read_image(tmp_path / "text.png")
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing.png")


def test_existing_output_is_never_overwritten_without_asking(tmp_path):
    img = read_image(make_icc(tmp_path / "in.png"))
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    with pytest.raises(InputError, match="--overwrite"):
        write_image(out, img.rgb, like=img)
    assert out.read_bytes() == b"precious"
    write_image(out, img.rgb, like=img, overwrite=True)
    assert Image.open(out).size == (48, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]  # no temporary left over


def test_bmp_round_trip_and_unwritable_destination(tmp_path):
    Image.fromarray(photo("chelsea")).save(tmp_path / "cat.bmp")
    img = read_image(tmp_path / "cat.bmp")
    assert img.format == "BMP"
    write_image(tmp_path / "out.bmp", img.rgb, like=img)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.bmp")), photo("chelsea"))
    (tmp_path / "a file").write_text("x")
    with pytest.raises(InputError, match="cannot create the output folder"):
        write_image(tmp_path / "a file" / "out.png", img.rgb, like=img)


def test_unknown_output_suffix_is_refused(tmp_path):
    with pytest.raises(InputError, match="cannot write"):
        write_image(tmp_path / "out.xyz", np.zeros((4, 4, 3), np.float32))


@pytest.mark.parametrize("name", ["фото кошки.png", "café au lait 16.tif"])
def test_non_ascii_and_spaced_names(tmp_path, name):
    src = make_16bit_rgb(tmp_path / name) if name.endswith(".tif") else make_icc(tmp_path / name)
    img = read_image(src)
    out = tmp_path / ("out " + name)
    write_image(out, img.rgb, like=img)
    assert read_image(out).bits == img.bits
    np.testing.assert_allclose(read_image(out).rgb, img.rgb, atol=1e-6)


def test_lab_tiff_is_converted_to_srgb(tmp_path):
    lab, srgb = ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB")
    to_lab = ImageCms.buildTransform(srgb, lab, "RGB", "LAB")
    ImageCms.applyTransform(Image.fromarray(photo()), to_lab).save(tmp_path / "lab.tif")
    img = read_image(tmp_path / "lab.tif")
    assert img.mode == "LAB" and any("LAB" in n for n in img.notes)
    assert np.abs(img.rgb - photo() / 255.0).mean() < 0.02
