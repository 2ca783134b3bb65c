"""What a job will cost, said before it starts: tiles as the restore makes them, FLOPs as docs/method.md counts
them, the time scaled from a GPU's published rate, and the default that takes a phone photo at x4."""

from __future__ import annotations

import pytest
import torch

from fluxsr_cli.errors import InputError
from fluxsr_cli.model.architectures import FLUX_DEV_TRANSFORMER
from fluxsr_cli.upscale import estimate
from fluxsr_cli.upscale.batch import WriteOptions, check_job


def test_one_1024_px_call_is_methods_7_4e13_flop():
    """docs/method.md section 10: a 1024 px output is 4096 image tokens + 512 text tokens, 7.4e13 FLOP."""
    flops = estimate.transformer_flops(3072, 19, 38, 4096, 512)
    assert flops == pytest.approx(7.4e13, rel=0.01)


@pytest.mark.parametrize(("width", "height", "tiles"), [(1024, 1024, 1), (4096, 4096, 25), (2048, 1024, 3),
                                                        (16000, 12000, 16 * 21)])
def test_tiles_are_counted_as_the_restore_lays_them(width, height, tiles):
    # 1024 px tiles with 256 px overlap advance by at most 768 px: ceil((side - 1024) / 768) + 1 per side
    assert estimate.tiles_of(width, height, 1024, None) == tiles


def test_a_wide_single_tile_is_charged_its_own_tokens(monkeypatch):
    """1024 x 512 px: one call on 64 x 32 = 2048 image tokens, not a square tile's 4096."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    cost = estimate.estimate([(1024, 512, ".png", 8)], 1024, None, FLUX_DEV_TRANSFORMER, 512, torch.device("cuda"))
    transformer = estimate.transformer_flops(3072, 19, 38, 64 * 32, 512) / (989e12 * estimate.EFFICIENCY)
    vae = 1024 * 512 / 1e6 * estimate.VAE_SECONDS_PER_MP_H200
    assert cost.tiles == 1 and cost.seconds == pytest.approx(transformer + vae, rel=1e-6)


def test_the_time_is_scaled_from_the_gpus_rate_and_absent_elsewhere(monkeypatch):
    outputs = [(4096, 4096, ".png", 8)]
    cpu = estimate.estimate(outputs, 1024, None, FLUX_DEV_TRANSFORMER, 512, torch.device("cpu"))
    assert cpu.seconds is None and "time unknown on the CPU" in cpu.line()
    assert cpu.tiles == 25 and cpu.megapixels == pytest.approx(16.8, abs=0.1)
    assert cpu.disk_bytes == pytest.approx(4096 * 4096 * 1.8)
    seconds = {}
    for name in ("NVIDIA H200", "NVIDIA GeForce RTX 4090"):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, _n=name: _n)
        seconds[name] = estimate.estimate(outputs, 1024, None, FLUX_DEV_TRANSFORMER, 512, torch.device("cuda")).seconds
    # H200 eager, measured: 8.3 s for this job (transformer 4.4 s, VAE 3.7 s)
    assert 6 < seconds["NVIDIA H200"] < 10
    assert seconds["NVIDIA GeForce RTX 4090"] == pytest.approx(seconds["NVIDIA H200"] * 989 / 82.6, rel=1e-6)
    faster = estimate.estimate(outputs, 1024, None, FLUX_DEV_TRANSFORMER, 512, torch.device("cuda"), "fp8-compute")
    assert faster.seconds < seconds["NVIDIA GeForce RTX 4090"]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert estimate.estimate(outputs, 1024, None, FLUX_DEV_TRANSFORMER, 512, torch.device("cuda")).seconds is None


def test_a_batch_shared_by_processes_is_said_to_take_its_share(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    one = estimate.estimate([(4096, 4096, ".png", 8)] * 8, 1024, None, FLUX_DEV_TRANSFORMER, 512, torch.device("cuda"))
    four = one.across(4)
    assert four.seconds == pytest.approx(one.seconds / 4) and "on 4 x NVIDIA H200" in four.line()
    assert (four.images, four.tiles, four.disk_bytes) == (one.images, one.tiles, one.disk_bytes)
    assert one.across(1) is one


def test_a_12_mp_phone_photo_at_x4_is_taken_by_default(tmp_path):
    from PIL import Image

    src = tmp_path / "phone.jpg"
    Image.new("RGB", (4000, 3000)).save(src)
    assert check_job(src, tmp_path / "out.png", 4, WriteOptions())[1] == (16000, 12000)
    with pytest.raises(InputError, match="over --max-pixels 100; raise --max-pixels"):
        check_job(src, tmp_path / "out.png", 4, WriteOptions(max_pixels=100_000_000))
