"""GPU benchmark of the one-step upscale with the full-size FLUX.1-dev architecture (issue 3; not a test).

Builds the FLUX.1-dev transformer (11.9B) and VAE from their configs (``fluxsr_cli.architectures``)
with random bf16 weights directly on the GPU (no download), random fixed embeddings [1, 512, 4096] /
[1, 768], then times 1024 px and 4096 px outputs (x4) through ``Upscaler`` eager and compiled, with
``--tile-batch`` 1 and 4: wall seconds (warm, best of N), transformer seconds, tiles, peak GPU memory
and achieved TFLOP/s by METHOD.md section 10 (linear 1368 d^2 S + attention 57 * 4 S^2 d per call,
S = image + 512 text tokens; VAE FLOPs not counted, so "DiT TFLOP/s over wall" is a lower bound).
Prints a markdown table and writes it to $OUT/upscale_gpu.md when $OUT is set. Designed to finish in
under 8 minutes on an H100; ``--tiny`` runs the same code with the tiny stack on the CPU in seconds.

    python bench/upscale_gpu.py            # on the GPU machine
    python bench/upscale_gpu.py --tiny     # crash test anywhere
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace


def dit_flops(tokens_img: int, tokens_txt: int, d: int, n_double: int, n_single: int) -> float:
    """METHOD.md section 10, scaled from the 19 + 38 block FLUX to the given depth."""
    s = tokens_img + tokens_txt
    depth = (n_double + n_single) / 57
    return depth * (1368 * d * d * s + 57 * 4 * s * s * d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random stack on the CPU (crash test)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--sizes", default="1024,4096")
    args = parser.parse_args()

    import torch

    from fluxsr_cli.architectures import (
        FLUX_DEV_TRANSFORMER,
        FLUX_VAE,
        TINY_TRANSFORMER,
        TINY_VAE,
        build_vae,
        random_embeddings,
    )
    from fluxsr_cli.latents import padded_size
    from fluxsr_cli.memory import place_models
    from fluxsr_cli.restore import UpscaleOptions, Upscaler
    from fluxsr_cli.student import Conditioning
    from fluxsr_cli.tiling import default_overlap, tile_boxes

    start_all = time.perf_counter()
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    tcfg, vcfg = (TINY_TRANSFORMER, TINY_VAE) if args.tiny else (FLUX_DEV_TRANSFORMER, FLUX_VAE)
    text_len = 8 if args.tiny else 512
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.tiny:
        sizes = [min(s // 8, 512) for s in sizes]
    tile = 128 if args.tiny else 1024
    torch.backends.cuda.matmul.allow_tf32 = True

    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        transformer = FluxTransformer2DModel(**tcfg).eval().requires_grad_(False)
    torch.set_default_dtype(previous)
    vae = build_vae(vcfg, dtype=dtype, device=device)
    emb = random_embeddings(tcfg, text_len)
    cond = Conditioning(emb["prompt_embeds"], emb["pooled_prompt_embeds"], 1.0)
    built = time.perf_counter() - start_all
    name = "CPU (tiny)" if args.tiny else torch.cuda.get_device_name(device)
    print(f"built models in {built:.1f} s on {name}", flush=True)

    dit_seconds = [0.0]

    def timed(fn):  # wraps Upscaler.restore_latent: the transformer pass, synchronised
        def wrapper(*a, **k):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            result = fn(*a, **k)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dit_seconds[0] += time.perf_counter() - t0
            return result
        return wrapper

    d = tcfg["num_attention_heads"] * tcfg["attention_head_dim"]
    g = torch.Generator().manual_seed(0)
    rows = []

    def run(label: str, options: UpscaleOptions, size: int) -> None:
        up = Upscaler(transformer, vae, cond, 0.25, options, device, dtype)
        up.restore_latent = timed(up.restore_latent)
        lq = torch.nn.functional.interpolate(torch.rand(1, 3, size // 32, size // 32, generator=g),
                                             size=(size // 4, size // 4), mode="bicubic").clamp(0, 1)
        up.upscale_tensor(lq)  # warm-up (and compilation)
        best, best_dit = float("inf"), 0.0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.repeats):
            dit_seconds[0] = 0.0
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = up.upscale_tensor(lq)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            if seconds < best:
                best, best_dit = seconds, dit_seconds[0]
        assert out.shape[-1] == size
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        t = int(options.tile)
        overlap = min(padded_size(default_overlap(t)), t // 2)
        n = len(tile_boxes(size // 8, size // 8, t // 8, overlap // 8, multiple=2))
        flops = n * dit_flops((min(t, size) // 16) ** 2, text_len, d, tcfg["num_layers"], tcfg["num_single_layers"])
        rows.append((label, size, options.tile_batch, n, best, best_dit, flops / best_dit / 1e12, flops / best / 1e12,
                     peak))
        print(f"{label} {size}px batch {options.tile_batch}: {best:.3f} s (DiT {best_dit:.3f} s), "
              f"{flops / best_dit / 1e12:.0f} TFLOP/s, peak {peak:.1f} GiB, t+{time.perf_counter() - start_all:.0f} s",
              flush=True)

    base = UpscaleOptions(device=str(device), tile=str(tile), color_fix="wavelet")
    place_models(transformer, vae, device, base)
    for size in sizes:
        run("eager", base, size)
    big = max(sizes)
    run("eager", replace(base, tile_batch=4), big)
    if not args.no_compile:
        place_models(transformer, vae, device, replace(base, compile=True))
        for size in sizes:
            run("compiled", base, size)
        if time.perf_counter() - start_all < 300:  # a new batch shape recompiles; only with time to spare
            run("compiled", replace(base, tile_batch=4), big)

    lines = [f"Device: {name}; FLUX.1-dev architecture, random bf16 weights; tile {tile} px, overlap "
             f"{default_overlap(tile)} px, wavelet colour fix; warm, best of {args.repeats}.", "",
             "| mode | output px | tile batch | tiles | seconds | DiT s | DiT TFLOP/s | DiT TFLOP / wall s | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, size, batch, n, sec, dit, tf_dit, tf_wall, peak in rows:
        lines.append(f"| {label} | {size} | {batch} | {n} | {sec:.3f} | {dit:.3f} | {tf_dit:.0f} | {tf_wall:.0f} | "
                     f"{peak:.1f} |")
    lines.append(f"\nTotal script time {time.perf_counter() - start_all:.0f} s (model build {built:.0f} s).")
    table = "\n".join(lines)
    print(table)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "upscale_gpu.md"), "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
