"""Model and upscale options shared by `fluxsr upscale` and `fluxsr batch`: declared once, used by both."""

from __future__ import annotations

from typing import Annotated

import typer

from fluxsr_cli.model.checkpoint import DEFAULT_MODEL

PANEL = "Model"
TILES = "Tiling and memory"

Model = Annotated[str, typer.Option("--model", "-m", rich_help_panel=PANEL,
                                    help="Checkpoint: Hub repo id or local folder (fluxsr or community format).")]
Revision = Annotated[str | None, typer.Option("--revision", rich_help_panel=PANEL, help="Hub revision of --model.")]
Base = Annotated[str | None, typer.Option("--base", rich_help_panel=PANEL,
                                          help="FLUX base: Hub repo id, local folder, or a transformer file you have: "
                                               "flux1-dev.safetensors, flux1-dev-fp8.safetensors, flux1-dev-*.gguf "
                                               "(default: the checkpoint's, FLUX.1-dev).")]
Vae = Annotated[str | None, typer.Option("--vae", rich_help_panel=PANEL,
                                         help="The VAE: ae.safetensors or a diffusers vae/ folder (default: the base's).")]
Offline = Annotated[bool, typer.Option("--offline", rich_help_panel=PANEL,
                                       help="Use only the local Hugging Face cache; never download.")]
Device = Annotated[str | None, typer.Option("--device", rich_help_panel=PANEL,
                                            help="cuda, cuda:N or cpu (default: CUDA when present).")]
Dtype = Annotated[str | None, typer.Option("--dtype", rich_help_panel=PANEL,
                                           help="bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU).")]
TL = Annotated[float | None, typer.Option("--t-l", rich_help_panel=PANEL,
                                          help="Flow time of the LR latent (default: the checkpoint's).")]
Guidance = Annotated[float | None, typer.Option("--guidance", rich_help_panel=PANEL,
                                                help="Guidance embedding (default: the checkpoint's).")]
Scale = Annotated[int, typer.Option("--scale", "-s", rich_help_panel=PANEL, help="Upscaling factor, 1-8.")]
Tile = Annotated[str, typer.Option("--tile", rich_help_panel=TILES,
                                   help="Tile size in output pixels, or 'auto' (largest that fits the GPU).")]
Overlap = Annotated[int | None, typer.Option("--overlap", rich_help_panel=TILES,
                                             help="Tile overlap in output pixels (default 25 % of the tile, >= 128).")]
Blend = Annotated[str, typer.Option("--blend", rich_help_panel=TILES, help="Tile blending: cosine, gaussian or linear.")]
TileBatch = Annotated[int, typer.Option("--tile-batch", rich_help_panel=TILES, help="Tiles per transformer call.")]
TileSpace = Annotated[str, typer.Option("--tile-space", rich_help_panel=TILES,
                                        help="latent (default) or pixel (encode/decode each tile; smallest GPUs).")]
VaeTile = Annotated[str, typer.Option("--vae-tile", rich_help_panel=TILES,
                                      help="VAE tile in output pixels, or 'auto' (whole image when it fits).")]
ColorFix = Annotated[str, typer.Option("--color-fix", rich_help_panel=TILES,
                                       help="wavelet, adain or none; applied once to the whole image.")]
Offload = Annotated[str, typer.Option("--offload", rich_help_panel=TILES,
                                       help="none, group (8 GB cards: a block at a time), model or sequential CPU offload.")]
Quantize = Annotated[str, typer.Option("--quantize", "-q", rich_help_panel=PANEL,
                                       help="Transformer weights: none (bf16), fp8 (16-24 GB cards), fp8-compute (fp8 "
                                            "matmuls: Ada/Hopper/Blackwell) or nf4 (12 GB cards). Built once, cached.")]
Compile = Annotated[bool, typer.Option("--compile", rich_help_panel=TILES, help="torch.compile the transformer and the VAE (faster once warm; the first images of each new size compile).")]


def model_options(*, model: str = DEFAULT_MODEL, revision: str | None = None, base: str | None = None,
                  vae: str | None = None, offline: bool = False, device: str | None = None, dtype: str | None = None,
                  t_l: float | None = None, guidance: float | None = None, offload: str = "none",
                  compile: bool = False, quantize: str = "none"):
    """:class:`fluxsr_cli.upscale.options.ModelOptions` from the CLI values (validated there)."""
    from fluxsr_cli.upscale.options import ModelOptions

    return ModelOptions(model=model, revision=revision, base=base, vae=vae, offline=offline, device=device,
                        dtype=dtype, t_l=t_l, guidance=guidance, offload=offload, compile=compile, quantize=quantize)


def upscale_options(*, scale: int = 4, tile: str = "1024", overlap: int | None = None,
                    blend: str = "cosine", tile_batch: int = 1, tile_space: str = "latent", vae_tile: str = "auto",
                    color_fix: str = "wavelet"):
    """:class:`fluxsr_cli.upscale.options.UpscaleOptions` from the CLI values (validated there)."""
    from fluxsr_cli.upscale.options import UpscaleOptions

    return UpscaleOptions(scale=scale, tile=tile, overlap=overlap, blend=blend, tile_batch=tile_batch,
                          tile_space=tile_space, vae_tile=vae_tile, color_fix=color_fix)
