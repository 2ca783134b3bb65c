"""The global colour fix: wavelet and AdaIN, whole and in strips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fluxsr_cli.upscale.colorfix import (
    Scratch,
    _blur,
    channel_stats,
    color_fix,
    color_fix_strips,
    wavelet_split,
)


@pytest.fixture(scope="module")
def x(photo) -> torch.Tensor:
    """The astronaut, [1, 3, 200, 168] in [0, 1]: real detail and real colour."""
    a = photo[100:300, 150:318].astype(np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()


CAST = torch.tensor([0.08, -0.05, 0.12]).view(1, 3, 1, 1)


def _laplacian(t: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).expand(3, 1, 3, 3)
    return F.conv2d(t, k, groups=3)


@pytest.mark.parametrize("dilation", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("shape", [(1, 3, 40, 33), (2, 1, 5, 7)])  # and sides shorter than the dilation
def test_blur_is_the_dilated_binomial_kernel_with_replicate_padding(dilation, shape):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(dilation))
    k1 = torch.tensor([0.25, 0.5, 0.25])
    kernel = (k1[:, None] * k1[None, :]).expand(shape[1], 1, 3, 3)
    d = dilation
    expected = F.conv2d(F.pad(x, (d, d, d, d), mode="replicate"), kernel, dilation=d, groups=shape[1])
    scratch = Scratch()
    torch.testing.assert_close(_blur(x, d, scratch=scratch), expected, atol=1e-6, rtol=0)
    y = x.clone()
    torch.testing.assert_close(_blur(y, d, out=y, scratch=scratch), expected, atol=1e-6, rtol=0)  # in place


def test_split_adds_up_and_constants_are_low(x):
    high, low = wavelet_split(x)
    torch.testing.assert_close(high + low, x, atol=1e-6, rtol=0)
    high_c, low_c = wavelet_split(torch.full_like(x, 0.3) + CAST)
    assert high_c.abs().max() < 1e-6  # a colour cast has no high band


def test_wavelet_removes_a_colour_cast_exactly(x):
    fixed = color_fix(x + CAST, x, "wavelet")
    torch.testing.assert_close(fixed, x, atol=1e-5, rtol=0)


def test_wavelet_fix_is_high_band_of_output_plus_low_band_of_reference(x):
    """The one-split form out + low(ref - out) equals the definition, two splits, to float rounding."""
    reference = F.avg_pool2d(F.pad(x, (3, 3, 3, 3), mode="replicate"), 7, stride=1) + CAST
    high_out, _ = wavelet_split(x)
    _, low_ref = wavelet_split(reference)
    torch.testing.assert_close(color_fix(x, reference, "wavelet"), high_out + low_ref, atol=1e-6, rtol=0)


def test_wavelet_keeps_the_outputs_detail_and_the_references_colour(x):
    """Reference: blurred and cast-free (a bicubic upscale); output: sharp with a cast (the model)."""
    reference = F.avg_pool2d(F.pad(x, (3, 3, 3, 3), mode="replicate"), 7, stride=1)
    fixed = color_fix(x + CAST, reference, "wavelet")
    _, low_ref = wavelet_split(reference)
    _, low_fixed = wavelet_split(fixed)
    assert (low_fixed - low_ref).abs().mean() < 0.01  # the low band is the reference's
    mean_f, _ = channel_stats(fixed)
    mean_r, _ = channel_stats(reference)
    assert (mean_f - mean_r).abs().max() < 2e-3  # the cast is gone
    lap_x, lap_f, lap_r = _laplacian(x), _laplacian(fixed), _laplacian(reference)
    corr = torch.corrcoef(torch.stack([lap_x.flatten(), lap_f.flatten(), lap_r.flatten()]))
    assert corr[0, 1] > 0.98 > corr[0, 2]  # the detail is the output's, not the blurred reference's
    assert lap_f.abs().mean() > 0.9 * lap_x.abs().mean()


def test_adain_matches_mean_and_std(x):
    reference = x * 0.7 + 0.1
    fixed = color_fix(x * 1.3 - 0.2, reference, "adain")
    for a, b in zip(channel_stats(fixed), channel_stats(reference), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_none_is_identity(x):
    assert color_fix(x + CAST, x, "none") is not None
    torch.testing.assert_close(color_fix(x + CAST, x, "none"), x + CAST)


@pytest.mark.parametrize("method", ["wavelet", "adain", "none"])
@pytest.mark.parametrize("strip", [32, 50, 128, 500])
def test_strips_equal_whole(x, method, strip):
    out = (x + CAST * 0.5).clamp(0, 1)
    reference = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    whole = color_fix(out, reference, method).clamp(0, 1)
    strips = color_fix_strips(out.clone(), lambda r0, r1: reference[:, :, r0:r1], method, strip=strip)
    torch.testing.assert_close(strips, whole, atol=1e-5, rtol=0)


def test_float16_does_not_overflow(x):
    """The blurs' 1/16 factors are deferred in float32; float16 (max 65504) must scale every level."""
    reference = (x + 0.2).clamp(0, 1)
    fixed = color_fix(x.half(), reference.half(), "wavelet")
    assert fixed.dtype == torch.float16 and torch.isfinite(fixed).all()
    torch.testing.assert_close(fixed.float(), color_fix(x, reference, "wavelet"), atol=2e-3, rtol=0)


def test_strips_report_progress_to_the_last_row(x):
    heard = []
    color_fix_strips(x.clone(), lambda r0, r1: x[:, :, r0:r1], "wavelet", strip=64,
                     progress=lambda stage, done, total: heard.append((stage, done, total)))
    assert heard[0] == ("colour fix", 0, 200) and heard[-1] == ("colour fix", 200, 200)
    assert [d for _, d, _ in heard] == sorted(d for _, d, _ in heard) and len(heard) == 5  # 0, 64, 128, 192, 200


def test_bad_method_and_shapes(x):
    with pytest.raises(ValueError, match="colour fix"):
        color_fix(x, x, "histogram")
    with pytest.raises(ValueError, match="shape"):
        color_fix(x, x[..., :10], "wavelet")
