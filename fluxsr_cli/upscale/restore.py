"""The one-step restore (METHOD.md section 4): LR image -> x4 image in one transformer pass.

    lq -> bicubic x scale -> reflect-pad to 16 px -> VAE encode (mean) -> z_L
    z_hat_0 = z_L - T_L * v_theta(z_L, T_L)          # one Euler step from T_L to 0
    hq = crop(D(z_hat_0)) -> colour fix against the bicubic upscale

:func:`load_upscaler` resolves the checkpoint and the base model and returns an :class:`Upscaler`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fluxsr_cli.upscale import colorfix
from fluxsr_cli.model import placement as memory
from fluxsr_cli.model import vae as vae_lib
from fluxsr_cli.model.checkpoint import (
    BASE_FILES,
    DEFAULT_BASE,
    DEFAULT_MODEL,
    FLUX_LICENCE_NOTE,
    CheckpointInfo,
    apply_lora,
    estimate_params,
    load_transformer,
    load_vae,
    read_checkpoint,
    read_transformer_config,
    resolve,
)
from fluxsr_cli.errors import CheckpointError, ConfigError, ResourceError
from fluxsr_cli.model.flows import one_step
from fluxsr_cli.model.latents import VAE_FACTOR, pad_to_multiple, padded_size
from fluxsr_cli.progress import ProgressFn, no_progress
from fluxsr_cli.model.student import Conditioning, velocity
from fluxsr_cli.upscale.tiling import BLENDS, Box, default_overlap, tiled_apply

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
LARGE_MODEL_PARAMS = 1e9
KEEP_BICUBIC_BYTES = {"cpu": 64 * 2**20, "cuda": 256 * 2**20}  # the whole bicubic upscale is kept up to this
FILL_BAND_BYTES = 16 * 2**20  # a kept whole upscale is made in bands of this size (no full-size temporaries)
COLOR_STRIP_BYTES = 16 * 2**20  # float32 bytes of one colour-fix strip (each strip re-reads 64 margin rows)


@dataclass(frozen=True)
class UpscaleOptions:
    """Everything that decides how an image is upscaled; saved beside outputs on request."""

    model: str = DEFAULT_MODEL
    revision: str | None = None
    base: str | None = None  # None: the base named by the checkpoint (FLUX.1-dev)
    base_revision: str | None = None
    offline: bool = False
    device: str | None = None  # None: CUDA when available, else refuse the full model on CPU
    dtype: str | None = None  # None: bf16 on GPU, fp32 on CPU
    t_l: float | None = None  # None: the checkpoint's
    guidance: float | None = None  # None: the checkpoint's
    scale: int = 4
    seed: int = 0
    tile: str = "1024"  # output pixels per tile, or "auto"
    overlap: int | None = None  # output pixels; None: 25 % of the tile, at least 128
    blend: str = "cosine"
    tile_batch: int = 1
    tile_space: str = "latent"
    vae_tile: str = "auto"  # "auto": whole when it fits, else tiled; or output pixels per VAE tile
    color_fix: str = "wavelet"
    offload: str = "none"
    compile: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.scale <= 8:
            raise ConfigError(f"--scale must be 1-8, got {self.scale}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.t_l is not None and not 0.0 < self.t_l < 1.0:
            raise ConfigError(f"--t-l must lie in (0, 1), got {self.t_l}")
        if self.color_fix not in ("wavelet", "adain", "none"):
            raise ConfigError(f"--color-fix must be wavelet, adain or none, got {self.color_fix!r}")
        if self.offload not in ("none", "model", "sequential"):
            raise ConfigError(f"--offload must be none, model or sequential, got {self.offload!r}")
        if self.tile != "auto" and not (str(self.tile).isdigit() and int(self.tile) >= 128 and int(self.tile) % 16 == 0):
            raise ConfigError(f"--tile must be 'auto' or output pixels, a multiple of 16 and >= 128, got {self.tile!r}")
        if self.overlap is not None and not 0 <= self.overlap <= (int(self.tile) // 2 if self.tile != "auto" else 1024):
            raise ConfigError(f"--overlap must lie between 0 and half of --tile ({self.tile}), got {self.overlap}")
        if self.blend not in BLENDS:
            raise ConfigError(f"--blend must be one of {', '.join(BLENDS)}, got {self.blend!r}")
        if self.tile_batch < 1:
            raise ConfigError(f"--tile-batch must be at least 1, got {self.tile_batch}")
        if self.vae_tile != "auto" and not (str(self.vae_tile).isdigit() and int(self.vae_tile) >= 128
                                            and int(self.vae_tile) % 16 == 0):
            raise ConfigError(f"--vae-tile must be 'auto' or output pixels, a multiple of 16 and >= 128, "
                              f"got {self.vae_tile!r}")
        if self.tile_space not in ("latent", "pixel"):
            raise ConfigError(f"--tile-space must be latent or pixel, got {self.tile_space!r}")


def bicubic_upsample(lq: torch.Tensor, scale: int) -> torch.Tensor:
    """[B, 3, h, w] in [0, 1] -> [B, 3, h*scale, w*scale] bicubic, clamped. Training data uses it too.

    PyTorch's bicubic (``align_corners=False``, a = -0.75, clamped borders). On the CPU, for float32
    without autograd, OpenCV's ``INTER_CUBIC`` computes the same function 3-9x faster (measured on
    2 cores: 128 -> 512 px 0.4 vs 3.9 ms, 1024 -> 4096 px 82 vs 256 ms). The two agree to 3e-7 for
    power-of-two scales; for others (x3, x5, ...) PyTorch's float32 source coordinates drift, by up
    to ~1e-4 at 4096 px, while OpenCV stays within 2e-7 of a float64 reference: there the CPU result
    is the more exact one and differs from the GPU's by that much.
    """
    if scale == 1:
        return lq
    if lq.device.type == "cpu" and lq.dtype == torch.float32 and not lq.requires_grad:
        return _bicubic_opencv(lq, scale).clamp_(0.0, 1.0)
    return F.interpolate(lq, scale_factor=scale, mode="bicubic", align_corners=False).clamp_(0.0, 1.0)


def _bicubic_opencv(lq: torch.Tensor, scale: int) -> torch.Tensor:
    """:func:`bicubic_upsample` of a CPU float32 tensor through ``cv2.resize``, unclamped: one channel
    plane at a time, written straight into the NCHW result (no HWC copies), with as many threads
    as PyTorch is allowed."""
    import cv2

    b, c, h, w = lq.shape
    out = torch.empty(b, c, h * scale, w * scale, dtype=torch.float32, device="cpu")
    src, dst = lq.contiguous().numpy(), out.numpy()
    cv2.setNumThreads(torch.get_num_threads())
    for i in range(b):
        for j in range(c):
            made = cv2.resize(src[i, j], (w * scale, h * scale), dst=dst[i, j], interpolation=cv2.INTER_CUBIC)
            if not np.shares_memory(made, dst[i, j]):  # OpenCV made its own array instead of filling dst
                dst[i, j] = made
    return out


def _source_index(n: int, length: int, mode: str, device: torch.device) -> torch.Tensor:
    """Where each index of a side padded to ``n`` reads from the unpadded side (as :func:`pad_to_multiple`)."""
    i = torch.arange(n, device=device)
    if mode == "reflect":
        return torch.where(i < length, i, 2 * (length - 1) - i)
    return i.clamp(max=length - 1)


def _take(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """``x.index_select(dim, index)``, as a plain slice when ``index`` is a run of consecutive indices."""
    first = int(index[0])
    if int(index[-1]) - first == index.numel() - 1 and bool((index.diff() == 1).all()):
        return x.narrow(dim, first, index.numel())
    return x.index_select(dim, index)


def bicubic_crop(lq: torch.Tensor, scale: int, size: tuple[int, int], box: Box) -> torch.Tensor:
    """``box`` of the bicubic upscale of ``lq`` [1, 3, h, w], reflect-padded to ``size`` (pixels).

    Equals cropping ``pad_to_multiple(bicubic_upsample(lq, scale))`` (to float rounding) but only
    upsamples the input rows and columns the box needs, so huge upscales are never held whole.
    """
    h, w = lq.shape[-2] * scale, lq.shape[-1] * scale
    mode = "reflect" if size[0] - h < h and size[1] - w < w else "replicate"
    rows = _source_index(size[0], h, mode, lq.device)[box.top:box.top + box.height]
    cols = _source_index(size[1], w, mode, lq.device)[box.left:box.left + box.width]
    margin = 3  # LR pixels: bicubic reads two either side
    r0, r1 = max(0, int(rows.min()) // scale - margin), min(lq.shape[-2], int(rows.max()) // scale + margin + 1)
    c0, c1 = max(0, int(cols.min()) // scale - margin), min(lq.shape[-1], int(cols.max()) // scale + margin + 1)
    up = bicubic_upsample(lq[..., r0:r1, c0:c1].float(), scale)
    return _take(_take(up, rows - r0 * scale, -2), cols - c0 * scale, -1)


class BicubicSource:
    """Crops (boxes in px) of the padded bicubic upscale, made one band of rows at a time.

    Tiles are read row by row, and every tile of a row has the same rows: the band of those rows is
    upsampled once, across the whole width, and the tiles are sliced out of it (instead of upsampling
    each tile's crop, which for overlapping tiles repeats most of the work). A band larger than
    ``max_band_bytes`` is not kept: each box is then made on its own (:func:`bicubic_crop`). When
    the whole padded upscale fits ``max_band_bytes`` it is made once, on the first read, and kept
    (:attr:`whole_fits`): the passes of a tiled VAE and the colour fix then all slice one image. It
    is filled band by band (:data:`FILL_BAND_BYTES`), so making it needs no full-size temporaries.
    """

    def __init__(self, lq: torch.Tensor, scale: int, size: tuple[int, int], max_band_bytes: int = 64 * 2**20) -> None:
        self.lq, self.scale, self.size, self.max_band_bytes = lq, scale, size, max_band_bytes
        self.rows: tuple[int, int] | None = None
        self.band: torch.Tensor | None = None

    def clear(self) -> None:
        """Drop the kept band."""
        self.rows, self.band = None, None

    @property
    def whole_fits(self) -> bool:
        """Whether the whole padded upscale fits the band budget (then it is made once and kept)."""
        return self.size[0] * self.size[1] * self.lq.shape[1] * 4 <= self.max_band_bytes

    def _whole(self) -> torch.Tensor:
        (height, width), channels = self.size, self.lq.shape[1]
        rows = max(16, FILL_BAND_BYTES // (width * channels * 4))
        if rows >= height:
            return bicubic_crop(self.lq, self.scale, self.size, Box(0, 0, height, width))
        whole = torch.empty(1, channels, height, width, device=self.lq.device)
        for top in range(0, height, rows):
            n = min(rows, height - top)
            whole[..., top:top + n, :] = bicubic_crop(self.lq, self.scale, self.size, Box(top, 0, n, width))
        return whole

    def __call__(self, box: Box) -> torch.Tensor:
        if self.whole_fits:  # one band: the whole image
            if self.rows is None:
                self.band = self._whole()
                self.rows = (0, self.size[0])
            return self.band[..., box.top:box.top + box.height, box.left:box.left + box.width]
        if box.height * self.size[1] * self.lq.shape[1] * 4 > self.max_band_bytes:
            return bicubic_crop(self.lq, self.scale, self.size, box)
        if self.rows is None or not self.rows[0] <= box.top <= box.top + box.height <= self.rows[1]:
            self.band = None  # free the old band before making the new one
            self.band = bicubic_crop(self.lq, self.scale, self.size, Box(box.top, 0, box.height, self.size[1]))
            self.rows = (box.top, box.top + box.height)
        top = box.top - self.rows[0]
        return self.band[..., top:top + box.height, box.left:box.left + box.width]


class Upscaler:
    """A loaded one-step model: transformer + VAE + fixed conditioning, on one device."""

    def __init__(self, transformer: torch.nn.Module, vae: torch.nn.Module, cond: Conditioning, t_l: float,
                 options: UpscaleOptions, device: torch.device, dtype: torch.dtype,
                 info: CheckpointInfo | None = None, notice: Callable[[str], None] = lambda message: None) -> None:
        self.transformer = transformer
        self.vae = vae
        self.cond = cond.to(device, dtype)
        self.t_l = t_l
        self.options = options
        self.device = device
        self.dtype = dtype
        self.info = info
        self.progress: ProgressFn = no_progress
        self.notice = notice  # says so when a CUDA out-of-memory retry shrinks the tile

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
    def upscale_tensor(self, lq: torch.Tensor) -> torch.Tensor:
        """LR image [1, 3, h, w] in [0, 1] -> [1, 3, h*scale, w*scale] in [0, 1] (fp32, CPU).

        On out-of-memory the tile is halved and the image redone (:func:`memory.retry_on_oom`).
        """
        # bicubic, colour fix and blending run where the model does; NCHW-contiguous, since the
        # bicubic upsample of a channels-last view (an HWC array permuted) is 1.5-2x slower on the CPU
        lq = lq.float().to(self.device).contiguous()
        return memory.retry_on_oom(lambda tile, attempt: self._upscale(lq, tile, attempt), self.tile_pixels(),
                                   self.notice)

    def _upscale(self, lq: torch.Tensor, tile: int, attempt: int) -> torch.Tensor:
        size = (padded_size(lq.shape[-2] * self.options.scale), padded_size(lq.shape[-1] * self.options.scale))
        vae_tiled = self.options.tile_space == "latent" and self.options.vae_tile != "auto"
        if max(size) > tile or (vae_tiled and max(size) > int(self.options.vae_tile)):
            return self.upscale_tiled(lq, tile, vae_whole_ok=attempt == 0)
        up = bicubic_upsample(lq, self.options.scale)  # [1, 3, H, W]
        x, (h, w) = pad_to_multiple(up)  # reflect-pad to multiples of 16 px
        z_l = self.encode(x)
        z_0 = self.restore_latent(z_l)
        out = self.decode(z_0)[..., :h, :w]
        return apply_color_fix(out, up, self.options.color_fix).cpu()

    # -- images larger than one tile (METHOD.md section 7) ------------------------------------------
    def tile_pixels(self) -> int:
        """The tile in output pixels: ``--tile``, or for ``auto`` the largest that fits the free GPU memory."""
        if self.options.tile != "auto":
            return int(self.options.tile)
        return memory.auto_tile(self.transformer, self.vae, self.device, self.dtype.itemsize, self.options.tile_batch,
                                self.cond.prompt_embeds.shape[1])

    @torch.no_grad()
    def upscale_tiled(self, lq: torch.Tensor, tile: int, vae_whole_ok: bool = True) -> torch.Tensor:
        """Tiled upscale of LR [1, 3, h, w] with ``tile`` px tiles, streamed so memory stays flat.

        The bicubic upscale is made from ``lq`` once for the encoder (whole on the CPU, where it is no
        larger than the output buffer made later; else one band of rows at a time) and again in strips
        for the colour fix, unless it is small enough to keep (:data:`KEEP_BICUBIC_BYTES`); the
        transformer runs on latent tiles (or, with ``--tile-space pixel``, encode -> DiT -> decode per
        pixel tile); the VAE runs whole when it fits (or when the image fits ``--vae-tile``), else
        tiled with global GroupNorm statistics; tiles are blended into one float32 output buffer,
        which the colour fix then corrects in place, strip by strip. The output buffer is on the
        device when the VAE decoded whole, else on the CPU.
        """
        o = self.options
        h, w = lq.shape[-2] * o.scale, lq.shape[-1] * o.scale
        size = (padded_size(h), padded_size(w))
        overlap = min(padded_size(o.overlap if o.overlap is not None else default_overlap(tile)), tile // 2)
        grid = (size[0] // VAE_FACTOR, size[1] // VAE_FACTOR)
        geometry = dict(tile=tile // VAE_FACTOR, overlap=overlap // VAE_FACTOR, blend=o.blend, batch=o.tile_batch,
                        multiple=2, progress=self.progress)  # whole tokens (2x2 latent cells) per tile
        lq = lq.to(self.device)
        keep_bytes = KEEP_BICUBIC_BYTES.get(lq.device.type, KEEP_BICUBIC_BYTES["cuda"])  # through the colour fix
        whole_bytes = size[0] * size[1] * lq.shape[1] * 4
        # On the CPU the whole upscale is no larger than the float32 output buffer that the decoder fills
        # later, so holding it through the encoder's two passes (made once instead of 2-3 times in
        # overlapping bands) and dropping it before the decode does not raise the peak memory.
        encode_bytes = max(keep_bytes, whole_bytes) if lq.device.type == "cpu" else keep_bytes
        read = BicubicSource(lq, o.scale, size, encode_bytes if o.tile_space == "latent" else keep_bytes)
        if o.tile_space == "pixel":
            small = F.interpolate(lq, size=vae_lib.stats_size(*size, tile), mode="bicubic", antialias=True).clamp(0, 1)
            out = self._pixel_tiles(read, grid, small, geometry)
        else:
            whole, vae_geometry = self._vae_plan(size, tile, overlap, vae_whole_ok)
            z_l = self.encode(read(Box(0, 0, *size))) if whole else vae_lib.encode_tiled(self.vae, read, size,
                                                                                        **vae_geometry)
            if not read.whole_fits or whole_bytes > keep_bytes:
                read.clear()  # the last band, or a whole upscale too large to keep, is not needed any more
            z_0 = tiled_apply(self.restore_latent, z_l, grid, stage="tiles", device=self.device, **geometry)
            del z_l
            # whole: the output stays on the device for the colour fix (one copy to the CPU at the end)
            out = self.decode(z_0) if whole else vae_lib.decode_tiled(self.vae, z_0, **vae_geometry)
        if read.whole_fits and whole_bytes <= keep_bytes:  # the encoder's upscale, kept: the first h rows are unpadded
            reference = lambda r0, r1: read(Box(r0, 0, r1 - r0, w))  # noqa: E731
        else:  # made again strip by strip, so that the full-size upscale never has to exist
            reference = lambda r0, r1: bicubic_crop(lq, o.scale, (h, w), Box(r0, 0, r1 - r0, w))  # noqa: E731
        strip = max(128, min(1024, COLOR_STRIP_BYTES // (w * out.shape[1] * 4)))  # rows per colour-fix strip
        return colorfix.color_fix_strips(out[..., :h, :w], reference, o.color_fix, strip=strip,
                                         device=self.device, progress=self.progress).cpu()

    def _vae_plan(self, size: tuple[int, int], tile: int, overlap: int, whole_ok: bool) -> tuple[bool, dict]:
        """Whether the VAE runs on the whole image, and the tile geometry (px) for when it does not.

        ``--vae-tile auto``: whole when the estimate fits the free memory, else the largest tile that
        does; ``--vae-tile N``: tiles of N px whenever the image is larger. After an out-of-memory
        retry (``whole_ok`` False) never whole, and tiles no larger than the transformer's.
        """
        o = self.options
        if o.vae_tile == "auto":
            whole = whole_ok and memory.vae_fits(self.vae, *size, self.device, self.dtype.itemsize)
            vae_tile = memory.vae_tile(self.vae, tile, self.device, self.dtype.itemsize)
        else:
            vae_tile = int(o.vae_tile) if whole_ok else min(int(o.vae_tile), tile)
            whole = max(size) <= vae_tile
        # a quarter of the VAE tile: with global GroupNorm statistics more overlap changes little
        # (measured: the tile size, i.e. the reach of the mid-block attention, decides the error)
        vae_overlap = min(overlap, vae_tile // 4 // 16 * 16)
        return whole, dict(tile=vae_tile, overlap=vae_overlap, blend=o.blend, progress=self.progress)

    def _pixel_tiles(self, read: Callable[[Box], torch.Tensor], grid: tuple[int, int], small: torch.Tensor,
                     geometry: dict) -> torch.Tensor:
        """``--tile-space pixel``: each tile encode -> DiT -> decode; GroupNorm statistics from ``small``,
        a stand-in for the image that fits one tile (this mode saves memory, not time: no second pass)."""
        found: list[torch.Tensor] = []
        enc_stats = vae_lib.record_group_norm(self.vae.encoder, lambda: found.append(self.encode(small)))
        z_0 = self.restore_latent(found.pop())
        dec_stats = vae_lib.record_group_norm(self.vae.decoder, lambda: self.decode(z_0))

        def one_tile(x: torch.Tensor) -> torch.Tensor:  # [n, 3, T, T] -> [n, 3, T, T] px
            with vae_lib.fixed_group_norm(self.vae.encoder, enc_stats):
                z_l = self.encode(x)
            z_0 = self.restore_latent(z_l)  # outside the blocks, which run compiled modules eagerly
            with vae_lib.fixed_group_norm(self.vae.decoder, dec_stats):
                return self.decode(z_0).cpu()

        return tiled_apply(one_tile, read, grid, in_factor=VAE_FACTOR, out_factor=VAE_FACTOR, stage="tiles",
                           **geometry)

    def upscale_array(self, rgb: np.ndarray) -> np.ndarray:
        """[h, w, 3] float32 in [0, 1] -> [h*scale, w*scale, 3] float32 in [0, 1]."""
        lq = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        out = self.upscale_tensor(lq)
        return out[0].permute(1, 2, 0).numpy()


def apply_color_fix(out: torch.Tensor, reference: torch.Tensor, method: str) -> torch.Tensor:
    """Colour fix once, globally, against the bicubic upscale (see :mod:`fluxsr_cli.upscale.colorfix`)."""
    if method == "none":
        return out
    from fluxsr_cli.upscale import colorfix

    return colorfix.color_fix(out, reference, method).clamp_(0.0, 1.0)


def pick_device(requested: str | None, transformer_config: dict, base_ref: str) -> torch.device:
    """CUDA when present; without one the full-size model is refused unless the CPU is asked for."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ConfigError(f"--device {requested!r} is not a device; use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ResourceError(f"--device {requested}: no CUDA GPU is visible; use --device cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    params = estimate_params(transformer_config)
    if params > LARGE_MODEL_PARAMS:
        raise ResourceError(
            f"{base_ref}: the {params / 1e9:.1f}B-parameter FLUX transformer needs a CUDA GPU with at least "
            "24 GB (less with --offload); no GPU is visible. On the CPU it needs about 48 GB of RAM and "
            "several minutes per megapixel: pass --device cpu to run it there anyway"
        )
    return torch.device("cpu")


def load_upscaler(options: UpscaleOptions, progress: ProgressFn = no_progress,
                  notice: Callable[[str], None] = lambda message: None) -> Upscaler:
    """Resolve the checkpoint and base (Hub or local), load transformer + LoRA + VAE, return an Upscaler."""
    steps = 5
    progress("load", 0, steps)
    ckpt = read_checkpoint(options.model, revision=options.revision, offline=options.offline, notice=notice)
    base_ref = options.base or ckpt.info.base_model
    base_revision = options.base_revision if options.base else (options.base_revision or ckpt.info.base_revision)
    note = FLUX_LICENCE_NOTE if str(base_ref) == DEFAULT_BASE else None
    base = resolve(base_ref, revision=base_revision, offline=options.offline, allow_patterns=BASE_FILES,
                   notice=notice, first_download_note=note)
    progress("load", 1, steps)
    tconfig = read_transformer_config(ckpt.root if ckpt.transformer_dir else base)
    device = pick_device(options.device, tconfig, str(base_ref))
    dtype = DTYPES[options.dtype] if options.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    for name, got, want in (("prompt_embeds", ckpt.prompt_embeds.shape[-1], tconfig["joint_attention_dim"]),
                            ("pooled_prompt_embeds", ckpt.pooled_prompt_embeds.shape[-1],
                             tconfig["pooled_projection_dim"])):
        if got != want:
            raise CheckpointError(f"{ckpt.root}: {name} has width {got} but the transformer of {base_ref} expects "
                                  f"{want}; the checkpoint was made for another base model (check --base)")
    transformer = load_transformer(ckpt.root if ckpt.transformer_dir else base, dtype)
    progress("load", 2, steps)
    if ckpt.lora_file is not None:
        apply_lora(transformer, ckpt.lora_file, fuse=True)
    progress("load", 3, steps)
    vae = load_vae(base, dtype)
    progress("load", 4, steps)
    from fluxsr_cli.model.placement import place_models

    place_models(transformer, vae, device, options)
    t_l = options.t_l if options.t_l is not None else ckpt.info.t_l
    guidance = options.guidance if options.guidance is not None else ckpt.info.guidance
    cond = Conditioning(ckpt.prompt_embeds, ckpt.pooled_prompt_embeds, guidance)
    progress("load", steps, steps)
    return Upscaler(transformer, vae, cond, t_l, options, device, dtype, info=ckpt.info, notice=notice)
