"""Comparison pictures: sizes from their closed forms, panels placed pixel for pixel, labels drawn."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import ImageFont

from fluxsr_cli.images.compare import (
    BACKGROUND,
    FONT_SIZE,
    GAP,
    LABEL_HEIGHT,
    contact_sheet,
    crop_box,
    fit_text,
    label_band,
    side_by_side,
    thumbnail,
)


def _ink_columns(band: np.ndarray) -> np.ndarray:
    """Columns of a label band where white text was drawn."""
    return np.flatnonzero((band > 0.6).any(axis=(0, 2)))


def test_label_band_holds_the_text_as_pillow_measures_it():
    band = label_band("bicubic", 200)
    assert band.shape == (LABEL_HEIGHT, 200, 3)
    assert np.isclose(band[0, -1], BACKGROUND, atol=1 / 255).all()  # background away from the text
    ink = _ink_columns(band)
    width = ImageFont.load_default(size=FONT_SIZE).getlength("bicubic")
    assert ink.size and abs((ink[-1] + 1 - ink[0]) - width) <= 2  # as wide as Pillow says the word is
    rows = np.flatnonzero((band > 0.6).any(axis=(1, 2)))
    assert rows[0] > 0 and rows[-1] < LABEL_HEIGHT - 1  # inside the band, not clipped
    assert not np.array_equal(band, label_band("FluxSR", 200))


def test_long_labels_are_cut_to_fit():
    text = fit_text("a very long file name that cannot fit in a small cell.png", 120)
    assert text.endswith("…") and ImageFont.load_default(size=FONT_SIZE).getlength(text) <= 120
    assert fit_text("short", 120) == "short"
    assert _ink_columns(label_band("x" * 200, 100))[-1] < 100


def test_side_by_side_places_both_images_under_their_labels():
    rng = np.random.default_rng(0)
    left, right = rng.random((40, 60, 3), dtype=np.float32), rng.random((40, 60, 3), dtype=np.float32)
    sheet = side_by_side(left, right)
    assert sheet.shape == (LABEL_HEIGHT + 40, 2 * 60 + GAP, 3)
    np.testing.assert_array_equal(sheet[LABEL_HEIGHT:, :60], left)
    np.testing.assert_array_equal(sheet[LABEL_HEIGHT:, 60 + GAP:], right)
    assert (sheet[:, 60:60 + GAP] == np.float32(BACKGROUND)).all()
    left_band, right_band = sheet[:LABEL_HEIGHT, :60], sheet[:LABEL_HEIGHT, 60 + GAP:]
    assert left_band.std() > 0.05 and right_band.std() > 0.05  # text, not a plain band
    assert not np.array_equal(left_band, right_band)  # "bicubic" and "FluxSR"
    with pytest.raises(ValueError, match="one size"):
        side_by_side(left, right[:30])


@pytest.mark.parametrize(("size", "box"), [((800, 600), (0, 0, 800, 600)), ((3000, 1000), (988, 0, 1024, 1000)),
                                           ((2049, 4096), (512, 1536, 1024, 1024))])
def test_crop_box_is_centred_and_at_most_the_panel(size, box):
    assert crop_box(size, 1024) == box


def test_thumbnail_shrinks_large_images_and_centres_small_ones():
    rng = np.random.default_rng(1)
    small = rng.random((30, 50, 3), dtype=np.float32)
    cell = thumbnail(small, 64)
    assert cell.shape == (64, 64, 3)
    np.testing.assert_allclose(cell[17:47, 7:57], small, atol=0.5 / 255 + 1e-6)  # not enlarged, centred
    big = np.ones((400, 200, 3), np.float32)
    cell = thumbnail(big, 64)
    assert (cell[:, 16:48] == 1).all() and (cell[:, :16] == np.float32(BACKGROUND)).all()  # 32x64, centred


def test_contact_sheet_size_and_cells():
    rng = np.random.default_rng(2)
    images = [rng.random((20, 20, 3), dtype=np.float32) for _ in range(5)]
    sheet = contact_sheet([("worst", [(im, f"{i}") for i, im in enumerate(images[:3])]),
                           ("best", [(images[3], "3"), (images[4], "4")])], cell=32)
    assert sheet.shape == (2 * (2 * LABEL_HEIGHT + 32) + GAP, 3 * 32 + 2 * GAP, 3)
    second_row = LABEL_HEIGHT + (LABEL_HEIGHT + 32) + GAP + LABEL_HEIGHT + LABEL_HEIGHT
    np.testing.assert_allclose(sheet[second_row + 6:second_row + 26, 32 + GAP + 6:32 + GAP + 26], images[4],
                               atol=0.5 / 255 + 1e-6)
    assert (sheet[second_row:second_row + 32, 2 * (32 + GAP):] == np.float32(BACKGROUND)).all()  # no third cell
    with pytest.raises(ValueError):
        contact_sheet([("empty", [])])
