"""The one-step restore (docs/method.md section 4): LR image -> x4 image in one transformer pass.

    lq -> bicubic x scale -> reflect-pad to 16 px -> VAE encode (mean) -> z_L
    z_hat_0 = z_L - T_L * v_theta(z_L, T_L)          # one Euler step from T_L to 0
    hq = crop(D(z_hat_0)) -> colour fix against the bicubic upscale

:func:`load_upscaler` resolves the checkpoint and the base model once and returns an
:class:`Upscaler`; each call of :meth:`Upscaler.upscale_tensor` (or ``upscale_array``) takes its
own :class:`~fluxsr_cli.upscale.options.UpscaleOptions`, progress and notice callbacks, so one
loaded model serves any sequence of requests. Images larger than one tile take the same three
stages through :mod:`~fluxsr_cli.upscale.tiling` and :mod:`~fluxsr_cli.upscale.tiled_vae`, with the
memory decisions made by :mod:`~fluxsr_cli.upscale.budget`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fluxsr_cli.errors import CheckpointError
from fluxsr_cli.model import vae as vae_lib
from fluxsr_cli.model.base import effective_quantize, load_transformer_for, load_vae_for, open_base
from fluxsr_cli.model.checkpoint import CheckpointInfo, read_checkpoint
from fluxsr_cli.model.flows import one_step
from fluxsr_cli.model.latents import VAE_FACTOR, pad_to_multiple, padded_size
from fluxsr_cli.model.loading import compute_dtype, pick_device, read_transformer_config
from fluxsr_cli.model.placement import place_models, transient_bytes
from fluxsr_cli.model.quantize import check_mode, check_settings
from fluxsr_cli.model.student import Conditioning, velocity
from fluxsr_cli.progress import Notice, ProgressFn, no_notice, no_progress
from fluxsr_cli.upscale import bicubic, budget, colorfix, tiled_vae
from fluxsr_cli.upscale.estimate import JobCost, estimate
from fluxsr_cli.upscale.options import ModelOptions, UpscaleOptions
from fluxsr_cli.upscale.tiling import Box, tile_overlap, tiled_apply

DEFAULT_OPTIONS = UpscaleOptions()


class Upscaler:
    """A loaded one-step model: transformer + VAE + fixed conditioning, on one device.

    Holds no per-request state: every upscale gets its options and callbacks as arguments.
    """

    def __init__(self, transformer: torch.nn.Module, vae: torch.nn.Module, cond: Conditioning, t_l: float,
                 device: torch.device, dtype: torch.dtype, info: CheckpointInfo | None = None,
                 options: ModelOptions | None = None, transient_bytes: int = 0) -> None:
        self.transformer = transformer
        self.vae = vae
        self.cond = cond.to(device, dtype)
        self.t_l = t_l
        self.device = device
        self.dtype = dtype  # what the transformer and the VAE compute in (whatever their weights are stored in)
        self.info = info
        self.options = options or ModelOptions()  # how it was loaded, for the record
        self.transient_bytes = transient_bytes  # weights an offloaded transformer brings to the device per call
        self.max_tile: int | None = None  # the largest tile known to fit, after a CUDA out-of-memory retry

    # -- the three stages; tiling replaces their insides for large images ------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] (sides multiples of 16) -> normalised latent [B, 16, H/8, W/8]."""
        return vae_lib.encode(self.vae, x)

    @torch.no_grad()
    def restore_latent(self, z_l: torch.Tensor) -> torch.Tensor:
        """z_hat_0 = z_L - T_L v_theta(z_L, T_L): [B, 16, h, w] -> [B, 16, h, w] (fp32)."""
        v = velocity(self.transformer, z_l.to(self.device), self.t_l, self.cond, dtype=self.dtype)
        return one_step(z_l.to(self.device).float(), v.float(), self.t_l)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latent [B, 16, h, w] -> image [B, 3, 8h, 8w] in [0, 1] (fp32)."""
        return vae_lib.decode(self.vae, z)

    # -- whole images ------------------------------------------------------------------------------
    @torch.no_grad()
    def upscale_tensor(self, lq: torch.Tensor, options: UpscaleOptions = DEFAULT_OPTIONS,
                       progress: ProgressFn = no_progress, notice: Notice = no_notice) -> torch.Tensor:
        """LR image [1, 3, h, w] in [0, 1] -> [1, 3, h*scale, w*scale] in [0, 1] (fp32, CPU).

        ``progress`` hears the tiles and VAE passes; on CUDA out-of-memory the tile is halved and the
        image redone, and ``notice`` says so (:func:`budget.retry_on_oom`).
        """
        # bicubic, colour fix and blending run where the model does; NCHW-contiguous, since the
        # bicubic upsample of a channels-last view (an HWC array permuted) is 1.5-2x slower on the CPU
        lq = lq.float().to(self.device).contiguous()

        def attempt(tile: int, n: int) -> torch.Tensor:
            out = self._upscale(lq, options, tile, n > 0, progress)
            if n > 0:  # later images start from the tile that fitted, not from the one that failed
                self.max_tile = tile
                notice(f"--tile {tile} is kept for the next images")
            return out

        return budget.retry_on_oom(attempt, self.tile_pixels(options), notice)

    def _upscale(self, lq: torch.Tensor, options: UpscaleOptions, tile: int, retried: bool,
                 progress: ProgressFn) -> torch.Tensor:
        size = (padded_size(lq.shape[-2] * options.scale), padded_size(lq.shape[-1] * options.scale))
        vae_tiled = options.tile_space == "latent" and options.vae_tile != "auto"
        if max(size) > tile or (vae_tiled and max(size) > int(options.vae_tile)):
            return self.upscale_tiled(lq, options, tile, progress, retried)
        up = bicubic.bicubic_upsample(lq, options.scale)  # [1, 3, H, W]
        x, (h, w) = pad_to_multiple(up)  # reflect-pad to multiples of 16 px
        z_l = self.encode(x)
        z_0 = self.restore_latent(z_l)
        out = self.decode(z_0)[..., :h, :w]
        return apply_color_fix(out, up, options.color_fix).cpu()

    def upscale_array(self, rgb: np.ndarray, options: UpscaleOptions = DEFAULT_OPTIONS,
                      progress: ProgressFn = no_progress, notice: Notice = no_notice) -> np.ndarray:
        """[h, w, 3] float32 in [0, 1] -> [h*scale, w*scale, 3] float32 in [0, 1]."""
        lq = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        out = self.upscale_tensor(lq, options, progress, notice)
        return out[0].permute(1, 2, 0).numpy()

    def cost(self, outputs: list[tuple[int, int, str, int]], options: UpscaleOptions = DEFAULT_OPTIONS) -> JobCost:
        """What upscaling to ``outputs`` = [(width, height, suffix, bits), ...] will take, estimated
        before it starts (:mod:`fluxsr_cli.upscale.estimate`)."""
        return estimate(outputs, self.tile_pixels(options), options.overlap, dict(self.transformer.config),
                        self.cond.prompt_embeds.shape[1], self.device, self.options.quantize, self.options.offload)

    # -- images larger than one tile (docs/method.md section 7) ------------------------------------------
    def tile_pixels(self, options: UpscaleOptions = DEFAULT_OPTIONS) -> int:
        """The tile in output pixels: ``--tile``, or for ``auto`` the largest that fits the free GPU memory;
        never larger than a tile that ran out of memory before (:attr:`max_tile`)."""
        if options.tile != "auto":
            tile = int(options.tile)
        else:
            tile = budget.auto_tile(self.transformer, self.vae, self.device, self.dtype.itemsize, options.tile_batch,
                                    self.cond.prompt_embeds.shape[1], reserve=self.transient_bytes)
        return min(tile, self.max_tile) if self.max_tile else tile

    @torch.no_grad()
    def upscale_tiled(self, lq: torch.Tensor, options: UpscaleOptions, tile: int, progress: ProgressFn = no_progress,
                      retried: bool = False) -> torch.Tensor:
        """Tiled upscale of LR [1, 3, h, w] with ``tile`` px tiles, streamed so memory stays flat.

        Encode (whole, or in VAE tiles with global GroupNorm statistics), the transformer on latent
        tiles blended into one latent (or, with ``--tile-space pixel``, encode -> DiT -> decode per
        pixel tile), decode, then the colour fix in place, strip by strip, against the bicubic
        upscale. What is kept whole and what is made in bands is :func:`budget.plan_tiled`'s call.
        """
        o = options
        h, w = lq.shape[-2] * o.scale, lq.shape[-1] * o.scale
        size = (padded_size(h), padded_size(w))
        overlap = tile_overlap(tile, o.overlap)
        plan = budget.plan_tiled(self.vae, size, w, tile, overlap, tile_space=o.tile_space, vae_tile_option=o.vae_tile,
                                 device=lq.device, itemsize=self.dtype.itemsize, retried=retried)
        grid = (size[0] // VAE_FACTOR, size[1] // VAE_FACTOR)
        geometry = dict(tile=tile // VAE_FACTOR, overlap=overlap // VAE_FACTOR, blend=o.blend, batch=o.tile_batch,
                        multiple=2, progress=progress)  # whole tokens (2x2 latent cells) per tile
        vae_geometry = dict(tile=plan.vae_tile, overlap=plan.vae_overlap, blend=o.blend, progress=progress)
        read = bicubic.BicubicSource(lq, o.scale, size, plan.bicubic_bytes)
        if o.tile_space == "pixel":
            out = self._pixel_tiles(read, grid, lq, size, tile, geometry)
        else:
            whole = plan.vae_whole
            z_l = self.encode(read(Box(0, 0, *size))) if whole else tiled_vae.encode_tiled(self.vae, read, size,
                                                                                           **vae_geometry)
            if not plan.keep_bicubic:
                read.clear()  # the last band, or a whole upscale too large to keep, is not needed any more
            z_0 = tiled_apply(self.restore_latent, z_l, grid, stage="tiles", device=self.device, **geometry)
            del z_l
            # whole: the output stays on the device for the colour fix (one copy to the CPU at the end)
            out = self.decode(z_0) if whole else tiled_vae.decode_tiled(self.vae, z_0, **vae_geometry)
        if plan.keep_bicubic:  # the encoder's upscale: its first h rows are the unpadded ones
            reference = lambda r0, r1: read(Box(r0, 0, r1 - r0, w))  # noqa: E731
        else:  # made again strip by strip, so that the full-size upscale never has to exist
            reference = lambda r0, r1: bicubic.bicubic_crop(lq, o.scale, (h, w), Box(r0, 0, r1 - r0, w))  # noqa: E731
        return colorfix.color_fix_strips(out[..., :h, :w], reference, o.color_fix, strip=plan.color_strip,
                                         device=self.device, progress=progress).cpu()

    def _pixel_tiles(self, read: bicubic.BicubicSource, grid: tuple[int, int], lq: torch.Tensor,
                     size: tuple[int, int], tile: int, geometry: dict) -> torch.Tensor:
        """``--tile-space pixel``: each tile encode -> DiT -> decode; GroupNorm statistics from a small
        stand-in for the image that fits one tile (this mode saves memory, not time: no second pass)."""
        small = F.interpolate(lq, size=tiled_vae.stats_size(*size, tile), mode="bicubic", antialias=True).clamp(0, 1)
        found: list[torch.Tensor] = []
        enc_stats = tiled_vae.record_group_norm(self.vae.encoder, lambda: found.append(self.encode(small)))
        z_0 = self.restore_latent(found.pop())
        dec_stats = tiled_vae.record_group_norm(self.vae.decoder, lambda: self.decode(z_0))

        def one_tile(x: torch.Tensor) -> torch.Tensor:  # [n, 3, T, T] -> [n, 3, T, T] px
            with tiled_vae.fixed_group_norm(self.vae.encoder, enc_stats):
                z_l = self.encode(x)
            z_0 = self.restore_latent(z_l)  # outside the blocks, which run compiled modules eagerly
            with tiled_vae.fixed_group_norm(self.vae.decoder, dec_stats):
                return self.decode(z_0).cpu()

        return tiled_apply(one_tile, read, grid, in_factor=VAE_FACTOR, out_factor=VAE_FACTOR, stage="tiles",
                           **geometry)


def apply_color_fix(out: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    """Colour fix once, globally, against the bicubic upscale (see :mod:`fluxsr_cli.upscale.colorfix`)."""
    if method == "none":
        return out
    return colorfix.color_fix(out, reference, method).clamp_(0.0, 1.0)


def load_upscaler(options: ModelOptions, progress: ProgressFn = no_progress, notice: Notice = no_notice) -> Upscaler:
    """Resolve the checkpoint and base (Hub, folder or single file), load transformer + LoRA + VAE.

    The device is chosen (and a machine that cannot run the model refused) from the transformer's
    config alone, before any weights are downloaded or read.
    """
    steps = 4
    progress("load", 0, steps)
    ckpt = read_checkpoint(options.model, revision=options.revision, offline=options.offline, notice=notice)
    base_revision = options.base_revision if options.base else (options.base_revision or ckpt.info.base_revision)
    base = open_base(options.base or ckpt.info.base_model, base_revision, options.offline)
    tconfig = read_transformer_config(ckpt.root) if ckpt.transformer_dir else base.transformer_config(notice)
    device = pick_device(options.device, tconfig, base.ref)
    dtype = compute_dtype(options.dtype, device)
    for name, got, want in (("prompt_embeds", ckpt.prompt_embeds.shape[-1], tconfig["joint_attention_dim"]),
                            ("pooled_prompt_embeds", ckpt.pooled_prompt_embeds.shape[-1],
                             tconfig["pooled_projection_dim"])):
        if got != want:
            raise CheckpointError(f"{ckpt.root}: {name} has width {got} but the transformer of {base.ref} expects "
                                  f"{want}; the checkpoint was made for another base model (check --base)")
    quantize = effective_quantize(base, options.quantize, notice)
    check_settings(quantize, options.offload)
    check_mode(quantize, device)  # before gigabytes are read
    progress("load", 1, steps)
    transformer = load_transformer_for(base, ckpt.lora_file, quantize, dtype, device,
                                       Path(options.cache) if options.cache else None, notice,
                                       checkpoint_transformer=ckpt.root if ckpt.transformer_dir else None)
    progress("load", 2, steps)
    vae = load_vae_for(base, options.vae, ckpt.info.base_model, dtype, notice, ckpt.info.base_revision)
    progress("load", 3, steps)
    place_models(transformer, vae, device, options.offload, options.compile)
    t_l = options.t_l if options.t_l is not None else ckpt.info.t_l
    guidance = options.guidance if options.guidance is not None else ckpt.info.guidance
    cond = Conditioning(ckpt.prompt_embeds, ckpt.pooled_prompt_embeds, guidance)
    progress("load", steps, steps)
    return Upscaler(transformer, vae, cond, t_l, device, dtype, info=ckpt.info, options=options,
                    transient_bytes=transient_bytes(transformer, options.offload))
