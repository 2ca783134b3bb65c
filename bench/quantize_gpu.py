"""GPU benchmark of the quantized transformers and group offloading, full-size FLUX.1-dev architecture.

Builds the FLUX.1-dev transformer (11.9B) and VAE from their configs with random bf16 weights (seed 0,
no download), saves the transformer once as a diffusers folder, and loads it through fluxsr's own
loader for each mode: ``--quantize fp8 | fp8-compute | nf4`` (built into a cache folder, then read
back from it: both times are reported), and bf16 with ``--offload group``. Then upscales 1024 px and
4096 px outputs (x4, tile 1024 px) through ``Upscaler`` and reports, per mode and size: seconds (warm,
best of N), transformer seconds and TFLOP/s (docs/method.md section 10), peak GPU memory over the upscale
(weights included), the weights' GPU memory, and the deviation of the restored latent from the bf16
model's on the same weights and input (relative RMS). ``--compile`` adds compiled rows (fp8-compute
is meant to run compiled). Optional rows are skipped as the script nears ``--budget`` seconds.

Targets (H200): fp8-compute --compile 1024 px <= 0.13 s and 4096 px <= 4.0 s; fp8 peak <= 16 GiB at
1024 px; nf4 peak <= 10 GiB at 1024 px; group offload 1024 px <= 1.5 s with peak <= 4 GiB.
The build's GPU peak (building a cache entry) should stay near the quantized weights' size.
Prints a markdown table and writes it to $OUT/quantize_gpu.md when $OUT is set. Needs the [quant]
extra (torchao, bitsandbytes) and about 45 GB of free disk for the saved and quantized weights.

    python bench/quantize_gpu.py --compile --budget 540     # on the GPU machine
    python bench/quantize_gpu.py --tiny                     # crash test anywhere (CPU: fp8 and group only)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def dit_flops(tokens_img: int, tokens_txt: int, d: int, n_double: int, n_single: int) -> float:
    """docs/method.md section 10, scaled from the 19 + 38 block FLUX to the given depth."""
    s = tokens_img + tokens_txt
    return (n_double + n_single) / 57 * (1368 * d * d * s + 57 * 4 * s * s * d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random stack on the CPU (crash test)")
    parser.add_argument("--modes", default="fp8-compute,fp8,nf4,group",
                        help="in order of importance; also: none (bf16 on the device)")
    parser.add_argument("--sizes", default="1024,4096")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also compiled rows (fp8-compute first)")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds: later rows are skipped near this")
    args = parser.parse_args()

    import torch

    from fluxsr_cli.model.architectures import (
        FLUX_DEV_TRANSFORMER,
        FLUX_VAE,
        TINY_TRANSFORMER,
        TINY_VAE,
        build_transformer,
        build_vae,
        random_embeddings,
    )
    from fluxsr_cli.model.latents import padded_size
    from fluxsr_cli.model.loading import load_transformer
    from fluxsr_cli.model.placement import place_models, transient_bytes
    from fluxsr_cli.model.quantize import check_mode, load_quantized_transformer
    from fluxsr_cli.model.student import Conditioning
    from fluxsr_cli.upscale.options import UpscaleOptions
    from fluxsr_cli.upscale.restore import Upscaler
    from fluxsr_cli.upscale.tiling import default_overlap, tile_boxes

    start = time.perf_counter()
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    tcfg, vcfg = (TINY_TRANSFORMER, TINY_VAE) if args.tiny else (FLUX_DEV_TRANSFORMER, FLUX_VAE)
    text_len = 8 if args.tiny else 512
    sizes = [min(int(s) // 8, 512) if args.tiny else int(s) for s in args.sizes.split(",")]
    tile = 128 if args.tiny else 1024
    d = tcfg["num_attention_heads"] * tcfg["attention_head_dim"]
    name = "CPU (tiny)" if args.tiny else torch.cuda.get_device_name(device)
    work = Path(tempfile.mkdtemp(prefix="fluxsr-quant-", dir=os.environ.get("BENCH_TMP")))

    def elapsed() -> float:
        return time.perf_counter() - start

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def gib(n: float) -> float:
        return n / 2**30

    # the random weights, saved once as the base folder every mode loads from
    reference = build_transformer(tcfg, dtype=dtype, device=device)
    reference.save_pretrained(str(work / "base" / "transformer"), max_shard_size="5GB")
    vae = build_vae(vcfg, dtype=dtype, device=device)
    emb = random_embeddings(tcfg, text_len)
    cond = Conditioning(emb["prompt_embeds"], emb["pooled_prompt_embeds"], 1.0)
    print(f"built and saved the random weights in {elapsed():.0f} s on {name}", flush=True)
    g = torch.Generator().manual_seed(0)
    z_l = torch.randn(1, 16, tile // 8, tile // 8, generator=g)  # the deviation probe: one tile's latent
    lqs = {size: torch.nn.functional.interpolate(torch.rand(1, 3, size // 32, size // 32, generator=g),
                                                 size=(size // 4, size // 4), mode="bicubic").clamp(0, 1)
           for size in sizes}
    place_models(reference, vae, device)
    z_ref = Upscaler(reference, vae, cond, 0.25, device, dtype).restore_latent(z_l).float().cpu()
    del reference

    rows, loads, build_peak = [], {}, {}
    for mode in args.modes.split(","):
        if elapsed() > args.budget * 0.8:
            print(f"skipped {mode}: {elapsed():.0f} s used", flush=True)
            continue
        quantize = mode if mode in ("fp8", "fp8-compute", "nf4") else "none"
        try:
            check_mode(quantize, device)
        except Exception as error:  # noqa: BLE001 - e.g. fp8-compute on an older GPU, nf4 on the CPU
            print(f"skipped {mode}: {error}", flush=True)
            continue
        if device.type == "cuda":
            torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        t0 = time.perf_counter()
        if quantize == "none":  # bf16, on the device or group-offloaded
            transformer = load_transformer(work / "base", dtype)
            built = time.perf_counter() - t0
            read = float("nan")
        else:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            transformer, _ = load_quantized_transformer(work / "base", None, quantize, dtype, device, work / "cache")
            built = time.perf_counter() - t0
            # the build's GPU peak: the quantized weights, not twice them (torchao's save copies every tensor)
            build_peak[mode] = gib(torch.cuda.max_memory_allocated(device) - before) if device.type == "cuda" \
                else float("nan")
            del transformer
            t0 = time.perf_counter()
            transformer, _ = load_quantized_transformer(work / "base", None, quantize, dtype, device, work / "cache")
            read = time.perf_counter() - t0
        offload = "group" if mode == "group" else "none"
        for compiled in ([False, True] if args.compile else [False]):
            if compiled and (mode == "group" or elapsed() > args.budget * 0.6):
                print(f"skipped compiled {mode}: {elapsed():.0f} s used", flush=True)
                continue
            try:
                place_models(transformer, vae, device, offload, compile=compiled)
            except Exception as error:  # noqa: BLE001 - report, go on with the next row
                print(f"placing {mode} failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}", flush=True)
                continue
            weights = gib((torch.cuda.memory_allocated(device) if device.type == "cuda" else 0) - before)
            up = Upscaler(transformer, vae, cond, 0.25, device, dtype,
                          transient_bytes=transient_bytes(transformer, offload))
            deviation = float((up.restore_latent(z_l).float().cpu() - z_ref).square().mean().sqrt()
                              / z_ref.square().mean().sqrt())
            dit = [0.0]
            real = up.restore_latent

            def timed(z, _real=real, _dit=dit):
                sync()
                t = time.perf_counter()
                out = _real(z)
                sync()
                _dit[0] += time.perf_counter() - t
                return out

            up.restore_latent = timed
            for size in sizes:
                if elapsed() > args.budget:
                    print(f"skipped {mode} {size} px: {elapsed():.0f} s used", flush=True)
                    continue
                options = UpscaleOptions(tile=str(tile), color_fix="wavelet")
                if compiled:  # each size its own static graphs, as a folder of photos of that size runs
                    torch.compiler.reset()
                try:
                    up.upscale_tensor(lqs[size], options)  # warm-up (and compilation)
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    best, best_dit = float("inf"), float("nan")
                    for _ in range(args.repeats):
                        dit[0] = 0.0
                        sync()
                        t = time.perf_counter()
                        up.upscale_tensor(lqs[size], options)
                        sync()
                        if time.perf_counter() - t < best:
                            best, best_dit = time.perf_counter() - t, dit[0]
                except Exception as error:  # noqa: BLE001 - out of memory, a missing kernel: the row says so
                    print(f"{mode} {size} px failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}",
                          flush=True)
                    continue
                peak = gib(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else float("nan")
                overlap = min(padded_size(default_overlap(tile)), tile // 2)
                n = len(tile_boxes(size // 8, size // 8, tile // 8, overlap // 8, multiple=2))
                flops = n * dit_flops((min(tile, size) // 16) ** 2, text_len, d, tcfg["num_layers"],
                                      tcfg["num_single_layers"])
                label = f"{mode}{' --compile' if compiled else ''}"
                rows.append((label, size, best, best_dit, flops / best_dit / 1e12, peak, weights, deviation))
                loads[mode] = (built, read)
                print(f"{label} {size}px: {best:.3f} s (transformer {best_dit:.3f} s, "
                      f"{flops / best_dit / 1e12:.0f} TFLOP/s), peak {peak:.1f} GiB, weights {weights:.1f} GiB, "
                      f"deviation {deviation:.4f}, t+{elapsed():.0f} s", flush=True)
        del transformer
        torch.compiler.reset()

    lines = [f"Device: {name}; FLUX.1-dev architecture, random bf16 weights; tile {tile} px; "
             f"{'tiny stack on the CPU' if args.tiny else 'warm, best of ' + str(args.repeats)}", "",
             "| mode | output | seconds | transformer s | TFLOP/s | peak GiB | weights GiB | latent deviation vs bf16 |",
             "|---|---|---|---|---|---|---|---|"]
    for label, size, best, dit_s, tflops, peak, weights, deviation in rows:
        lines.append(f"| {label} | {size} px | {best:.3f} | {dit_s:.3f} | {tflops:.0f} | {peak:.1f} | {weights:.1f} "
                     f"| {deviation:.4f} |")
    lines += ["", "| mode | cache build s | build peak GiB | cache read s |", "|---|---|---|---|"]
    lines += [f"| {mode} | {b:.1f} | {build_peak.get(mode, float('nan')):.1f} | {r:.1f} |"
              for mode, (b, r) in loads.items()]
    lines.append(f"\nTotal script time {elapsed():.0f} s.")
    text = "\n".join(lines)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "quantize_gpu.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
