"""Speed of the FLUX VAE alone on a GPU under memory layouts and compilation (not a test).

At 1024 px the VAE (encode + decode) takes about as long as the whole 12B transformer pass, at
~120 TFLOP/s: its convolutions run in NCHW with GroupNorm and SiLU between them. This times VAE
encode and decode of a ``--size`` px image (random bf16 weights, fluxsr's blockwise mid-block
attention) with: the defaults; cuDNN autotuning (``cudnn.benchmark``); channels-last tensors; and
``torch.compile`` of the encoder and decoder (and of the blockwise attention's softmax, as
``--compile`` does). Best of ``--repeats`` warm calls, milliseconds.

    python bench/vae_gpu.py              # on the GPU machine, about a minute and a half
    python bench/vae_gpu.py --size 4096 --repeats 2 --variants defaults,compile  # compiling: 2+ minutes
    python bench/vae_gpu.py --tiny       # crash test on the CPU
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=110.0, help="seconds; compilation is skipped after it")
    parser.add_argument("--variants", default="defaults,cudnn,channels-last,compile,compile-channels-last",
                        help="comma-separated subset of the default list, run in that order")
    args = parser.parse_args()

    import torch

    from fluxsr_cli.model.architectures import FLUX_VAE, TINY_VAE, build_vae
    from fluxsr_cli.model.attention import use_blockwise_attention

    start = time.perf_counter()
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    size = 256 if args.tiny else args.size
    vae = build_vae(TINY_VAE if args.tiny else FLUX_VAE, dtype=dtype, device=device)
    use_blockwise_attention(vae)
    g = torch.Generator(device).manual_seed(0)
    x = torch.rand(1, 3, size, size, device=device, dtype=dtype, generator=g) * 2 - 1
    z = torch.randn(1, 16, size // 8, size // 8, device=device, dtype=dtype, generator=g)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def best(fn) -> float:
        fn()
        fn()
        sync()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return min(times) * 1000

    rows = []

    def measure(label: str, memory_format=torch.contiguous_format) -> None:
        xi, zi = x.contiguous(memory_format=memory_format), z.contiguous(memory_format=memory_format)
        try:
            with torch.no_grad():
                enc = best(lambda: vae.encoder(xi))
                dec = best(lambda: vae.decoder(zi))
            rows.append((label, enc, dec))
            print(f"{label}: encoder {enc:.1f} ms, decoder {dec:.1f} ms, t+{time.perf_counter() - start:.0f} s",
                  flush=True)
        except Exception as error:  # noqa: BLE001 - one variant failing costs only its row
            print(f"{label} failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}", flush=True)

    variants = set(args.variants.split(","))
    if "defaults" in variants:
        measure("defaults (NCHW)")
    torch.backends.cudnn.benchmark = True
    if "cudnn" in variants:
        measure("cudnn.benchmark")
    if "channels-last" in variants:
        vae.to(memory_format=torch.channels_last)
        measure("cudnn.benchmark + channels-last", torch.channels_last)
        vae.to(memory_format=torch.contiguous_format)
    compiled = False
    if variants & {"compile", "compile-channels-last"} and time.perf_counter() - start < args.budget:
        use_blockwise_attention(vae, compile_softmax=True)  # as fluxsr_cli.model.placement.place_models with --compile
        vae.encoder.compile()
        vae.decoder.compile()
        compiled = True
    if compiled and "compile" in variants:
        measure("cudnn.benchmark + torch.compile")
    if compiled and "compile-channels-last" in variants and time.perf_counter() - start < args.budget:
        vae.to(memory_format=torch.channels_last)
        measure("cudnn.benchmark + torch.compile + channels-last", torch.channels_last)

    name = "CPU (tiny)" if args.tiny else torch.cuda.get_device_name(device)
    print(f"\nDevice: {name}; FLUX VAE, random bf16 weights, {size} px; best of {args.repeats} warm calls.\n")
    print("| variant | encoder ms | decoder ms | both ms |\n|---|---|---|---|")
    for label, enc, dec in rows:
        print(f"| {label} | {enc:.1f} | {dec:.1f} | {enc + dec:.1f} |")
    print(f"\nTotal script time {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
