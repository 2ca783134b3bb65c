"""GPU memory and time of ``--offload model|sequential`` with the full-size FLUX.1-dev architecture.

For the README's table of which GPU memory needs which settings: builds the FLUX.1-dev transformer
and VAE with random bf16 weights (on the GPU, then moved to the host as a loaded checkpoint would
be), hooks them with ``placement.place_models`` for each offload mode, upscales to 1024 px (with 1024
and 512 px tiles) and prints the peak GPU memory and seconds (second run: the first also pays for
allocation). About a minute on an H100; ``--tiny`` runs the same code on the CPU in seconds.

    python bench/offload_gpu.py
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random stack on the CPU (crash test)")
    parser.add_argument("--size", type=int, default=1024, help="output pixels (square)")
    parser.add_argument("--modes", default="model:1024,model:512,sequential:1024", help="offload:tile, ...")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()

    import torch
    from accelerate.hooks import remove_hook_from_module

    from fluxsr_cli.model.architectures import (
        FLUX_DEV_TRANSFORMER,
        FLUX_VAE,
        TINY_TRANSFORMER,
        TINY_VAE,
        build_transformer,
        build_vae,
        random_embeddings,
    )
    from fluxsr_cli.model.placement import place_models
    from fluxsr_cli.model.student import Conditioning
    from fluxsr_cli.upscale.options import UpscaleOptions
    from fluxsr_cli.upscale.restore import Upscaler

    start = time.perf_counter()
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    tcfg, vcfg = (TINY_TRANSFORMER, TINY_VAE) if args.tiny else (FLUX_DEV_TRANSFORMER, FLUX_VAE)
    size = min(args.size, 256) if args.tiny else args.size
    transformer = build_transformer(tcfg, dtype=dtype, device=device).to("cpu")
    vae = build_vae(vcfg, dtype=dtype, device=device).to("cpu")
    emb = random_embeddings(tcfg, 8 if args.tiny else 512)
    cond = Conditioning(emb["prompt_embeds"], emb["pooled_prompt_embeds"], 1.0)
    name = "CPU (tiny)" if args.tiny else torch.cuda.get_device_name(device)
    print(f"built models in {time.perf_counter() - start:.1f} s on {name}", flush=True)
    lq = torch.rand(1, 3, size // 4, size // 4, generator=torch.Generator().manual_seed(0))

    rows = []
    modes = [(m.split(":")[0], min(int(m.split(":")[1]), size)) for m in args.modes.split(",")]
    for offload, tile in modes:
        options = UpscaleOptions(tile=str(tile))
        try:
            place_models(transformer, vae, device, offload)
            up = Upscaler(transformer, vae, cond, 0.25, device, dtype)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            seconds = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                up.upscale_tensor(lq, options)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds.append(time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            reserved = torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else float("nan")
            rows.append((offload, tile, seconds[-1], peak, reserved))
            print(f"offload {offload}, tile {tile}: {seconds[-1]:.2f} s (first {seconds[0]:.2f} s), "
                  f"peak {peak:.2f} GiB allocated, {reserved:.2f} GiB reserved", flush=True)
        except Exception as error:  # noqa: BLE001 - report, go on with the next mode
            print(f"offload {offload}, tile {tile} failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}",
                  flush=True)
        finally:
            for module in (transformer, vae):
                remove_hook_from_module(module, recurse=True)
                module.to("cpu")

    lines = [f"Device: {name}; FLUX.1-dev architecture, random bf16 weights; {size} px output; second of two runs.",
             "", "| offload | tile px | seconds | peak GiB allocated | peak GiB reserved |", "|---|---|---|---|---|"]
    lines += [f"| {o} | {t} | {s:.2f} | {p:.2f} | {r:.2f} |" for o, t, s, p, r in rows]
    lines.append(f"\nTotal script time {time.perf_counter() - start:.0f} s.")
    print("\n".join(lines))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "offload_gpu.md"), "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
