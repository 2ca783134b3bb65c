"""`--compare`'s picture: the restore's bicubic upscale beside the result, whole or as a centred 100 % crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fluxsr_cli.images.compare import GAP, LABEL_HEIGHT
from fluxsr_cli.upscale.comparison import bicubic_rgb, comparison


def _torch_bicubic(lq: np.ndarray, scale: int) -> np.ndarray:
    x = torch.from_numpy(lq).permute(2, 0, 1)[None]
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)[0].permute(1, 2, 0).numpy()


@pytest.fixture()
def lq():
    return np.random.default_rng(0).random((30, 40, 3), dtype=np.float32)


def test_small_outputs_are_shown_whole(lq):
    result = np.random.default_rng(1).random((120, 160, 3), dtype=np.float32)
    sheet = comparison(lq, result, 4)
    assert sheet.shape == (LABEL_HEIGHT + 120, 2 * 160 + GAP, 3)
    np.testing.assert_allclose(sheet[LABEL_HEIGHT:, :160], _torch_bicubic(lq, 4), atol=1e-5)
    np.testing.assert_array_equal(sheet[LABEL_HEIGHT:, 160 + GAP:], result)


def test_large_outputs_are_compared_on_a_centred_crop_at_full_size(lq):
    result = np.random.default_rng(1).random((120, 160, 3), dtype=np.float32)
    sheet = comparison(lq, result, 4, max_panel=64)
    assert sheet.shape == (LABEL_HEIGHT + 64, 2 * 64 + GAP, 3)
    top, left = (120 - 64) // 2, (160 - 64) // 2
    np.testing.assert_allclose(sheet[LABEL_HEIGHT:, :64], _torch_bicubic(lq, 4)[top:top + 64, left:left + 64], atol=1e-5)
    np.testing.assert_array_equal(sheet[LABEL_HEIGHT:, 64 + GAP:], result[top:top + 64, left:left + 64])


def test_bicubic_rgb_is_torch_bicubic(lq):
    np.testing.assert_allclose(bicubic_rgb(lq, 3), _torch_bicubic(lq, 3), atol=1e-5)


def test_a_result_of_another_size_is_refused(lq):
    with pytest.raises(ValueError, match="expected 160x120"):
        comparison(lq, np.zeros((100, 160, 3), np.float32), 4)
