"""Degradation ops (blur, noise, JPEG), the config and the second-order pipeline."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from skimage import data

from fluxsr_cli.configs import load_config, to_dict
from fluxsr_cli.degrade import ops
from fluxsr_cli.degrade.config import DegradeConfig, StageConfig
from fluxsr_cli.degrade.kernels import gaussian_kernel, pulse_kernel, sinc_kernel
from fluxsr_cli.degrade.pipeline import StageDraw, apply_stage, degrade, draw_degradation
from fluxsr_cli.errors import ConfigError, InputError

ROOT = Path(__file__).resolve().parents[2]


def _photo(name: str = "astronaut", size: int = 128) -> torch.Tensor:
    """A real photo, centre-cropped to ``size`` and scaled to [0, 1]: [1, 3, size, size]."""
    img = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float() / 255
    h, w = img.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return img[:, top : top + size, left : left + size].unsqueeze(0).contiguous()


# ----------------------------------------------------------------------------- ops


def test_blur_applies_each_image_its_own_kernel_with_reflect_padding() -> None:
    x = _photo(size=64).repeat(2, 1, 1, 1)
    kernels = torch.stack([pulse_kernel(9), gaussian_kernel(9, 2.0)])
    y = ops.blur(x, kernels)
    assert torch.allclose(y[0], x[0], atol=1e-6)  # the pulse changes nothing
    assert torch.allclose(y[1:], ops.blur(x[1:], gaussian_kernel(9, 2.0)), atol=1e-6)
    assert (y[1] - x[1]).abs().mean() > 0.01
    # a constant image stays constant up to its borders (zero padding would darken them)
    flat = torch.full((1, 3, 20, 20), 0.7)
    assert torch.allclose(ops.blur(flat, gaussian_kernel(15, 3.0)), flat, atol=1e-6)
    # too small to reflect: still works
    assert ops.blur(torch.rand(1, 3, 4, 4), gaussian_kernel(21, 2.0)).shape == (1, 3, 4, 4)


def test_gaussian_noise_std_matches_sigma() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.full((2, 3, 200, 200), 0.5)
    for sigma in (5.0, 20.0):
        noise = ops.add_gaussian_noise(x, sigma / 255, gray=[False, True], generator=g) - x
        for i in range(2):
            assert noise[i].mean().item() == pytest.approx(0.0, abs=0.003)
            assert noise[i].std().item() == pytest.approx(sigma / 255, rel=0.03)


def test_grey_noise_is_identical_across_channels_and_colour_noise_is_not() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.full((2, 3, 64, 64), 0.5)
    noise = ops.gaussian_noise(x.shape, 10 / 255, [True, False], g)
    assert torch.equal(noise[0, 0], noise[0, 1]) and torch.equal(noise[0, 0], noise[0, 2])
    corr = torch.corrcoef(noise[1].reshape(3, -1))
    assert corr[0, 1].abs() < 0.05 and corr[1, 2].abs() < 0.05
    poisson = ops.poisson_noise(_photo(size=64).repeat(2, 1, 1, 1), 1.0, [True, False], g)
    assert torch.equal(poisson[0, 0], poisson[0, 2])
    assert not torch.equal(poisson[1, 0], poisson[1, 2])


def test_poisson_noise_scales_with_the_image_and_the_scale() -> None:
    g = torch.Generator().manual_seed(2)
    # 256 distinct levels: the counting unit is 1/256; variance = scale^2 * x / 256
    ramp = torch.arange(256.0).repeat_interleave(4) / 255  # 1024 values
    x = ramp.reshape(1, 1, 1, -1).expand(1, 3, 512, -1).contiguous()
    noise = ops.poisson_noise(x, 1.0, False, g)
    var = noise.pow(2).mean(dim=(0, 1, 2))  # per column, mean over 3 x 512 samples
    dark, bright = var[100:300].mean(), var[-300:-100].mean()  # x about 0.2 and 0.8
    assert (bright / dark).item() == pytest.approx((ramp[-300:-100].mean() / ramp[100:300].mean()).item(), rel=0.1)
    assert var[-200:].mean().item() == pytest.approx(ramp[-200:].mean().item() / 256, rel=0.05)
    assert noise.mean().abs().item() < 1e-3  # unbiased
    doubled = ops.poisson_noise(x, 2.0, False, torch.Generator().manual_seed(2))
    assert torch.allclose(doubled, 2 * noise, atol=1e-6)  # same draws, twice the amplitude
    assert ops.poisson_noise(torch.zeros(1, 3, 8, 8), 3.0, False, g).abs().max() == 0  # black has no shot noise
    # three distinct levels: the unit is 1/4, so the noise is much stronger than on the ramp
    steps = torch.tensor([0.2, 0.6, 1.0]).repeat_interleave(100).reshape(1, 1, 1, -1).expand(1, 3, 300, -1)
    coarse = ops.poisson_noise(ops.quantize(steps), 1.0, False, g)
    assert coarse[..., 200:].pow(2).mean().item() == pytest.approx(1.0 / 4, rel=0.05)


def test_jpeg_lower_quality_gives_larger_error_and_stays_on_8bit_levels() -> None:
    x = ops.quantize(_photo("coffee", 128))
    errors = []
    for q in (95, 75, 50, 30, 10):
        y = ops.jpeg(x, q)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert y.min() >= 0 and y.max() <= 1
        assert torch.equal(y * 255, (y * 255).round())
        errors.append((y - x).pow(2).mean().item())
    assert errors == sorted(errors) and errors[0] > 0
    assert errors[-1] > 4 * errors[0]
    # per-image qualities and colours kept (RGB, not BGR)
    both = ops.jpeg(torch.cat([x, x]), [95, 10])
    assert torch.equal(both[0], ops.jpeg(x, 95)[0]) and not torch.equal(both[0], both[1])
    red = torch.zeros(1, 3, 16, 16)
    red[:, 0] = 1
    assert ops.jpeg(red, 90)[0, 0].mean() > 0.9


def test_quantize_and_resize() -> None:
    x = torch.tensor([-0.2, 0.0, 0.5, 1.0, 1.3, 0.1234])
    q = ops.quantize(x)
    assert q.min() == 0 and q.max() == 1 and torch.equal(q * 255, (q * 255).round())
    img = torch.rand(1, 3, 30, 40)
    for mode in ("area", "bilinear", "bicubic"):
        assert ops.resize(img, (15, 13), mode).shape == (1, 3, 15, 13)
        assert ops.resize(img, (60, 80), mode).shape == (1, 3, 60, 80)
    with pytest.raises(ValueError):
        ops.resize(img, (10, 10), "nearest")


# ----------------------------------------------------------------------------- config


def test_toml_file_holds_the_defaults_and_overrides_reach_stage2() -> None:
    cfg = load_config(DegradeConfig, ROOT / "configs" / "degrade_realesrgan.toml", "degrade")
    assert cfg == DegradeConfig()
    # the published Real-ESRGAN values (docs/method.md section 6)
    assert cfg.scale == 4 and cfg.final_sinc_prob == 0.8
    assert cfg.stage1.kernel_probs == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03) and cfg.stage1.sinc_prob == 0.1
    assert cfg.stage1.sigma_range == (0.2, 3.0) and cfg.stage2.sigma_range == (0.2, 1.5)
    assert cfg.stage1.resize_probs == (0.2, 0.7, 0.1) and cfg.stage2.resize_probs == (0.3, 0.4, 0.3)
    assert cfg.stage1.noise_sigma_range == (1.0, 30.0) and cfg.stage2.noise_sigma_range == (1.0, 25.0)
    assert cfg.stage1.poisson_scale_range == (0.05, 3.0) and cfg.stage2.poisson_scale_range == (0.05, 2.5)
    assert cfg.stage2.blur_prob == 0.8 and cfg.stage1.blur_prob == 1.0
    assert cfg.stage1.jpeg_range == cfg.stage2.jpeg_range == (30, 95)
    changed = load_config(DegradeConfig, None, overrides=["stage2.blur_prob=0.5", "scale=2"])
    assert changed.stage2.blur_prob == 0.5 and changed.scale == 2 and changed.stage1 == cfg.stage1
    assert json.loads(json.dumps(to_dict(cfg)))["stage2"]["resize_range"] == [0.3, 1.2]


@pytest.mark.parametrize("override", [
    "stage1.blur_prob=1.5", "stage1.kernel_probs=[0.5,0.5]", "stage1.sigma_range=[3,0.2]",
    "stage1.kernel_sizes=[8]", "stage2.resize_range=[0.5,0.9]", "stage2.jpeg_range=[30,120]",
    "scale=0", "stage1.resize_modes=[nearest]", "final_sinc_omega_range=[0.5,4]", "stage1.nosuch=1",
])
def test_bad_settings_raise_config_errors(override: str) -> None:
    with pytest.raises(ConfigError):
        load_config(DegradeConfig, None, overrides=[override])


# ----------------------------------------------------------------------------- pipeline


def test_output_size_range_and_levels() -> None:
    hq = torch.cat([_photo("astronaut", 96), _photo("chelsea", 96)])[:, :, :, :88]  # [2, 3, 96, 88]
    lq, params = degrade(hq, DegradeConfig(), torch.Generator().manual_seed(0))
    assert lq.shape == (2, 3, 24, 22) and len(params) == 2
    assert lq.min() >= 0 and lq.max() <= 1 and torch.equal(lq * 255, (lq * 255).round())
    lq2, _ = degrade(hq, DegradeConfig(scale=2), torch.Generator().manual_seed(0))
    assert lq2.shape == (2, 3, 48, 44)
    # an LR image still looks like its HQ image: closer to it than to the other photo
    down = ops.resize(hq, (24, 22), "area")
    assert (lq[0] - down[0]).abs().mean() < (lq[0] - down[1]).abs().mean()


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    hq = _photo("astronaut", 64).repeat(3, 1, 1, 1)
    a, pa = degrade(hq, DegradeConfig(), torch.Generator().manual_seed(7))
    b, pb = degrade(hq, DegradeConfig(), torch.Generator().manual_seed(7))
    c, pc = degrade(hq, DegradeConfig(), torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and pa == pb
    assert not torch.equal(a, c) and pa != pc


def test_images_of_one_batch_get_their_own_draws() -> None:
    hq = _photo("astronaut", 64).repeat(4, 1, 1, 1)  # four identical images
    lq, params = degrade(hq, DegradeConfig(), torch.Generator().manual_seed(3))
    assert len({json.dumps(p, sort_keys=True) for p in params}) == 4
    for i in range(1, 4):
        assert not torch.equal(lq[0], lq[i])


def test_stage_noise_sigma_is_in_8bit_levels() -> None:
    x = torch.full((1, 3, 128, 128), 0.5)
    d = StageDraw(blur=None, resize="keep", resize_scale=1.0, resize_mode="area", noise="gaussian",
                  noise_sigma=20.0, poisson_scale=None, gray_noise=False, jpeg_quality=95)
    y = apply_stage(x, d, (128, 128), torch.Generator().manual_seed(0))
    assert (y - x).std().item() == pytest.approx(20 / 255, rel=0.03)
    half = apply_stage(x, dataclasses.replace(d, resize_scale=0.5, resize="down"), (128, 128), torch.Generator())
    assert half.shape == (1, 3, 64, 64)


def test_pipeline_composes_the_ops_in_order() -> None:
    """With near-identity settings at scale 1 the pipeline is blur -> JPEG(q1) -> JPEG(q2), exactly."""
    quiet = {"resize_probs": (0.0, 0.0, 1.0), "resize_modes": ("area",), "gaussian_noise_prob": 1.0,
             "noise_sigma_range": (0.0, 0.0), "gray_noise_prob": 0.0, "sinc_prob": 0.0}
    stage1 = StageConfig(kernel_sizes=(7,), kernel_kinds=("iso",), kernel_probs=(1.0,), sigma_range=(1.5, 1.5),
                         jpeg_range=(20, 20), **quiet)
    stage2 = StageConfig(blur_prob=0.0, jpeg_range=(90, 90), **quiet)
    cfg = DegradeConfig(scale=1, stage1=stage1, stage2=stage2, final_sinc_prob=0.0, final_resize_modes=("area",))
    hq = _photo("astronaut", 64)
    lq, _ = degrade(hq, cfg, torch.Generator().manual_seed(0))
    expected = ops.quantize(ops.jpeg(ops.jpeg(ops.blur(hq, gaussian_kernel(7, 1.5)), 20), 90))
    assert torch.equal(lq, expected)
    # and the final sinc filter, when drawn, is applied
    lq_sinc, params = degrade(hq, cfg.replace(final_sinc_prob=1.0, jpeg_first_prob=1.0), torch.Generator())
    sinc = params[0]["final"]["sinc"]
    kernel = sinc_kernel(sinc["size"], sinc["omega_c"])
    assert torch.allclose(lq_sinc, ops.quantize(ops.blur(expected, kernel)), atol=1.01 / 255)


def _check_stage(s: dict, cfg: StageConfig, lo_omega_small: float) -> None:
    blur = s["blur"]
    if blur is not None:
        assert blur["size"] in cfg.kernel_sizes
        if blur["kind"] == "sinc":
            lo = max(cfg.sinc_omega_range[0], lo_omega_small) if blur["size"] < 13 else cfg.sinc_omega_range[0]
            assert lo <= blur["omega_c"] <= cfg.sinc_omega_range[1]
        else:
            assert blur["kind"] in cfg.kernel_kinds
            assert cfg.sigma_range[0] <= blur["sigma_x"] <= cfg.sigma_range[1]
            if blur["kind"].endswith("aniso"):
                assert cfg.sigma_range[0] <= blur["sigma_y"] <= cfg.sigma_range[1]
                assert cfg.rotation_range[0] <= blur["theta"] <= cfg.rotation_range[1]
            else:
                assert "sigma_y" not in blur and "theta" not in blur
            if blur["kind"].startswith("generalized"):
                assert cfg.betag_range[0] <= blur["beta"] <= cfg.betag_range[1]
            elif blur["kind"].startswith("plateau"):
                assert cfg.betap_range[0] <= blur["beta"] <= cfg.betap_range[1]
            else:
                assert "beta" not in blur
    lo, hi = cfg.resize_range
    expected = {"up": (1.0, hi), "down": (lo, 1.0), "keep": (1.0, 1.0)}[s["resize"]]
    assert expected[0] <= s["resize_scale"] <= expected[1]
    assert s["resize_mode"] in cfg.resize_modes
    if s["noise"] == "gaussian":
        assert cfg.noise_sigma_range[0] <= s["noise_sigma"] <= cfg.noise_sigma_range[1]
    else:
        assert cfg.poisson_scale_range[0] <= s["poisson_scale"] <= cfg.poisson_scale_range[1]
    assert isinstance(s["jpeg_quality"], int) and cfg.jpeg_range[0] <= s["jpeg_quality"] <= cfg.jpeg_range[1]


NARROW = DegradeConfig(
    stage1=StageConfig(kernel_sizes=(9, 11), sinc_prob=0.5, sigma_range=(1.0, 1.1), betag_range=(3.0, 4.0),
                       resize_probs=(0.5, 0.5, 0.0), resize_range=(0.5, 1.1), noise_sigma_range=(5.0, 6.0),
                       gaussian_noise_prob=0.3, jpeg_range=(70, 72), resize_modes=("bicubic",)),
    stage2=StageConfig(blur_prob=0.3, kernel_kinds=("plateau_aniso", "generalized_iso"), kernel_probs=(0.5, 0.5),
                       betap_range=(1.0, 1.5), poisson_scale_range=(0.1, 0.2), jpeg_range=(40, 40)),
    final_sinc_prob=0.2, final_sinc_sizes=(7,), final_sinc_omega_range=(1.0, 1.2), final_resize_modes=("area",),
)


@pytest.mark.parametrize("cfg", [DegradeConfig(), NARROW], ids=["realesrgan", "narrow"])
def test_drawn_parameters_respect_the_config_over_many_seeds(cfg: DegradeConfig) -> None:
    n = 1500
    draws = [draw_degradation(cfg, torch.Generator().manual_seed(seed)).to_dict() for seed in range(n)]
    for d in draws:
        json.dumps(d)
        _check_stage(d["stage1"], cfg.stage1, cfg.stage1.sinc_small_omega_min)
        _check_stage(d["stage2"], cfg.stage2, cfg.stage2.sinc_small_omega_min)
        assert d["final"]["resize_mode"] in cfg.final_resize_modes
        sinc = d["final"]["sinc"]
        if sinc is not None:
            assert sinc["kind"] == "sinc" and sinc["size"] in cfg.final_sinc_sizes
            assert cfg.final_sinc_omega_range[0] <= sinc["omega_c"] <= cfg.final_sinc_omega_range[1]

    def rate(pred) -> float:
        return sum(map(pred, draws)) / n

    tol = 4 * math.sqrt(0.25 / n)  # four standard errors
    s1, s2 = cfg.stage1, cfg.stage2
    assert rate(lambda d: d["stage2"]["blur"] is not None) == pytest.approx(s2.blur_prob, abs=tol)
    assert rate(lambda d: d["stage1"]["blur"]["kind"] == "sinc") == pytest.approx(s1.sinc_prob, abs=tol)
    assert rate(lambda d: d["stage1"]["noise"] == "gaussian") == pytest.approx(s1.gaussian_noise_prob, abs=tol)
    assert rate(lambda d: d["stage2"]["gray_noise"]) == pytest.approx(s2.gray_noise_prob, abs=tol)
    assert rate(lambda d: d["stage1"]["resize"] == "down") == pytest.approx(s1.resize_probs[1], abs=tol)
    assert rate(lambda d: d["final"]["sinc"] is not None) == pytest.approx(cfg.final_sinc_prob, abs=tol)
    assert rate(lambda d: d["final"]["jpeg_first"]) == pytest.approx(cfg.jpeg_first_prob, abs=tol)
    kind0 = s1.kernel_kinds[0]
    expected = (1 - s1.sinc_prob) * s1.kernel_probs[0]
    assert rate(lambda d: d["stage1"]["blur"]["kind"] == kind0) == pytest.approx(expected, abs=tol)
    qualities = {d["stage1"]["jpeg_quality"] for d in draws}
    assert min(qualities) == s1.jpeg_range[0] and max(qualities) == s1.jpeg_range[1]  # both ends reached


def test_bad_inputs_are_refused() -> None:
    g = torch.Generator()
    with pytest.raises(InputError):
        degrade(torch.rand(1, 1, 32, 32), DegradeConfig(), g)  # not RGB
    with pytest.raises(InputError):
        degrade(torch.rand(1, 3, 3, 32), DegradeConfig(), g)  # smaller than the scale
    with pytest.raises(InputError):
        degrade(torch.rand(1, 3, 32, 32) * 255, DegradeConfig(), g)  # not in [0, 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_images_with_cpu_draws_match_the_cpu_closely() -> None:
    hq = _photo("astronaut", 128).repeat(2, 1, 1, 1)
    cpu, pc = degrade(hq, DegradeConfig(), torch.Generator().manual_seed(5))
    gpu, pg = degrade(hq.cuda(), DegradeConfig(), torch.Generator().manual_seed(5))
    assert pc == pg and gpu.is_cuda
    assert (gpu.cpu() - cpu).abs().mean() < 2 / 255
