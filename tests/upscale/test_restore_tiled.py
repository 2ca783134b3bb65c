"""Tiled restore on the tiny random FLUX stack: sizes, equivalences, VAE statistics, memory options."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fluxsr_cli.errors import ConfigError, ResourceError
from fluxsr_cli.model import placement
from fluxsr_cli.model import vae as vae_lib
from fluxsr_cli.model.latents import pad_to_multiple
from fluxsr_cli.model.vae import StatsGroupNorm
from fluxsr_cli.upscale import bicubic, budget, restore, tiled_vae
from fluxsr_cli.upscale.bicubic import BicubicSource, bicubic_crop, bicubic_upsample
from fluxsr_cli.upscale.options import ModelOptions, UpscaleOptions
from fluxsr_cli.upscale.restore import apply_color_fix, load_upscaler
from fluxsr_cli.upscale.tiling import Box, tiled_apply

MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelOptions)}


def _load(model, **kw) -> tuple[restore.Upscaler, UpscaleOptions]:
    """The tiny model on the CPU and the per-image options: ``kw`` holds settings of either kind."""
    loading = ModelOptions(model=str(model), device="cpu", **{k: v for k, v in kw.items() if k in MODEL_FIELDS})
    return load_upscaler(loading), UpscaleOptions(**{k: v for k, v in kw.items() if k not in MODEL_FIELDS})


def _run(model, lq: np.ndarray, **kw) -> np.ndarray:
    up, options = _load(model, **kw)
    return up.upscale_array(lq, options)


@pytest.fixture(scope="module")
def lq(photo) -> np.ndarray:
    """A 40x52 crop of the astronaut -> 160x208 output, more than one 128 px tile."""
    return (photo[120:160, 170:222].astype(np.float32) / 255.0).copy()


@pytest.mark.parametrize("kw", [{"tile": "100"}, {"tile": "64"}, {"tile": "big"}, {"overlap": 600},
                                {"overlap": -1}, {"blend": "box"}, {"tile_batch": 0}, {"tile_space": "rgb"},
                                {"vae_tile": "100"}, {"vae_tile": "96"}, {"vae_tile": "small"}])
def test_bad_tiling_options(kw):
    with pytest.raises(ConfigError):
        UpscaleOptions(**kw)


def test_one_tile_gives_the_bytes_of_the_plain_restore(tiny_ckpt, small_photo):
    up, run = _load(tiny_ckpt, tile="1024")
    lq = torch.from_numpy(small_photo).permute(2, 0, 1)[None]
    with torch.no_grad():
        ref = bicubic_upsample(lq, 4)
        x, (h, w) = pad_to_multiple(ref)
        plain = up.decode(up.restore_latent(up.encode(x)))[..., :h, :w]
        plain = apply_color_fix(plain, ref, "wavelet")
    assert up.upscale_tensor(lq, run).numpy().tobytes() == plain.numpy().tobytes()


@pytest.mark.parametrize("space", ["latent", "pixel"])
def test_tiled_restore_runs_with_the_right_size(tiny_ckpt, lq, space):
    whole = _run(tiny_ckpt, lq)
    tiled = _run(tiny_ckpt, lq, tile="128", overlap=64, tile_space=space)
    assert tiled.shape == whole.shape == (160, 208, 3) and tiled.dtype == np.float32
    assert 0.0 <= tiled.min() and tiled.max() <= 1.0
    assert np.abs(tiled - whole).mean() < 0.06  # the same picture (a random model, so not identical)


def test_tile_batch_does_not_change_the_result(tiny_ckpt, lq):
    one = _run(tiny_ckpt, lq, tile="128", color_fix="none")
    three = _run(tiny_ckpt, lq, tile="128", tile_batch=3, color_fix="none")
    np.testing.assert_allclose(three, one, atol=1e-4)


def test_tiled_vae_is_used_when_the_vae_does_not_fit(tiny_ckpt, lq, monkeypatch):
    calls = _record_tiled_vae(monkeypatch)
    monkeypatch.setattr(budget, "CPU_VAE_BUDGET", 1)
    out = _run(tiny_ckpt, lq, tile="128")
    assert out.shape == (160, 208, 3) and calls == ["encode_tiled", "decode_tiled"]


def _record_tiled_vae(monkeypatch) -> list[str]:
    calls: list[str] = []
    for name in ("encode_tiled", "decode_tiled"):
        real = getattr(tiled_vae, name)
        monkeypatch.setattr(tiled_vae, name, lambda *a, _real=real, _n=name, **k: calls.append(_n) or _real(*a, **k))
    return calls


def test_vae_tile_tiles_the_vae_of_an_image_that_fits_one_transformer_tile(tiny_ckpt, lq, monkeypatch):
    calls = _record_tiled_vae(monkeypatch)
    whole = _run(tiny_ckpt, lq)
    assert calls == []
    tiled = _run(tiny_ckpt, lq, vae_tile="128")  # 160x208 output > 128 px
    assert calls == ["encode_tiled", "decode_tiled"]
    assert tiled.shape == whole.shape and np.isfinite(tiled).all()
    assert 0.0 < np.abs(tiled - whole).mean() < 0.1  # tiled differently, still the same picture


def test_vae_tile_is_not_used_with_pixel_tiles(tiny_ckpt, lq, monkeypatch):
    calls = _record_tiled_vae(monkeypatch)
    plain = _run(tiny_ckpt, lq)
    pixel = _run(tiny_ckpt, lq, tile_space="pixel", vae_tile="128")
    assert calls == [] and pixel.tobytes() == plain.tobytes()  # one transformer tile: the plain path


def test_fixed_group_norm_under_autograd_builds_a_fresh_graph_each_call():
    gn = StatsGroupNorm(2, 4)
    x = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(2))
    stats = tiled_vae.record_group_norm(gn, lambda: gn(x))
    with tiled_vae.fixed_group_norm(gn, stats):
        grads = []
        for _ in range(2):  # a cached scale/shift would make the second backward fail
            gn.zero_grad()
            gn(x).square().sum().backward()
            grads.append(gn.weight.grad.clone())
        with torch.no_grad():
            gn.weight.mul_(2)
        changed = gn(x)  # weights changed under autograd: used at once
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(changed, torch.nn.functional.group_norm(x, 2, gn.weight, gn.bias, gn.eps),
                               atol=1e-4, rtol=0)


def test_a_vae_tile_larger_than_the_image_keeps_the_bytes(tiny_ckpt, lq, monkeypatch):
    calls = _record_tiled_vae(monkeypatch)
    whole = _run(tiny_ckpt, lq)
    same = _run(tiny_ckpt, lq, vae_tile="256")
    assert calls == [] and same.tobytes() == whole.tobytes()


def test_bicubic_crop_equals_a_crop_of_the_padded_upscale():
    g = torch.Generator().manual_seed(0)
    for h, w in [(23, 37), (3, 40)]:  # reflect, and replicate (too thin to reflect)
        lq = torch.rand(1, 3, h, w, generator=g)
        full, _ = pad_to_multiple(bicubic_upsample(lq, 4))
        size = tuple(full.shape[-2:])
        for box in [Box(0, 0, *size), Box(5, 17, 40, 33), Box(size[0] - 8, size[1] - 24, 8, 24)]:
            crop = bicubic_crop(lq, 4, size, box)
            torch.testing.assert_close(crop, full[(..., *box.slices)], atol=1e-5, rtol=0)


@pytest.mark.parametrize("max_band_bytes", [64 * 2**20, 200_000, 1])  # whole image kept, bands, every box alone
def test_bicubic_source_serves_the_same_crops_as_bicubic_crop(max_band_bytes):
    """Row-major tiles (bands reused), then boxes out of order and across bands, incl. the padded edge."""
    lq = torch.rand(1, 3, 29, 41, generator=torch.Generator().manual_seed(3))
    full, _ = pad_to_multiple(bicubic_upsample(lq, 4))
    size = tuple(full.shape[-2:])  # 128 x 176: 12 + 12 padded rows/columns reflected
    source = BicubicSource(lq, 4, size, max_band_bytes=max_band_bytes)
    boxes = [Box(top, left, 64, 64) for top in (0, 32, 64) for left in (0, 40, 80, 112)]
    boxes += [Box(70, 3, 20, 50), Box(0, 0, *size), Box(100, 150, 28, 26), Box(66, 0, 2, 176)]
    made = []
    real = bicubic.bicubic_crop
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bicubic, "bicubic_crop", lambda *a: made.append(a[-1]) or real(*a))
        for box in boxes:
            torch.testing.assert_close(source(box), full[(..., *box.slices)], atol=1e-5, rtol=0)
            assert source(box).shape[-2:] == (box.height, box.width)
    assert source.whole_fits == (max_band_bytes == 64 * 2**20)
    if source.whole_fits:
        assert made == [Box(0, 0, *size)]  # made once, whole
    else:
        assert len(made) > 1


def test_a_kept_whole_upscale_is_filled_band_by_band(monkeypatch):
    """No full-size temporaries (an upsample, then padded copies of it): bands of FILL_BAND_BYTES."""
    lq = torch.rand(1, 3, 29, 41, generator=torch.Generator().manual_seed(4))
    full, _ = pad_to_multiple(bicubic_upsample(lq, 4))
    size = tuple(full.shape[-2:])  # 128 x 176, the last 12 rows and columns reflected
    monkeypatch.setattr(bicubic, "FILL_BAND_BYTES", 176 * 3 * 4 * 40)  # 40 rows
    made = []
    real = bicubic.bicubic_crop
    monkeypatch.setattr(bicubic, "bicubic_crop", lambda *a: made.append(a[-1]) or real(*a))
    source = BicubicSource(lq, 4, size)
    assert source.whole_fits
    torch.testing.assert_close(source(Box(0, 0, *size)), full, atol=1e-5, rtol=0)
    torch.testing.assert_close(source(Box(100, 150, 28, 26)), full[..., 100:, 150:], atol=1e-5, rtol=0)
    assert made == [Box(top, 0, min(40, 128 - top), 176) for top in (0, 40, 80, 120)]


def test_group_norm_statistics_pooled_over_tiles_equal_the_whole_images():
    """Four non-overlapping tiles through a GroupNorm: pooled mean/var == those of the whole input."""
    gn = StatsGroupNorm(4, 8)
    x = torch.randn(1, 8, 40, 60, generator=torch.Generator().manual_seed(5)) * 0.2 + 3.0  # mean >> std
    whole = tiled_vae.record_group_norm(gn, lambda: gn(x))
    pooled = tiled_vae.record_group_norm(gn, lambda: [gn(x[..., r:r + 20, c:c + 30]) for r in (0, 20) for c in (0, 30)])
    grouped = x.reshape(4, -1).double()
    for stats in (whole, pooled):
        torch.testing.assert_close(stats[""][0].double(), grouped.mean(1), atol=1e-6, rtol=0)
        torch.testing.assert_close(stats[""][1].double(), grouped.var(1, unbiased=False), atol=1e-6, rtol=1e-5)
    with tiled_vae.fixed_group_norm(gn, pooled):  # and the fixed forward is the plain one
        torch.testing.assert_close(gn(x), torch.nn.functional.group_norm(x, 4, gn.weight, gn.bias, gn.eps),
                                   atol=1e-4, rtol=0)


def test_fixed_group_norm_with_own_statistics_is_the_plain_forward(tiny_ckpt):
    up, run = _load(tiny_ckpt)
    z = torch.randn(1, 16, 12, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = vae_lib.decode(up.vae, z)
        stats = tiled_vae.record_group_norm(up.vae.decoder, lambda: vae_lib.decode(up.vae, z))
        with tiled_vae.fixed_group_norm(up.vae.decoder, stats):
            fixed = vae_lib.decode(up.vae, z)
    torch.testing.assert_close(fixed, plain, atol=1e-5, rtol=0)
    norms = [m for m in up.vae.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(isinstance(m, StatsGroupNorm) and m.mode == "plain" for m in norms)  # plain again


def test_stats_group_norm_is_group_norm_and_a_bare_one_is_refused():
    """Installed in place of nn.GroupNorm, sharing its parameters: the same outputs, bit for bit."""
    from fluxsr_cli.model.architectures import TINY_VAE, build_vae
    from fluxsr_cli.model.vae import install_stats_group_norms

    vae = build_vae(TINY_VAE, seed=4)
    z = torch.randn(1, 16, 6, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = vae_lib.decode(vae, z)
        weight = vae.decoder.conv_norm_out.weight
        installed = install_stats_group_norms(vae)
        after = vae_lib.decode(vae, z)
    assert len(installed) == sum(isinstance(m, torch.nn.GroupNorm) for m in vae.modules()) > 10
    assert vae.decoder.conv_norm_out.weight is weight and torch.equal(after, before)
    assert install_stats_group_norms(vae).keys() == installed.keys()  # idempotent
    with pytest.raises(TypeError, match="StatsGroupNorm"):
        tiled_vae.record_group_norm(torch.nn.GroupNorm(2, 4), lambda: None)


def test_global_group_norm_keeps_tiled_encode_closer_than_per_tile(tiny_ckpt, photo):
    up, run = _load(tiny_ckpt)
    x = torch.from_numpy(photo[:256, :256].astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        whole = vae_lib.encode(up.vae, x)
        pooled = tiled_vae.encode_tiled(up.vae, x, (256, 256), tile=128, overlap=64)
        per_tile = tiled_apply(lambda t: vae_lib.encode(up.vae, t), x, (32, 32), tile=16, overlap=8, in_factor=8)
    assert (pooled - whole).abs().mean() < (per_tile - whole).abs().mean()


def test_oom_halves_the_tile_and_says_so():
    notices, tiles = [], []

    def run(tile, attempt):
        tiles.append((tile, attempt))
        if tile > 256:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return "done"

    assert budget.retry_on_oom(run, 1024, notices.append) == "done"
    assert tiles == [(1024, 0), (512, 1), (256, 2)] and len(notices) == 2 and "--tile 512" in notices[0]

    def never(tile, attempt):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(ResourceError, match="--offload"):
        budget.retry_on_oom(never, 512, notices.append)


def test_auto_tile(tiny_ckpt, monkeypatch):
    up, run = _load(tiny_ckpt, tile="auto")
    assert up.tile_pixels(run) == 1024  # CPU: the default
    from fluxsr_cli.model.architectures import FLUX_DEV_TRANSFORMER, FLUX_VAE

    big_t = type("M", (), {"config": type("C", (), {"num_attention_heads": 24, "attention_head_dim": 128})})()
    big_v = type("M", (), {"config": type("C", (), {"block_out_channels": FLUX_VAE["block_out_channels"]})})()
    assert FLUX_DEV_TRANSFORMER["num_attention_heads"] == 24
    picks = []
    for gib in (80, 20, 6, 1):
        monkeypatch.setattr(budget, "free_bytes", lambda device, _g=gib: _g * 2**30)
        picks.append(budget.auto_tile(big_t, big_v, torch.device("cuda"), 2))
    assert picks == sorted(picks, reverse=True) and picks[0] == 2048 and picks[-1] < 1024


@pytest.mark.parametrize("offload", ["model", "sequential", "group"])
def test_offload_gives_the_same_picture(tiny_ckpt, small_photo, offload):
    plain = _run(tiny_ckpt, small_photo, color_fix="none")
    hooked = _run(tiny_ckpt, small_photo, color_fix="none", offload=offload)
    np.testing.assert_allclose(hooked, plain, atol=1e-5)


def test_group_offload_hooks_every_block(tiny_ckpt):
    """diffusers' group offloading, block by block; the VAE stays on the device as a plain module."""
    up, _ = _load(tiny_ckpt, offload="group")
    blocks = [*up.transformer.transformer_blocks, *up.transformer.single_transformer_blocks]
    assert all(getattr(b, "_diffusers_hook", None) is not None for b in blocks)
    assert getattr(up.vae, "_diffusers_hook", None) is None and getattr(up.vae, "_hf_hook", None) is None
    one_block = max(sum(p.numel() * p.element_size() for p in b.parameters()) for b in blocks)
    assert up.transient_bytes == 2 * one_block


def test_model_offload_plans_for_the_weights_it_brings(tiny_ckpt, monkeypatch):
    """With --offload model the transformer is off the GPU when the tile is planned: its weights count."""
    up, _ = _load(tiny_ckpt, offload="model")
    weights = sum(p.numel() * p.element_size() for p in up.transformer.parameters())
    weights += sum(b.numel() * b.element_size() for b in up.transformer.buffers())
    assert up.transient_bytes == weights
    asked = []
    monkeypatch.setattr(budget, "auto_tile", lambda *a, **k: asked.append(k["reserve"]) or 512)
    assert up.tile_pixels(UpscaleOptions(tile="auto")) == 512 and asked == [weights]


def test_auto_tile_leaves_room_for_weights_brought_in():
    """The full-size transformer's 23.8 GB, brought in per call, with 30 GiB free: a smaller tile."""
    from fluxsr_cli.model.architectures import FLUX_VAE

    big_t = type("M", (), {"config": type("C", (), {"num_attention_heads": 24, "attention_head_dim": 128})})()
    big_v = type("M", (), {"config": type("C", (), {"block_out_channels": FLUX_VAE["block_out_channels"]})})()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(budget, "free_bytes", lambda device: 30 * 2**30)
        resident = budget.auto_tile(big_t, big_v, torch.device("cuda"), 2)
        brought = budget.auto_tile(big_t, big_v, torch.device("cuda"), 2, reserve=int(23.8e9))
    assert (resident, brought) == (2048, 1280)


def test_a_tile_that_ran_out_of_memory_is_not_tried_again(tiny_ckpt, lq, monkeypatch):
    up, options = _load(tiny_ckpt, tile="512", color_fix="none")
    tried, notes = [], []
    real = up._upscale

    def upscale(lq, options, tile, retried, progress):
        tried.append(tile)
        if tile > 256:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8 GiB")
        return real(lq, options, tile, retried, progress)

    monkeypatch.setattr(up, "_upscale", upscale)
    first = up.upscale_array(lq, options, notice=notes.append)
    second = up.upscale_array(lq, options, notice=notes.append)
    assert tried == [512, 256, 256] and up.max_tile == 256 and up.tile_pixels(options) == 256
    assert second.tobytes() == first.tobytes() and any("kept for the next images" in n for n in notes)


def test_compile_wraps_the_transformer(tiny_ckpt, monkeypatch):
    from fluxsr_cli.model.architectures import TINY_TRANSFORMER, TINY_VAE, build_transformer, build_vae

    t, v = build_transformer(TINY_TRANSFORMER), build_vae(TINY_VAE)
    asked = []
    real = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: asked.append(kw) or real(self, **kw))
    placement.place_models(t, v, torch.device("cpu"), compile=True)
    assert t._compiled_call_impl is not None and v._compiled_call_impl is None
    assert v.encoder._compiled_call_impl is not None and v.decoder._compiled_call_impl is not None
    # automatic dynamic shapes: not one compilation per image size (dynamic=False did that)
    assert asked == [{"dynamic": None}] * 3


class _Graphs(list):
    """A torch.compile backend that records each graph it is given and runs it as traced."""

    def __call__(self, gm, example_inputs):
        self.append(gm)
        return gm.forward


def test_tiled_vae_runs_compiled_one_graph_per_pass_for_any_image_size():
    """The statistics pass and the tile pass each trace once for the tile shape; a second image of
    another size reuses both graphs (its tiles have the same shape), and the result is the eager one."""
    from fluxsr_cli.model.architectures import TINY_VAE, build_vae
    from fluxsr_cli.model.vae import install_stats_group_norms

    vae = build_vae(TINY_VAE, seed=3)
    install_stats_group_norms(vae)  # as place_models does before compiling
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(1, 3, 64, 64, generator=g), torch.rand(1, 3, 96, 64, generator=g)
    with torch.no_grad():
        reference = [tiled_vae.encode_tiled(vae, im, tuple(im.shape[-2:]), tile=32, overlap=16) for im in (x, y)]
        graphs = _Graphs()
        vae.encoder.compile(backend=graphs, dynamic=None)
        first = tiled_vae.encode_tiled(vae, x, (64, 64), tile=32, overlap=16)
        traced = len(graphs)
        second = tiled_vae.encode_tiled(vae, y, (96, 64), tile=32, overlap=16)
    assert traced >= 2 and len(graphs) == traced  # record and fixed passes: compiled, and not again
    torch.testing.assert_close(first, reference[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(second, reference[1], atol=1e-6, rtol=0)


def test_pixel_tiles_keep_the_compiled_transformer(tiny_ckpt, lq):
    up, run = _load(tiny_ckpt, tile="128", tile_space="pixel")
    graphs = _Graphs()
    up.transformer.compile(backend=graphs, dynamic=None)
    up.upscale_array(lq, run)
    assert len(graphs) >= 1  # the transformer ran outside the VAE's eager blocks


def test_kept_whole_upscale_gives_the_result_of_the_banded_one(tiny_ckpt, lq, monkeypatch):
    """Encoder passes and colour fix slicing one kept upscale == bands and strips made on their own."""
    up, run = _load(tiny_ckpt, tile="128", vae_tile="128")
    kept = up.upscale_array(lq, run)
    monkeypatch.setattr(BicubicSource, "whole_fits", property(lambda self: False))
    banded = up.upscale_array(lq, run)
    np.testing.assert_allclose(kept, banded, atol=1e-6)


def test_upscale_too_large_to_keep_is_made_once_for_the_encoder_then_in_strips(tiny_ckpt, lq, monkeypatch):
    """CPU, tiled VAE: both encoder passes slice one whole upscale (not overlapping bands, made 2-3
    times over); it is dropped before the decode and the colour fix makes its strips; same result."""
    up, run = _load(tiny_ckpt, tile="128", vae_tile="128")
    kept = up.upscale_array(lq, run)
    made: list[tuple] = []
    real = bicubic.bicubic_crop
    monkeypatch.setattr(bicubic, "bicubic_crop", lambda *a: made.append(a[2:]) or real(*a))
    monkeypatch.setitem(budget.KEEP_BICUBIC_BYTES, "cpu", 1000)  # nothing is kept to the colour fix
    sources, held_at_decode = [], []

    class Recorded(BicubicSource):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            sources.append(self)

    real_decode = tiled_vae.decode_tiled

    def decode_tiled(*args, **kwargs):
        held_at_decode.extend(s.band is not None for s in sources)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(bicubic, "BicubicSource", Recorded)
    monkeypatch.setattr(tiled_vae, "decode_tiled", decode_tiled)
    monkeypatch.setattr(budget, "COLOR_STRIP_BYTES", 1000)  # strips of 128 rows: two
    dropped = up.upscale_array(lq, run)
    h, w = lq.shape[0] * 4, lq.shape[1] * 4
    size = (restore.padded_size(h), restore.padded_size(w))
    assert made[0] == (size, Box(0, 0, *size))  # the encoder's: once, whole
    assert len(made) == 3 and all(m[0] == (h, w) and m[1].width == w for m in made[1:])  # colour-fix strips
    assert held_at_decode == [False]  # the whole upscale was dropped before the decode
    np.testing.assert_allclose(dropped, kept, atol=1e-6)


@pytest.mark.parametrize("kw", [{}, {"tile": "128", "vae_tile": "128"}])  # whole image, tiled VAE
def test_an_hwc_array_is_upsampled_as_nchw(tiny_ckpt, lq, kw, monkeypatch):
    """upscale_array's input is an HWC array permuted to NCHW, a channels-last view; PyTorch's CPU
    bicubic kernel is 1.5-2x slower on such a view, so the input is made NCHW-contiguous first."""
    up, run = _load(tiny_ckpt, **kw)
    seen = []
    real = bicubic.bicubic_upsample
    monkeypatch.setattr(bicubic, "bicubic_upsample",
                        lambda x, s: seen.append(x.is_contiguous(memory_format=torch.channels_last)) or real(x, s))
    up.upscale_array(lq, run)
    assert seen and not any(seen)
