"""GPU benchmark of the one-step upscale with the full-size FLUX.1-dev architecture (not a test).

Builds the FLUX.1-dev transformer (11.9B) and VAE from their configs (``fluxsr_cli.model.architectures``)
with random bf16 weights directly on the GPU (no download), random fixed embeddings [1, 512, 4096] /
[1, 768], then times 1024 px and 4096 px outputs (x4) through ``Upscaler``: eager and compiled (the
transformer, the VAE encoder and decoder), with ``--tile-batch`` 1 and 4, with the VAE whole or
tiled, and with the VAE's attention through PyTorch SDPA instead of fluxsr's blockwise matmuls.
Reports wall seconds (warm, best of N) split into VAE encode, transformer, VAE decode, colour fix
and the rest; tiles; peak GPU memory; transformer TFLOP/s by docs/method.md section 10 (linear
1368 d^2 S + attention 57 * 4 S^2 d per call, S = image + 512 text tokens) and, where the VAE ran
whole, its TFLOP/s (FLOPs counted by ``torch.utils.flop_counter`` on the meta device); and the
time of the VAE's mid-block attention alone per SDPA backend and blockwise. Optional rows are
skipped as the script nears ``--budget`` seconds.
Prints a markdown table and writes it to $OUT/upscale_gpu.md when $OUT is set. Designed to finish in
under 8 minutes on an H100; ``--tiny`` runs the same code with the tiny stack on the CPU in seconds.

    python bench/upscale_gpu.py            # on the GPU machine
    python bench/upscale_gpu.py --tiny     # crash test anywhere
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from dataclasses import replace


def dit_flops(tokens_img: int, tokens_txt: int, d: int, n_double: int, n_single: int) -> float:
    """docs/method.md section 10, scaled from the 19 + 38 block FLUX to the given depth."""
    s = tokens_img + tokens_txt
    depth = (n_double + n_single) / 57
    return depth * (1368 * d * d * s + 57 * 4 * s * s * d)


def vae_flops(vae_config: dict, size: int) -> float:
    """FLOPs of encoding and decoding a ``size`` px square image whole (counted on the meta device)."""
    import torch
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        vae = AutoencoderKL(**vae_config)
    x = torch.empty(1, 3, size, size, device="meta")
    z = torch.empty(1, vae_config["latent_channels"], size // 8, size // 8, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        vae.encode(x)
        vae.decode(z)
    return float(counter.get_total_flops())


def vae_attention_seconds(torch, device, dtype, size: int) -> dict[str, str]:
    """Seconds of one attention shaped like the VAE mid-block attention of a ``size`` px image, per SDPA
    backend and for fluxsr's blockwise matmuls (with their largest deviation from the efficient kernel):
    as ``--compile`` runs it (compiled softmax) and as it runs eagerly."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from fluxsr_cli.model import attention
    from fluxsr_cli.model.attention import blockwise_attention, softmax_probabilities

    tokens = (size // 8) ** 2
    g = torch.Generator(device).manual_seed(0)
    q, k, v = (torch.randn(1, 1, tokens, 512, device=device, dtype=dtype, generator=g) for _ in range(3))
    found, outputs = {}, {}

    def sdpa(backend):
        def call():
            with sdpa_kernel(backend):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return call

    compiled = torch.compile(softmax_probabilities, dynamic=True)
    candidates = {b.name.lower(): sdpa(b) for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                                     SDPBackend.CUDNN_ATTENTION)}
    candidates["blockwise, compiled softmax"] = lambda: blockwise_attention(q, k, v, probabilities=compiled)
    candidates["blockwise, eager"] = lambda: blockwise_attention(q, k, v)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for name, call in candidates.items():
        try:
            call()
            sync()
            t0 = time.perf_counter()
            outputs[name] = call()
            sync()
            found[name] = f"{time.perf_counter() - t0:.3f}"
        except Exception as error:  # noqa: BLE001 - e.g. no kernel, or a compile failure: its entry says so
            found[name] = f"n/a ({str(error).splitlines()[0][:60]})"
    found["bf16 into float32 scores directly"] = str(attention.float32_scores_supported(device, dtype))
    if "efficient_attention" in outputs:
        for name in [n for n in outputs if n.startswith("blockwise")]:
            deviation = (outputs[name].float() - outputs["efficient_attention"].float()).abs().max().item()
            found[f"{name} vs efficient, max abs difference"] = f"{deviation:.2e}"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random stack on the CPU (crash test)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--sizes", default="1024,4096")
    parser.add_argument("--budget", type=float, default=360.0,
                        help="seconds: the optional rows are skipped as the script nears this")
    parser.add_argument("--attention-only", action="store_true",
                        help="time only the VAE mid-block attention at each of --sizes (no models built)")
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
    from fluxsr_cli.model.placement import place_models
    from fluxsr_cli.model.student import Conditioning
    from fluxsr_cli.upscale import colorfix, restore
    from fluxsr_cli.upscale.options import UpscaleOptions
    from fluxsr_cli.upscale.restore import Upscaler
    from fluxsr_cli.upscale.tiling import default_overlap, tile_boxes

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

    if args.attention_only:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        for size in sizes:
            print(f"VAE mid-block attention at {size} px on {name}: "
                  f"{vae_attention_seconds(torch, device, dtype, size)}", flush=True)
        return
    transformer = build_transformer(tcfg, dtype=dtype, device=device)
    vae = build_vae(vcfg, dtype=dtype, device=device)
    emb = random_embeddings(tcfg, text_len)
    cond = Conditioning(emb["prompt_embeds"], emb["pooled_prompt_embeds"], 1.0)
    built = time.perf_counter() - start_all
    name = "CPU (tiny)" if args.tiny else torch.cuda.get_device_name(device)
    print(f"built models in {built:.1f} s on {name}", flush=True)

    stage_seconds: dict[str, float] = {}
    stage_calls: dict[str, int] = {}  # how often each stage ran (one VAE encode call: the VAE ran whole)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(stage: str, fn):  # synchronised wall seconds spent in ``fn``, summed per stage
        def wrapper(*a, **k):
            sync()
            t0 = time.perf_counter()
            result = fn(*a, **k)
            sync()
            stage_seconds[stage] = stage_seconds.get(stage, 0.0) + time.perf_counter() - t0
            stage_calls[stage] = stage_calls.get(stage, 0) + 1
            return result
        return wrapper

    vae.encode, vae.decode = timed("encode", vae.encode), timed("decode", vae.decode)
    restore.apply_color_fix = timed("colour", restore.apply_color_fix)
    colorfix.color_fix_strips = timed("colour", colorfix.color_fix_strips)

    d = tcfg["num_attention_heads"] * tcfg["attention_head_dim"]
    g = torch.Generator().manual_seed(0)
    rows = []
    vae_work: dict[int, float] = {}  # size -> VAE FLOPs (whole image)

    def run(label: str, options: UpscaleOptions, size: int, context=contextlib.nullcontext) -> None:
        up = Upscaler(transformer, vae, cond, 0.25, device, dtype)
        up.restore_latent = timed("dit", up.restore_latent)  # outside the compiled module: no graph break
        lq = torch.nn.functional.interpolate(torch.rand(1, 3, size // 32, size // 32, generator=g),
                                             size=(size // 4, size // 4), mode="bicubic").clamp(0, 1)
        with context():
            up.upscale_tensor(lq, options)  # warm-up (and compilation)
        best, best_stages = float("inf"), {}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.repeats):
            stage_seconds.clear()
            stage_calls.clear()
            sync()
            t0 = time.perf_counter()
            with context():
                out = up.upscale_tensor(lq, options)
            sync()
            seconds = time.perf_counter() - t0
            if seconds < best:
                best, best_stages = seconds, dict(stage_seconds)
        assert out.shape[-1] == size
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        t = int(options.tile)
        overlap = min(padded_size(default_overlap(t)), t // 2)
        n = len(tile_boxes(size // 8, size // 8, t // 8, overlap // 8, multiple=2))
        flops = n * dit_flops((min(t, size) // 16) ** 2, text_len, d, tcfg["num_layers"], tcfg["num_single_layers"])
        dit = best_stages.get("dit", float("nan"))
        vae_s = best_stages.get("encode", 0.0) + best_stages.get("decode", 0.0)
        whole = stage_calls.get("encode") == 1  # the tiled VAE calls encode once per tile, in two passes
        if whole and size not in vae_work:
            vae_work[size] = vae_flops(vcfg, size)
        vae_tf = f"{vae_work[size] / vae_s / 1e12:.0f}" if whole and vae_s > 0 else "-"
        rows.append((label, size, options.tile_batch, options.vae_tile, n, best, best_stages, flops / dit / 1e12,
                     vae_tf, peak))
        print(f"{label} {size}px batch {options.tile_batch} vae-tile {options.vae_tile}: {best:.3f} s "
              f"({', '.join(f'{k} {v:.3f}' for k, v in best_stages.items())}), {flops / dit / 1e12:.0f} TFLOP/s, "
              f"peak {peak:.1f} GiB, t+{time.perf_counter() - start_all:.0f} s", flush=True)

    base = UpscaleOptions(tile=str(tile), color_fix="wavelet")
    vae_tiled = replace(base, vae_tile=str(tile))  # the VAE in transformer-sized tiles, two passes
    place_models(transformer, vae, device)  # gives the VAE fluxsr's blockwise attention
    big = max(sizes)

    def elapsed() -> float:
        return time.perf_counter() - start_all

    def row(label: str, options: UpscaleOptions, size: int, context=contextlib.nullcontext,
            until: float = float("inf")) -> None:
        """One table row; an experiment that fails or finds no time left costs only its row."""
        if elapsed() > until:
            print(f"skipped {label} at {size} px: {elapsed():.0f} s used (limit {until:.0f} s)", flush=True)
            return
        try:
            run(label, options, size, context)
        except Exception as error:  # noqa: BLE001
            print(f"{label} at {size} px failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}",
                  flush=True)

    @contextlib.contextmanager
    def fused_vae_attention():  # the VAE attention as diffusers runs it: PyTorch SDPA
        from diffusers.models.attention_processor import AttnProcessor2_0

        from fluxsr_cli.model.attention import use_blockwise_attention

        vae.set_attn_processor(AttnProcessor2_0())
        try:
            yield
        finally:
            use_blockwise_attention(vae)

    @contextlib.contextmanager
    def eager_with_sdpa():  # modules compiled for the rows above run eagerly here
        with torch.compiler.set_stance("force_eager"), fused_vae_attention():
            yield

    try:  # first, so that it is in the log even if the script is stopped later
        attention = vae_attention_seconds(torch, device, dtype, big) if device.type == "cuda" else {}
    except Exception as error:  # noqa: BLE001 - e.g. out of memory: report, keep the table
        attention = {"failed": str(error).splitlines()[0][:200]}
    print(f"VAE mid-block attention at {big} px: {attention}", flush=True)
    # in order of importance: an optional row is skipped once the script has used its share of --budget
    for size in sizes:
        row("eager", base, size)
    row("eager", replace(base, tile_batch=4), big)  # --tile-batch without the recompile it costs compiled
    # (cuDNN attention for the transformer was tried on an H200: no change, 7.53 vs 7.52 s at 4096 px)
    if not args.no_compile:
        place_models(transformer, vae, device, compile=True)
        for size in sizes:
            # each size compiles afresh, static, as a folder of photos of that size runs; without the
            # reset the second size gets PyTorch's dynamic-shape graph, which runs the VAE slower
            torch.compiler.reset()
            row("compiled", base, size)
        row("compiled", replace(base, tile_batch=4), big, until=args.budget * 0.65)  # a new batch shape recompiles
        row("compiled", vae_tiled, big, until=args.budget * 0.8)  # the tiled VAE's passes compiled (StatsGroupNorm)
        row("compiled, after another size", base, sizes[0], until=args.budget * 0.85)  # the dynamic-shape graphs
        # (channels-last VAE tensors were tried: 1.5x slower on an H200, bench/vae_gpu.py)
    for size in sizes:  # eager rows show what the blockwise attention gains (known on an H200: last)
        row("eager, VAE attention by SDPA", base, size, eager_with_sdpa, until=args.budget * 0.9)

    lines = [f"Device: {name}; FLUX.1-dev architecture, random bf16 weights; tile {tile} px, overlap "
             f"{default_overlap(tile)} px, wavelet colour fix; warm, best of {args.repeats}.", "",
             "| mode | output px | tile batch | VAE tile | tiles | seconds | encode s | DiT s | decode s | colour s "
             "| other s | DiT TFLOP/s | VAE TFLOP/s | peak GiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, size, batch, vae_tile, n, sec, st, tf_dit, tf_vae, peak in rows:
        parts = [st.get(k, 0.0) for k in ("encode", "dit", "decode", "colour")]
        lines.append(f"| {label} | {size} | {batch} | {vae_tile} | {n} | {sec:.3f} | "
                     + " | ".join(f"{p:.3f}" for p in parts)
                     + f" | {sec - sum(parts):.3f} | {tf_dit:.0f} | {tf_vae} | {peak:.1f} |")
    if attention:
        lines.append(f"\nVAE mid-block attention alone at {big} px (one head of 512 over {(big // 8) ** 2} tokens, "
                     "forward, bf16), seconds per SDPA backend: "
                     + ", ".join(f"{k} {v}" for k, v in attention.items()) + ".")
    lines.append(f"\nTotal script time {time.perf_counter() - start_all:.0f} s (model build {built:.0f} s).")
    table = "\n".join(lines)
    print(table)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "upscale_gpu.md"), "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
