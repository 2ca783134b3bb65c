"""The demo's web page (Gradio): upload, pick scale, tile and colour fix, run, compare, download.

Gradio is an optional extra (``pip install "fluxsr[demo]"``) and is imported only inside these
functions. The page is a thin shell over :class:`~fluxsr_cli.demo.service.DemoService`: the event
hands the uploaded file's path (not a decoded array: ``preprocess=False``) to the same code as
``fluxsr upscale``, library errors come back as ``gr.Error`` messages, the library's progress
callback drives ``gr.Progress``, and the queue runs one job at a time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fluxsr_cli.errors import ConfigError, FluxSRError, InputError, one_line
from fluxsr_cli.upscale.colorfix import METHODS as COLOR_FIXES

from .service import SCALES, TILES, DemoService

EXTRA = 'pip install "fluxsr[demo]"'
MIN_GRADIO = (5, 27)  # gr.ImageSlider joined Gradio's core components in 5.27
SPACE_HINT = "Settings for a Hugging Face Space: see app.py at the root of the fluxsr repository."


def require_gradio() -> Any:
    """Import Gradio, or raise a one-line :class:`ConfigError` that names the extra to install."""
    try:
        import gradio as gr
    except ImportError as e:
        raise ConfigError(f"the demo needs Gradio ({e.name or 'gradio'} is not installed); {EXTRA}") from None
    version = tuple(int(p) for p in gr.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_GRADIO:
        raise ConfigError(f"the demo needs Gradio >= {'.'.join(map(str, MIN_GRADIO))} for its image slider, "
                          f"found {gr.__version__}; {EXTRA} --upgrade")
    return gr


def _path_of(payload: Any) -> tuple[str | None, str | None]:
    """(server path, uploaded name) of an image payload that Gradio did not preprocess."""
    if payload is None:
        return None, None
    if isinstance(payload, (str, os.PathLike)):
        return str(payload), None
    get = payload.get if isinstance(payload, dict) else lambda k: getattr(payload, k, None)
    return get("path"), get("orig_name")


def run_job(service: DemoService, image: Any, scale: Any, tile: Any, color_fix: Any, gr: Any,
            progress: Any = None, uploads: str | Path | None = None) -> tuple[tuple[str, str], str, str]:
    """One click of "Upscale": ((before, after), download, status) or a ``gr.Error`` with the library's message.

    ``uploads``: the folder Gradio keeps uploads in; a path outside it is refused (the payload is not
    preprocessed, so this check is ours: a client must not make the server read its other files).
    """
    path, name = _path_of(image)
    if not path:
        raise gr.Error("Upload an image first.", print_exception=False)
    if uploads is not None and not Path(path).resolve().is_relative_to(Path(uploads).resolve()):
        raise gr.Error(f"{Path(path).name}: not an uploaded file; upload the image", print_exception=False)

    try:
        scale = int(scale)
    except (TypeError, ValueError):
        raise gr.Error(f"scale must be a whole number, got {scale!r}", print_exception=False) from None

    def report(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress((done, total) if total else None, desc=stage, unit=stage)

    try:
        result = service.upscale(path, scale=scale, tile=str(tile), color_fix=str(color_fix), name=name,
                                 progress=report, notice=lambda message: gr.Warning(message))
    except FluxSRError as e:
        raise gr.Error(str(e), print_exception=False) from None
    w, h = result.size
    status = f"**x{scale}: {w}x{h}** in {result.seconds:.1f} s (tile {result.tile} px, colour fix {color_fix})"
    status += "".join(f"\n- note: {n}" for n in result.notes)
    return (str(result.before), str(result.output)), str(result.output), status


def build_demo(service: DemoService) -> Any:
    """The Gradio Blocks page around ``service`` (not launched)."""
    gr = require_gradio()
    up = service.upscaler
    model = up.options.model if up.options else "?"
    header = (f"# FluxSR: one-step super-resolution with FLUX\n"
              f"Model `{model}` on {up.device} ({str(up.dtype).removeprefix('torch.')}); outputs up to "
              f"{service.write.max_pixels / 1e6:g} MP; one image at a time. The slider shows the bicubic "
              f"upscale (left) against FluxSR (right).")
    tiles = [(f"auto ({service.auto_tile} px)" if t == "auto" else f"{t} px", t) for t in TILES]

    def upscale(image, scale, tile, color_fix, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
        return run_job(service, image, scale, tile, color_fix, gr, progress, uploads=upload.GRADIO_CACHE)

    with gr.Blocks(title="FluxSR", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(header)
        with gr.Row():
            with gr.Column():
                upload = gr.Image(label="Low-resolution photo", type="filepath", image_mode=None,
                                  sources=["upload", "clipboard"])
                scale = gr.Radio(list(SCALES), value=4, label="Scale")
                tile = gr.Dropdown(tiles, value="auto", label="Tile (output pixels)")
                color_fix = gr.Radio(list(COLOR_FIXES), value="wavelet", label="Colour fix")
                run = gr.Button("Upscale", variant="primary")
            with gr.Column():
                slider = gr.ImageSlider(label="bicubic | FluxSR", type="filepath", interactive=False)
                download = gr.File(label="Download (PNG, metadata kept)", interactive=False)
                status = gr.Markdown(label="Status")
        # preprocess=False: the function gets the uploaded file itself (EXIF, 16-bit, alpha intact)
        run.click(upscale, [upload, scale, tile, color_fix], [slider, download, status], api_name="upscale",
                  concurrency_limit=1, preprocess=False)
    return demo


def launch(service: DemoService, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           block: bool = True, quiet: bool = False) -> Any:
    """Build and serve the page on ``host``:``port`` (a public gradio.live link only with ``share``).

    With ``block`` it serves until interrupted; else it returns the running Blocks (``.close()`` stops it).
    """
    demo = build_demo(service)
    demo.queue(default_concurrency_limit=1)
    try:
        demo.launch(server_name=host, server_port=port, share=share, show_error=True, ssr_mode=False,
                    prevent_thread_lock=not block, quiet=quiet)
    except OSError as e:  # the port is taken, or the address is not this machine's
        raise InputError(f"{host}:{port}: cannot serve the demo there ({one_line(e)}); choose another --port "
                         "or --host") from None
    return demo
