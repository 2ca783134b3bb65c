"""What a job will cost, said before it starts: tiles, an estimated time, the output's size on disk.

The time is an estimate, not a measurement: the transformer's FLOPs (docs/method.md section 10: linear
layers 1368 d^2 S, attention 57 * 4 S^2 d per call, S = image + text tokens) over the device's
published dense bf16 rate times the efficiency measured on an H200 (eager, 2026), plus the VAE at
the rate measured there. Other GPUs are scaled by their published rates; modes without a
measurement use the factors below, and the CPU and unknown GPUs get no time at all.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from fluxsr_cli.model.latents import VAE_FACTOR, padded_size
from fluxsr_cli.upscale.tiling import tile_boxes, tile_overlap

# published dense bf16 tensor rates with fp32 accumulation (what PyTorch's bf16 matmuls use; GeForce
# cards run it at half their fp16-accumulate rate), TFLOP/s, by a name fragment (first match wins)
BF16_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0),
               ("L40S", 362.0), ("RTX 6000 Ada", 364.0), ("L40", 181.0), ("A6000", 155.0), ("L4", 121.0),
               ("A10", 125.0), ("RTX 5090", 105.0), ("RTX 4090", 82.6), ("RTX 5080", 56.3), ("RTX 4080", 48.7),
               ("RTX 3090", 35.6), ("RTX 4070", 29.1), ("RTX 3080", 29.8))
EFFICIENCY = 0.44  # measured on an H200, eager: 435 TFLOP/s of 989 in the transformer
VAE_SECONDS_PER_MP_H200 = 0.22  # measured on an H200, eager: encode + decode of a 16.8 MP output in 3.7 s
# relative transformer speed of each mode against bf16 (unmeasured: expected from fp8 matmul rates
# and dequantization costs; bench/quantize_gpu.py measures them)
MODE_SPEED = {"none": 1.0, "fp8": 0.9, "fp8-compute": 1.6, "nf4": 0.6}
OFFLOAD_SECONDS = {"sequential": 4.5, "model": 20.0}  # measured on an H200: per transformer call, per image
# bytes on disk per output pixel, for 8-bit RGB (twice for 16 bits): photos as PNG and deflated TIFF
# keep about 60 % of their raw size, JPEG and WebP at quality 95 about 12 %
DISK_BYTES_PER_PIXEL = {".png": 1.8, ".tif": 1.8, ".tiff": 1.8, ".bmp": 3.0, ".jpg": 0.35, ".jpeg": 0.35,
                        ".jpe": 0.35, ".jfif": 0.35, ".webp": 0.35}


def transformer_flops(d_model: int, n_double: int, n_single: int, image_tokens: int, text_tokens: int) -> float:
    """FLOPs of one transformer call (docs/method.md section 10, scaled to the model's depth)."""
    s = image_tokens + text_tokens
    return (n_double + n_single) / 57 * (1368 * d_model * d_model * s + 57 * 4 * s * s * d_model)


def tiles_of(width: int, height: int, tile: int, overlap: int | None) -> int:
    """How many transformer tiles an output of ``width`` x ``height`` px takes (as the restore tiles it)."""
    size = (padded_size(height), padded_size(width))
    if max(size) <= tile:
        return 1
    overlap = tile_overlap(tile, overlap)
    return len(tile_boxes(size[0] // VAE_FACTOR, size[1] // VAE_FACTOR, tile // VAE_FACTOR, overlap // VAE_FACTOR,
                          multiple=2))


def device_rate(device: torch.device) -> tuple[str, float] | None:
    """(name, published dense bf16 TFLOP/s) of a known CUDA GPU, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next(((name, rate) for fragment, rate in BF16_TFLOPS if fragment in name), None)


@dataclass(frozen=True)
class JobCost:
    """What upscaling some images will take (``seconds`` None where no estimate can be made)."""

    images: int
    megapixels: float  # of all outputs
    tiles: int
    tile: int
    seconds: float | None
    disk_bytes: float
    device: str

    def across(self, processes: int) -> JobCost:
        """The same images shared by ``processes`` GPUs working at once (``accelerate launch``): the time
        divided among them (the images are split by count, so about), the device named N x."""
        if processes <= 1:
            return self
        return replace(self, seconds=None if self.seconds is None else self.seconds / processes,
                       device=f"{processes} x {self.device}")

    def line(self) -> str:
        """One line for the user, the estimate marked as one."""
        time = (f"about {self.seconds:.0f} s on {self.device} (estimated)" if self.seconds is not None
                else f"time unknown on {self.device} (no published rate)")
        files = f"{self.images} images, " if self.images != 1 else ""
        tiles = f"{self.tiles} tile{'s' if self.tiles != 1 else ''} of {self.tile} px"
        return (f"{files}{self.megapixels:.1f} MP of output, {tiles}; {time}; "
                f"about {self.disk_bytes / 1e6:.0f} MB on disk")


def estimate(outputs: list[tuple[int, int, str, int]], tile: int, overlap: int | None, config: dict, text_tokens: int,
             device: torch.device, quantize: str = "none", offload: str = "none") -> JobCost:
    """The cost of upscaling to ``outputs`` = [(width, height, suffix, bits), ...] with ``tile`` px tiles on a
    transformer of ``config`` (FluxTransformer2DModel's)."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    rate = device_rate(device)
    tiles = seconds = 0.0
    disk = 0.0
    for width, height, suffix, bits in outputs:
        n = tiles_of(width, height, tile, overlap)
        tiles += n
        disk += width * height * DISK_BYTES_PER_PIXEL.get(suffix.lower(), 1.8) * (2 if bits == 16 else 1)
        if rate is not None:
            tokens = (min(tile, padded_size(height)) // 16) * (min(tile, padded_size(width)) // 16)  # per tile
            flops = n * transformer_flops(d, config["num_layers"], config["num_single_layers"], tokens, text_tokens)
            seconds += flops / (rate[1] * 1e12 * EFFICIENCY * MODE_SPEED.get(quantize, 1.0))
            seconds += width * height / 1e6 * VAE_SECONDS_PER_MP_H200 * 989.0 / rate[1]
            seconds += n * OFFLOAD_SECONDS["sequential"] if offload == "sequential" else 0.0
            seconds += OFFLOAD_SECONDS["model"] if offload == "model" else 0.0
    name = rate[0] if rate is not None else (torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU")
    return JobCost(len(outputs), sum(w * h for w, h, _, _ in outputs) / 1e6, int(tiles), tile,
                   seconds if rate is not None and offload != "group" else None, disk, name)
