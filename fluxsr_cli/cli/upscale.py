"""`fluxsr upscale IN -o OUT`: one image, one transformer pass (tiled when large)."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from fluxsr_cli.cli import model_options as mo
from fluxsr_cli.cli.common import handle_errors, note, out, rich_progress
from fluxsr_cli.errors import InputError
from fluxsr_cli.model.checkpoint import DEFAULT_MODEL


@handle_errors
def upscale(
    src: Annotated[Path, typer.Argument(help="Input image (PNG, JPEG, WebP, TIFF, BMP, ...).", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file; its suffix picks the format.",
                                         show_default=False)],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    quality: Annotated[int, typer.Option("--quality", help="Quality for JPEG/WebP outputs.")] = 95,
    strip_metadata: Annotated[bool, typer.Option("--strip-metadata", help="Drop EXIF and ICC profile.")] = False,
    max_pixels: Annotated[float, typer.Option("--max-pixels", help="Refuse outputs above this many megapixels "
                                              "(256: a 16 MP photo at x4).")] = 256.0,
    compare: Annotated[Path | None, typer.Option("--compare", show_default=False, help=(
        "Also write the bicubic upscale and the result side by side, labelled, to this file "
        "(a centred crop of each at 100 % for outputs over 1024 px)."))] = None,
    model: mo.Model = DEFAULT_MODEL, revision: mo.Revision = None, base: mo.Base = None, vae: mo.Vae = None,
    offline: mo.Offline = False,
    device: mo.Device = None, dtype: mo.Dtype = None, t_l: mo.TL = None, guidance: mo.Guidance = None,
    scale: mo.Scale = 4, tile: mo.Tile = "1024", overlap: mo.Overlap = None,
    blend: mo.Blend = "cosine", tile_batch: mo.TileBatch = 1, tile_space: mo.TileSpace = "latent",
    vae_tile: mo.VaeTile = "auto", color_fix: mo.ColorFix = "wavelet", offload: mo.Offload = "none", compile: mo.Compile = False,
    quantize: mo.Quantize = "none",
) -> None:
    """Upscale one image x4 (by default) with the one-step FluxSR model.

    Examples:
      fluxsr upscale photo.jpg -o photo_x4.png
      fluxsr upscale scan.tif -o scan_x4.tif --tile 768 --offload model
      fluxsr upscale in.png -o out.png --model ./my-checkpoint --base ./FLUX.1-dev --offline
      fluxsr upscale photo.jpg -o photo_x4.png --compare photo_vs_bicubic.png
    """
    from fluxsr_cli.atomic import check_writable, sweep_temporaries_of
    from fluxsr_cli.upscale.batch import WriteOptions, check_job, upscale_file
    from fluxsr_cli.upscale.restore import load_upscaler

    loading = mo.model_options(model=model, revision=revision, base=base, vae=vae, offline=offline, device=device,
                               dtype=dtype, t_l=t_l, guidance=guidance, offload=offload, compile=compile,
                               quantize=quantize)
    options = mo.upscale_options(scale=scale, tile=tile, overlap=overlap, blend=blend,
                                 tile_batch=tile_batch, tile_space=tile_space, vae_tile=vae_tile, color_fix=color_fix)
    write = WriteOptions(overwrite=overwrite, quality=quality, strip_metadata=strip_metadata,
                         max_pixels=int(max_pixels * 1e6))
    _, (out_w, out_h) = check_job(src, output, scale, write)  # bad input fails before minutes of model loading
    if compare is not None:
        if compare.resolve() == output.resolve():
            raise InputError(f"{compare}: --compare must name another file than -o")
        if compare.exists() and os.path.samefile(src, compare):
            raise InputError(f"{compare}: is the input itself; choose another --compare name (even --overwrite "
                             "would lose the original)")
        check_writable(compare, overwrite)
    removed = len(sweep_temporaries_of(output))  # what a killed run of this output left
    removed += len(sweep_temporaries_of(compare)) if compare is not None else 0
    start = time.perf_counter()
    with rich_progress(transient=True) as progress:
        upscaler = load_upscaler(loading, progress, notice=note)
        cost = upscaler.cost([(out_w, out_h, output.suffix, 8)], options)
        if cost.tiles > 1:  # a large job: what it will take, before it starts
            note(f"{src.name}: {cost.line()}")
        fn = functools.partial(upscaler.upscale_array, options=options, progress=progress, notice=note)
        result = upscale_file(src, output, fn, scale=scale, options=write)
    for message in result.notes:  # what the output could not keep (alpha into JPEG, pages, CMYK, ...)
        note(message)
    left = f"; removed {removed} temporary file(s) of a killed run" if removed else ""
    out.print(f"wrote {output} ({result.out_size[0]}x{result.out_size[1]}) in {time.perf_counter() - start:.1f} s{left}")
    if compare is not None:
        from fluxsr_cli.upscale.comparison import write_comparison

        width, height = write_comparison(src, output, compare, scale, overwrite=overwrite)
        out.print(f"wrote {compare} ({width}x{height}): bicubic | FluxSR")
