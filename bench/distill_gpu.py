"""One FTD training step of the full-size FLUX student (random weights): step time and peak memory.

    python bench/distill_gpu.py            # H100/H200: 12B transformer bf16 + LoRA r64, 512 px crops
    python bench/distill_gpu.py --tiny     # the same code on the tiny stack, on the CPU (crash test)

Runs the trainer's own `training_step` (FTD + reconstruction through the VAE decoder + ADL) with
gradient checkpointing, AdamW on the fp32 LoRA weights and bf16 autocast. TV-LPIPS is off (its
weights are not on the machine); it adds a VGG16 pass, small next to the transformer. Prints a
markdown table and writes it to $OUT/distill_gpu.md when $OUT is set.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def flops_per_step(config: dict, side: int, text: int, batch: int) -> float:
    """Transformer FLOP of one step (docs/method.md section 10): forward + recomputation + input gradients."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    s = (side // 16) ** 2 + text
    blocks = config["num_layers"] + config["num_single_layers"]
    forward = 2 * batch * (1368 * d * d * s * blocks / 57 + blocks * 4 * s * s * d)  # z_t and z_L passes
    return 3 * forward  # LoRA: no weight gradients for the frozen base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny stack on the CPU (crash test)")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    from peft import LoraConfig

    from fluxsr_cli.model.architectures import (
        FLUX_DEV_TRANSFORMER,
        FLUX_VAE,
        TINY_TRANSFORMER,
        TINY_VAE,
        build_transformer,
        build_vae,
    )
    from fluxsr_cli.train.config import ATTENTION_TARGETS, MLP_TARGETS
    from fluxsr_cli.train.losses import LossWeights
    from fluxsr_cli.train.step import Student, training_step

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    tconf, vconf = (TINY_TRANSFORMER, TINY_VAE) if args.tiny else (FLUX_DEV_TRANSFORMER, FLUX_VAE)
    crop = 64 if args.tiny else args.crop
    text = 8 if args.tiny else 512
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    torch.set_default_dtype(dtype)  # build the 12B weights directly in bf16
    start = time.perf_counter()
    transformer = build_transformer(tconf, dtype=dtype, device=device)
    vae = build_vae(vconf, dtype=dtype, device=device)
    torch.set_default_dtype(torch.float32)
    transformer.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank,
                                       target_modules=list(ATTENTION_TARGETS + MLP_TARGETS)))
    for p in transformer.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    transformer.enable_gradient_checkpointing()
    transformer.train()
    g = torch.Generator().manual_seed(0)
    student = Student(transformer, torch.randn(1, text, tconf["joint_attention_dim"], generator=g).to(device, dtype),
                      torch.randn(1, tconf["pooled_projection_dim"], generator=g).to(device, dtype), 1.0, dtype)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    h = crop // 8
    batch = {k: torch.randn(1, 16, h, h, generator=g).to(device) for k in ("eps", "z_0", "z_l")}
    batch["hq"] = torch.rand(1, 3, crop, crop, generator=g).to(device)
    weights = LossWeights(tv=0.0)
    blocks = [("double", len(transformer.transformer_blocks) - 1), ("single", len(transformer.single_transformer_blocks) - 1)]
    setup_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, terms = training_step(student, vae, batch, 0.25, weights, g, None, blocks)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step = sorted(times[1:] or times)[len(times[1:] or times) // 2]  # median after the first (warm-up) step
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    flop = flops_per_step(tconf, crop, text, 1)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    n_lora = sum(p.numel() for p in params)
    table = (
        f"| device | model | crop | LoRA rank (params) | step time | peak memory | transformer TFLOP/s |\n"
        f"|---|---|---|---|---|---|---|\n"
        f"| {name} | {'tiny' if args.tiny else 'FLUX.1-dev size, random bf16'} | {crop} px | {args.rank} "
        f"({n_lora / 1e6:.1f} M) | {step * 1000:.0f} ms | {peak:.1f} GiB | {flop / step / 1e12:.1f} |\n"
    )
    print(f"setup {setup_s:.1f} s; step times {[round(t, 3) for t in times]} s; loss terms "
          f"{ {k: round(float(v), 4) for k, v in terms.items()} }")
    print(table)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "distill_gpu.md"), "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
