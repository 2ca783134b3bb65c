"""The demo's service without a web page: same bytes as `fluxsr upscale`, the CLI's refusals, one job at a time."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from fluxsr_cli.cli import app
from fluxsr_cli.demo.service import DemoService, settings_from_env
from fluxsr_cli.errors import ConfigError, InputError
from fluxsr_cli.upscale.options import ModelOptions
from fluxsr_cli.upscale.restore import load_upscaler


@pytest.fixture(scope="module")
def upscaler(tiny_ckpt):
    return load_upscaler(ModelOptions(model=str(tiny_ckpt), device="cpu"))


@pytest.fixture()
def cat_jpg(tmp_path):
    from skimage import data

    path = tmp_path / "cat.jpg"
    Image.fromarray(data.chelsea()[::6, :450:6]).save(path, quality=92)  # 75x50 (w x h)
    return path


def test_output_is_the_cli_output_byte_for_byte(upscaler, tiny_ckpt, cat_jpg, tmp_path):
    service = DemoService(upscaler, workdir=tmp_path / "work")
    result = service.upscale(cat_jpg, scale=4, tile="auto", color_fix="wavelet", name="my cat.jpg")
    cli_out = tmp_path / "cli.png"
    run = CliRunner().invoke(app, ["upscale", str(cat_jpg), "-o", str(cli_out), "--model", str(tiny_ckpt)])
    assert run.exit_code == 0, run.output
    assert result.output.name == "my cat_x4.png" and result.size == (300, 200)
    assert result.output.read_bytes() == cli_out.read_bytes()


def test_before_is_the_bicubic_upscale(upscaler, cat_jpg, tmp_path):
    """The slider's "before": PyTorch's bicubic (a = -0.75, align_corners=False), written as 8-bit PNG."""
    result = DemoService(upscaler, workdir=tmp_path / "work").upscale(cat_jpg, scale=3)
    lq = torch.from_numpy(np.asarray(Image.open(cat_jpg), np.float32) / 255).permute(2, 0, 1)[None]
    expected = F.interpolate(lq, scale_factor=3, mode="bicubic", align_corners=False).clamp(0, 1)[0].permute(1, 2, 0)
    before = np.asarray(Image.open(result.before), np.float32) / 255
    assert before.shape == (150, 225, 3)
    assert np.abs(before - expected.numpy()).max() <= 1 / 255 + 1e-6


def test_oversized_input_is_refused_with_the_cli_message(upscaler, tiny_ckpt, cat_jpg, tmp_path):
    service = DemoService(upscaler, max_pixels=50_000, workdir=tmp_path / "work")
    with pytest.raises(InputError) as refused:
        service.upscale(cat_jpg, scale=4, name="holiday.jpg")
    run = CliRunner().invoke(app, ["upscale", str(cat_jpg), "-o", str(tmp_path / "o.png"), "--max-pixels", "0.05",
                                   "--model", str(tiny_ckpt)], env={"COLUMNS": "400"})
    assert run.exit_code == 2
    cli_message = run.output.strip().removeprefix("error: ")
    assert str(refused.value) == cli_message.replace(str(cat_jpg), "holiday.jpg")
    assert "300x200 = 0.1 MP, over --max-pixels 0.05" in cli_message
    assert str(tmp_path) not in str(refused.value)  # the server's path is not shown to the user
    assert service.upscale(cat_jpg, scale=2).size == (150, 100)  # and the next job runs


def test_not_an_image_names_the_upload(upscaler, tmp_path):
    text = tmp_path / "upload" / "notes.png"
    text.parent.mkdir()
    text.write_text("not an image")
    with pytest.raises(InputError, match=r"^notes\.png: not an image Pillow can read"):
        DemoService(upscaler, workdir=tmp_path / "work").upscale(text)


def test_auto_tile_is_fixed_at_start(upscaler, monkeypatch, tmp_path):
    """A later request gets the tile `auto` stood for at start-up, whatever memory says then."""
    service = DemoService(upscaler, workdir=tmp_path / "work")
    start = service.auto_tile
    monkeypatch.setattr(type(upscaler), "tile_pixels", lambda self, options=None: 256)
    assert service.options(tile="auto").tile == str(start) == "1024"  # no GPU: auto is 1024
    assert service.options(tile="512").tile == "512"
    with pytest.raises(ConfigError, match="--tile"):
        service.options(tile="100")


class _SlowUpscaler:
    """Stands in for the model: records when each call runs, and takes a while."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []

    def upscale_array(self, rgb, options, progress=None, notice=None):
        begin = time.perf_counter()
        time.sleep(0.2)
        self.spans.append((begin, time.perf_counter()))
        return np.repeat(np.repeat(rgb, options.scale, 0), options.scale, 1)


def test_one_job_at_a_time(cat_jpg, tmp_path):
    fake = _SlowUpscaler()
    service = DemoService(fake, workdir=tmp_path / "work", auto_tile=1024)  # type: ignore[arg-type]
    threads = [threading.Thread(target=service.upscale, args=(cat_jpg,), kwargs={"scale": 2}) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans = sorted(fake.spans)
    assert len(spans) == 3
    assert all(a_end <= b_begin for (_, a_end), (b_begin, _) in zip(spans, spans[1:], strict=False))


def test_old_jobs_are_removed(cat_jpg, tmp_path, monkeypatch):
    import fluxsr_cli.demo.service as service_module

    monkeypatch.setattr(service_module, "KEEP_JOBS", 2)
    service = DemoService(_SlowUpscaler(), workdir=tmp_path / "work", auto_tile=1024)  # type: ignore[arg-type]
    outputs = [service.upscale(cat_jpg, scale=1).output for _ in range(3)]
    assert [p.exists() for p in outputs] == [False, True, True]
    service.close()
    assert not (tmp_path / "work").exists()


def test_settings_from_env():
    model, max_pixels = settings_from_env({"FLUXSR_MODEL": "me/ckpt", "FLUXSR_BASE": "./flux", "FLUXSR_COMPILE": "1",
                                           "FLUXSR_OFFLOAD": "sequential", "FLUXSR_MAX_PIXELS": "16"})
    assert model == ModelOptions(model="me/ckpt", base="./flux", compile=True, offload="sequential")
    assert max_pixels == 16_000_000
    assert settings_from_env({}) == (ModelOptions(), 50_000_000)
    with pytest.raises(ConfigError, match="FLUXSR_COMPILE"):
        settings_from_env({"FLUXSR_COMPILE": "maybe"})
    with pytest.raises(ConfigError, match="--offload"):
        settings_from_env({"FLUXSR_OFFLOAD": "gpu"})


class _FakeGradio:
    """What run_job uses of Gradio: its Error and Warning."""

    class Error(Exception):
        def __init__(self, message, print_exception=True):
            super().__init__(message)

    warnings: list[str] = []
    Warning = warnings.append


def test_page_handler_feeds_the_progress_bar_and_turns_errors_into_messages(upscaler, cat_jpg, tmp_path):
    from fluxsr_cli.demo.ui import run_job

    service = DemoService(upscaler, workdir=tmp_path / "work")
    bar: list[tuple] = []
    upload = {"path": str(cat_jpg), "orig_name": "cat.jpg", "meta": {"_type": "gradio.FileData"}}
    (before, after), download, status = run_job(service, upload, 4, "256", "wavelet", _FakeGradio,
                                                lambda p, desc=None, unit=None: bar.append((p, desc)))
    assert after == download and download.endswith("cat_x4.png") and before.endswith("cat_bicubic_x4.png")
    assert "300x200" in status and "tile 256 px" in status
    tiles = [p for p, desc in bar if desc == "tiles"]  # 300x200 in 256 px tiles: 2x1 tiles
    assert tiles and tiles[-1] == (2, 2)
    with pytest.raises(_FakeGradio.Error, match="cat.jpg: not an uploaded file"):  # a file elsewhere on the server
        run_job(service, upload, 4, "auto", "wavelet", _FakeGradio, uploads=tmp_path / "uploads")
    with pytest.raises(_FakeGradio.Error, match="scale must be a whole number, got 'x4'"):
        run_job(service, upload, "x4", "auto", "wavelet", _FakeGradio)
    with pytest.raises(_FakeGradio.Error, match="--scale must be 1-8, got 9"):
        run_job(service, upload, 9, "auto", "wavelet", _FakeGradio)
    with pytest.raises(_FakeGradio.Error, match="Upload an image first"):
        run_job(service, None, 4, "auto", "wavelet", _FakeGradio)
    with pytest.raises(_FakeGradio.Error, match=r"^cat\.jpg: .*over --max-pixels"):
        run_job(DemoService(upscaler, max_pixels=1000, workdir=tmp_path / "w2"), upload, 4, "auto", "wavelet",
                _FakeGradio)
