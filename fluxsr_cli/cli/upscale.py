"""`fluxsr upscale IN -o OUT`: one image, one transformer pass (tiled when large)."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Annotated

import typer

from fluxsr_cli.cli import model_options as mo
from fluxsr_cli.cli.common import handle_errors, note, out, rich_progress
from fluxsr_cli.model.checkpoint import DEFAULT_MODEL


@handle_errors
def upscale(
    src: Annotated[Path, typer.Argument(help="Input image (PNG, JPEG, WebP, TIFF, BMP, ...).", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file; its suffix picks the format.",
                                         show_default=False)],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    quality: Annotated[int, typer.Option("--quality", help="Quality for JPEG/WebP outputs.")] = 95,
    strip_metadata: Annotated[bool, typer.Option("--strip-metadata", help="Drop EXIF and ICC profile.")] = False,
    max_pixels: Annotated[float, typer.Option("--max-pixels", help="Refuse outputs above this many megapixels.")] = 50.0,
    model: mo.Model = DEFAULT_MODEL, revision: mo.Revision = None, base: mo.Base = None, offline: mo.Offline = False,
    device: mo.Device = None, dtype: mo.Dtype = None, t_l: mo.TL = None, guidance: mo.Guidance = None,
    scale: mo.Scale = 4, tile: mo.Tile = "1024", overlap: mo.Overlap = None,
    blend: mo.Blend = "cosine", tile_batch: mo.TileBatch = 1, tile_space: mo.TileSpace = "latent",
    vae_tile: mo.VaeTile = "auto", color_fix: mo.ColorFix = "wavelet", offload: mo.Offload = "none", compile: mo.Compile = False,
) -> None:
    """Upscale one image x4 (by default) with the one-step FluxSR model.

    Examples:
      fluxsr upscale photo.jpg -o photo_x4.png
      fluxsr upscale scan.tif -o scan_x4.tif --tile 768 --offload model
      fluxsr upscale in.png -o out.png --model ./my-checkpoint --base ./FLUX.1-dev --offline
    """
    from fluxsr_cli.upscale.batch import WriteOptions, check_job, upscale_file
    from fluxsr_cli.upscale.restore import load_upscaler

    loading = mo.model_options(model=model, revision=revision, base=base, offline=offline, device=device,
                               dtype=dtype, t_l=t_l, guidance=guidance, offload=offload, compile=compile)
    options = mo.upscale_options(scale=scale, tile=tile, overlap=overlap, blend=blend,
                                 tile_batch=tile_batch, tile_space=tile_space, vae_tile=vae_tile, color_fix=color_fix)
    write = WriteOptions(overwrite=overwrite, quality=quality, strip_metadata=strip_metadata,
                         max_pixels=int(max_pixels * 1e6))
    check_job(src, output, scale, write)  # bad input fails before minutes of model loading
    start = time.perf_counter()
    with rich_progress(transient=True) as progress:
        upscaler = load_upscaler(loading, progress, notice=note)
        fn = functools.partial(upscaler.upscale_array, options=options, progress=progress, notice=note)
        result = upscale_file(src, output, fn, scale=scale, options=write)
    for message in result.notes:  # what the output could not keep (alpha into JPEG, pages, CMYK, ...)
        note(message)
    out.print(f"wrote {output} ({result.out_size[0]}x{result.out_size[1]}) in {time.perf_counter() - start:.1f} s")
