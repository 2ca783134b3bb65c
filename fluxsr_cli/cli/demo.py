"""`fluxsr demo`: a local web page (Gradio) to upscale photos and compare them with bicubic."""

from __future__ import annotations

from typing import Annotated

import typer

from fluxsr_cli.cli import model_options as mo
from fluxsr_cli.cli.common import handle_errors, note, out, rich_progress
from fluxsr_cli.model.checkpoint import DEFAULT_MODEL


@handle_errors
def demo(
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to serve on.")] = 7860,
    host: Annotated[str, typer.Option("--host", help="Address to bind; 0.0.0.0 serves the local network.")] = "127.0.0.1",
    share: Annotated[bool, typer.Option("--share", help="Also publish a temporary public gradio.live link.")] = False,
    max_pixels: Annotated[float, typer.Option("--max-pixels", help="Refuse outputs above this many megapixels.")] = 50.0,
    model: mo.Model = DEFAULT_MODEL, revision: mo.Revision = None, base: mo.Base = None, vae: mo.Vae = None,
    offline: mo.Offline = False, device: mo.Device = None, dtype: mo.Dtype = None, t_l: mo.TL = None,
    guidance: mo.Guidance = None, offload: mo.Offload = "none", compile: mo.Compile = False,
    quantize: mo.Quantize = "none",
) -> None:
    """Serve a web page to upscale images: a before/after slider against bicubic, a PNG to download.

    The model is loaded once, at start; images are upscaled one at a time. Needs the demo extra:
    pip install "fluxsr\\[demo]". Only this machine can reach the page unless --host or --share says otherwise.

    Examples:
      fluxsr demo
      fluxsr demo --model ./my-checkpoint --base ./FLUX.1-dev --offline --port 8080
      fluxsr demo --quantize fp8 --max-pixels 16
    """
    from fluxsr_cli.demo.service import DemoService
    from fluxsr_cli.demo.ui import launch, require_gradio
    from fluxsr_cli.upscale.batch import WriteOptions
    from fluxsr_cli.upscale.restore import load_upscaler

    require_gradio()  # a missing extra fails before minutes of model loading
    loading = mo.model_options(model=model, revision=revision, base=base, vae=vae, offline=offline, device=device,
                               dtype=dtype, t_l=t_l, guidance=guidance, offload=offload, compile=compile,
                               quantize=quantize)
    write = WriteOptions(max_pixels=int(max_pixels * 1e6))
    with rich_progress(transient=True) as progress:
        upscaler = load_upscaler(loading, progress, notice=note)
    service = DemoService(upscaler, max_pixels=write.max_pixels)
    out.print(f"model loaded on {upscaler.device}; tile 'auto' is {service.auto_tile} px; Ctrl-C stops the demo")
    try:
        launch(service, host=host, port=port, share=share)
    finally:
        service.close()
