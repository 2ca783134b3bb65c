"""Throughput of the Real-ESRGAN degradation: images per second for 512x512 HQ crops, batch 8.

    python bench/degrade.py [--batch 8] [--size 512] [--batches 5] [--threads N]

Runs on the CPU, and on CUDA when a GPU is present (draws, Poisson noise and JPEG stay on the CPU
there by design). HQ crops are real photos from scikit-image, tiled to the requested size.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fluxsr_cli.degrade.config import DegradeConfig
from fluxsr_cli.degrade.pipeline import degrade


def hq_batch(batch: int, size: int) -> torch.Tensor:
    """``[batch, 3, size, size]`` crops of real photos in [0, 1]."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    crops = []
    for i in range(batch):
        img = photos[i % len(photos)]
        reps = (-(-size // img.shape[0]), -(-size // img.shape[1]), 1)
        img = np.tile(img, reps)  # large enough for any size
        top, left = (7 * i) % (img.shape[0] - size + 1), (13 * i) % (img.shape[1] - size + 1)
        crops.append(img[top : top + size, left : left + size])
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255


def measure(hq: torch.Tensor, batches: int, seed: int = 0) -> float:
    """Images per second over ``batches`` batches after one warm-up batch."""
    config = DegradeConfig()
    degrade(hq, config, torch.Generator().manual_seed(seed))  # warm-up
    if hq.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(batches):
        degrade(hq, config, torch.Generator().manual_seed(seed + 1 + i))
    if hq.is_cuda:
        torch.cuda.synchronize()
    return batches * hq.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    hq = hq_batch(args.batch, args.size)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        rate = measure(hq.to(device), args.batches)
        name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        rows.append((name, rate))

    print(f"Real-ESRGAN degradation, {args.size}x{args.size} HQ -> {args.size // 4}x{args.size // 4} LR, "
          f"batch {args.batch}, {args.batches} batches, torch {torch.__version__}")
    print(f"| {'device':<32} | {'images/s':>9} | {'ms/image':>9} |")
    print(f"|{'-' * 34}|{'-' * 11}|{'-' * 11}|")
    for name, rate in rows:
        print(f"| {name:<32} | {rate:>9.1f} | {1000 / rate:>9.1f} |")


if __name__ == "__main__":
    main()
