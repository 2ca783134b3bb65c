"""`fluxsr demo`'s page served on localhost and called through the real gradio_client.

Skipped only where Gradio is not installed (it is in the ``dev`` extra).
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fluxsr_cli.cli import app
from fluxsr_cli.demo.service import DemoService
from fluxsr_cli.upscale.options import ModelOptions
from fluxsr_cli.upscale.restore import load_upscaler

gradio = pytest.importorskip("gradio", reason="Gradio is not installed (pip install 'fluxsr[demo]')")
gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is not installed (pip install 'fluxsr[demo]')")
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # Gradio's own use of pandas


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_ckpt, tmp_path_factory):
    """The demo on a free localhost port with the tiny checkpoint (outputs over 0.5 MP refused), and a client."""
    from fluxsr_cli.demo.ui import launch

    upscaler = load_upscaler(ModelOptions(model=str(tiny_ckpt), device="cpu"))
    service = DemoService(upscaler, max_pixels=500_000, workdir=tmp_path_factory.mktemp("demo"))
    port = _free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))  # Gradio's copies of the files
        demo = launch(service, host="127.0.0.1", port=port, block=False, quiet=True)
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False,
                                      download_files=str(tmp_path_factory.mktemp("downloads")))
        yield client, service
        demo.close()
    service.close()


def _upscale(client, path, scale=4):
    return client.predict(gradio_client.handle_file(str(path)), scale, "auto", "wavelet", api_name="/upscale")


def test_upscale_through_the_page_equals_the_cli(served, tiny_ckpt, tmp_path):
    from skimage import data

    client, _ = served
    src = tmp_path / "coffee.png"
    Image.fromarray(data.coffee()[::8, ::8]).save(src)  # 75x50
    (before, after), download, status = _upscale(client, src)
    assert Image.open(download).size == Image.open(after).size == Image.open(before).size == (300, 200)
    assert "300x200" in status
    cli_out = tmp_path / "cli.png"
    run = CliRunner().invoke(app, ["upscale", str(src), "-o", str(cli_out), "--model", str(tiny_ckpt)])
    assert run.exit_code == 0, run.output
    with open(download, "rb") as f:
        assert f.read() == cli_out.read_bytes()


def test_bad_inputs_are_messages_and_the_server_goes_on(served, tmp_path):
    client, _ = served
    text = tmp_path / "notes.png"
    text.write_text("a shopping list")
    with pytest.raises(gradio_client.exceptions.AppError) as bad:
        _upscale(client, text)
    assert str(bad.value) == "notes.png: not an image Pillow can read; convert it to PNG or TIFF (16-bit keeps precision)"

    big = tmp_path / "big.png"
    Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(big)  # x4: 1200x800 = 0.96 MP > 0.5 MP
    with pytest.raises(gradio_client.exceptions.AppError) as refused:
        _upscale(client, big)
    assert str(refused.value) == ("big.png: output would be 1200x800 = 1.0 MP, over --max-pixels 0.5; "
                                  "raise --max-pixels or downscale the input")

    small = tmp_path / "small.png"
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(small)
    (_, after), _, _ = _upscale(client, small, scale=2)  # the next request is served
    assert Image.open(after).size == (60, 40)


def test_missing_extra_is_one_line_naming_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now raises ImportError
    run = CliRunner().invoke(app, ["demo", "--model", "nowhere/never"], env={"COLUMNS": "300"})
    assert run.exit_code == 2
    assert run.output.strip() == 'error: the demo needs Gradio (gradio is not installed); pip install "fluxsr[demo]"'


def test_a_taken_port_is_a_one_line_error(tmp_path):
    from types import SimpleNamespace

    import torch

    from fluxsr_cli.demo.ui import launch
    from fluxsr_cli.errors import InputError

    stand_in = SimpleNamespace(options=ModelOptions(), device=torch.device("cpu"), dtype=torch.float32)
    service = DemoService(stand_in, workdir=tmp_path, auto_tile=1024)  # type: ignore[arg-type]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InputError, match=rf"^127\.0\.0\.1:{port}: cannot serve the demo there .*another --port"):
            launch(service, host="127.0.0.1", port=port, block=False, quiet=True)
