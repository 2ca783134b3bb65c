"""CPU benchmark of the peak host memory of building one ``--quantize fp8`` cache entry (not a test).

Builds a full-width FLUX.1-dev transformer (the real config: 3072 wide, 24 heads) with fewer blocks
(``--double`` + ``--single``) and random bf16 weights, saves it in diffusers' layout with a random
peft LoRA of rank ``--rank`` on the training targets (attention and MLP layers) in fluxsr's checkpoint
format (``lora.safetensors``), then measures, each in a fresh subprocess: the floor (torch, diffusers,
peft, torchao and fluxsr imported, nothing loaded), holding the bf16 transformer
(``load_transformer``), building the entry (``load_quantized_transformer(..., "fp8", bf16, cpu)``
with an empty cache: load bf16, fuse the LoRA in fp32, save a sharded copy, reload it quantized, save
the entry) and reading the entry back (a cache hit). Peak RSS is ``ru_maxrss``; a sampling thread
also records the peak anonymous and file-backed RSS in each step of the build.

Target: peak RSS of the build minus the floor <= 1.2x the bf16 transformer's size (23.8 GB for the
full 11.9B FLUX.1-dev): the build must never hold two copies. Two depths are measured by default so
that the overhead above the bf16 size can be told fixed (e.g. one shard) or proportional, and
extrapolated to the full 19 + 38 blocks. Prints markdown tables. Needs the [quant] extra (torchao)
and about 2.5x the bf16 size of free disk under ``--tmp``.

    python bench/quantize_build_cpu.py                       # 4+7 blocks (4.8 GB), and 2+4 to compare
    python bench/quantize_build_cpu.py --double 4 --single 8 --compare ""
    python bench/quantize_build_cpu.py --tiny                # 1+1 blocks, a quick dry run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

FULL = (19, 38)  # FLUX.1-dev's double and single blocks
FULL_PARAMS = 11.90140832e9
GB = 1e9


# -- in a child process ---------------------------------------------------------------------------------
class Sampler:
    """Peak RSS (anonymous, file-backed, total) per named step, read from /proc/self/status every few ms."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.step, self.peaks = interval, "start", {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> dict[str, int]:
        found = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "RssShmem"):
                    found[key] = int(value.split()[0]) * 1024
        return {"anon": found["RssAnon"], "file": found["RssFile"] + found["RssShmem"],
                "total": sum(found.values())}

    def sample(self) -> None:
        now = self.read()
        peak = self.peaks.setdefault(self.step, {"anon": 0, "file": 0, "total": 0})
        for key, value in now.items():
            peak[key] = max(peak[key], value)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def mark(self, step: str) -> None:
        self.sample()  # the end of the previous step
        self.step = step
        self.sample()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _imports() -> None:
    """Everything a build imports, so that the floor and the measured steps start from the same place."""
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import torch
    import torchao.quantization  # noqa: F401
    from diffusers import FluxPipeline, FluxTransformer2DModel, TorchAoConfig  # noqa: F401

    import fluxsr_cli.model.loading  # noqa: F401
    import fluxsr_cli.model.quantize  # noqa: F401

    torch.set_num_threads(min(2, os.cpu_count() or 1))


def _maxrss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def make(work: Path, double: int, single: int, rank: int) -> dict:
    """The random bf16 base (``work/base/transformer``) and LoRA checkpoint (``work/ckpt/lora.safetensors``)."""
    import torch

    from fluxsr_cli.model.architectures import (
        FLUX_DEV_TRANSFORMER,
        TINY_TEXT_LENGTH,
        build_transformer,
        random_embeddings,
    )
    from fluxsr_cli.model.checkpoint import CheckpointInfo, save_checkpoint
    from fluxsr_cli.model.tiny import random_lora
    from fluxsr_cli.train.config import ATTENTION_TARGETS, MLP_TARGETS

    start = time.perf_counter()
    config = {**FLUX_DEV_TRANSFORMER, "num_layers": double, "num_single_layers": single}
    transformer = build_transformer(config, dtype=torch.bfloat16)
    params = sum(p.numel() for p in transformer.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in transformer.parameters())
    transformer.save_pretrained(str(work / "base" / "transformer"))  # diffusers' default shards (10 GB)
    lora = random_lora(transformer, rank=rank, seed=10, std=0.01, targets=ATTENTION_TARGETS + MLP_TARGETS)
    lora_config = transformer.peft_config["default"].to_dict()
    lora_config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in lora_config.items()}
    info = CheckpointInfo(base_model=str(work / "base"), lora_rank=rank, lora_alpha=float(rank))
    save_checkpoint(work / "ckpt", info, random_embeddings(config, TINY_TEXT_LENGTH), lora_state_dict=lora,
                    lora_config=lora_config, overwrite=True)
    return {"params": params, "bf16_bytes": weight_bytes, "lora_params": sum(v.numel() for v in lora.values()),
            "seconds": time.perf_counter() - start}


def _touch(model, sampler: Sampler) -> None:
    """Read every page of every weight (torchao tensors: their data tensors), allocating nothing large."""
    import torch

    sampler.mark("read")
    with torch.no_grad():
        for t in model.state_dict().values():
            for part in [getattr(t, n) for n in t.__tensor_flatten__()[0]] if hasattr(t, "__tensor_flatten__") else [t]:
                (part.view(torch.uint8) if part.element_size() == 1 else part).sum()


def child(role: str, work: Path) -> dict:
    """One measurement in this (fresh) process; returns the numbers as a dict."""
    _imports()
    import torch

    from fluxsr_cli.model import quantize
    from fluxsr_cli.model.loading import load_transformer

    result: dict = {"at_start": Sampler.read()}
    args = (work / "base", work / "ckpt" / "lora.safetensors", "fp8", torch.bfloat16, torch.device("cpu"))
    with Sampler() as sampler:
        start = time.perf_counter()
        if role == "load":
            model = load_transformer(work / "base", torch.bfloat16)
            result["seconds"] = time.perf_counter() - start
            result["maxrss_untouched"] = _maxrss()  # safetensors weights are memory-mapped: read when used
            _touch(model, sampler)
        elif role == "build":
            def step(name, fn, after=None):
                def wrapper(*a, **k):
                    sampler.mark(name)
                    try:
                        return fn(*a, **k)
                    finally:
                        if after:
                            sampler.mark(after)
                return wrapper

            # instrumentation only: the steps of load_quantized_transformer, as the names it calls
            quantize._load_plain = step("load bf16", quantize._load_plain)
            quantize.apply_lora = step("attach LoRA", quantize.apply_lora)
            quantize.fuse_lora_fp32 = step("fuse fp32", quantize.fuse_lora_fp32, after="save fused (2GB shards)")
            quantize._from_pretrained = step("quantize-load", quantize._from_pretrained)
            quantize._save_entry = step("save entry", quantize._save_entry)
            model, built = quantize.load_quantized_transformer(*args, cache=work / "cache")
            assert built, "the cache was not empty"
        elif role == "hit":
            model, built = quantize.load_quantized_transformer(*args, cache=work / "cache")
            assert not built, "the cache entry was not found"
            result["seconds"] = time.perf_counter() - start
            result["maxrss_untouched"] = _maxrss()
            _touch(model, sampler)
        elif role != "floor":
            raise ValueError(role)
        result.setdefault("seconds", time.perf_counter() - start)
    result.update(maxrss=_maxrss(), steps=sampler.peaks)
    if role in ("build", "hit"):
        result["weight"] = type(model.transformer_blocks[0].attn.to_q.weight).__name__
    return result


# -- the parent --------------------------------------------------------------------------------------------
def run_child(args: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        sys.exit(f"{' '.join(args[:2])} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(double: int, single: int, rank: int, tmp: str | None) -> dict:
    """All the subprocesses for one depth, in a temporary folder removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix="fluxsr-qbuild-", dir=tmp))
    try:
        made = run_child(["--child", "make", "--work", str(work), "--double", str(double), "--single",
                          str(single), "--rank", str(rank)])
        print(f"{double}+{single}: made {made['bf16_bytes'] / GB:.2f} GB in {made['seconds']:.0f} s", file=sys.stderr)
        row = {"double": double, "single": single, **made}
        for role in ("floor", "load", "build", "hit"):
            row[role] = run_child(["--child", role, "--work", str(work)])
            print(f"{double}+{single}: {role} {row[role]['maxrss'] / GB:.2f} GB peak, "
                  f"{row[role]['seconds']:.1f} s", file=sys.stderr)
        row["entry_bytes"] = sum(p.stat().st_size for p in (work / "cache").rglob("*") if p.is_file())
        return row
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(rows: list[dict]) -> None:
    def gb(n: float) -> str:
        return f"{n / GB:.2f}"

    print("| model (double+single blocks) | params | bf16 GB | floor RSS GB | bf16-load RSS GB (untouched / read) "
          "| build peak RSS GB | peak - floor GB | (peak - floor) / bf16 | build peak anon - floor GB | build s "
          "| cache-hit s | cache-hit RSS GB (untouched / read) | entry on disk GB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        floor, peak = r["floor"]["maxrss"], r["build"]["maxrss"]
        anon = max(p["anon"] for p in r["build"]["steps"].values()) - r["build"]["at_start"]["anon"]
        print(f"| {r['double']}+{r['single']} | {r['params'] / 1e9:.2f}B | {gb(r['bf16_bytes'])} | {gb(floor)} | "
              f"{gb(r['load']['maxrss_untouched'])} / {gb(r['load']['maxrss'])} | {gb(peak)} | {gb(peak - floor)} | "
              f"{(peak - floor) / r['bf16_bytes']:.2f} | {gb(anon)} | "
              f"{r['build']['seconds']:.1f} | {r['hit']['seconds']:.1f} | {gb(r['hit']['maxrss_untouched'])} / "
              f"{gb(r['hit']['maxrss'])} | "
              f"{gb(r['entry_bytes'])} |")
    print()
    print("Peak RSS above the floor in each step of the build (sampled; anonymous + file-backed), GB:")
    print()
    print("| model | " + " | ".join(rows[0]["build"]["steps"]) + " |")
    print("|---|" + "---|" * len(rows[0]["build"]["steps"]))
    for r in rows:
        floor = r["build"]["at_start"]
        cells = [f"{gb(p['total'] - floor['total'])} ({gb(p['anon'] - floor['anon'])} + "
                 f"{gb(p['file'] - floor['file'])})" for p in r["build"]["steps"].values()]
        print(f"| {r['double']}+{r['single']} | " + " | ".join(cells) + " |")
    print()
    full = 2 * FULL_PARAMS
    if len(rows) < 2:
        print("One depth only: run two (--compare) to extrapolate to the full model.")
        return
    # Each step's peak is a fixed part (a shard read whole, the floor's slack) plus a part proportional to
    # the model; two depths give both, per step, and the build's peak at full size is the largest step's.
    small, large = sorted(rows, key=lambda r: r["bf16_bytes"])[0], sorted(rows, key=lambda r: r["bf16_bytes"])[-1]
    print(f"Each step's peak RSS above the floor, fitted as fixed + proportional over {gb(small['bf16_bytes'])} and "
          f"{gb(large['bf16_bytes'])} GB and extrapolated to the full {full / GB:.1f} GB FLUX.1-dev "
          f"({FULL[0]}+{FULL[1]} blocks):")
    print()
    print("| step | fixed GB | x bf16 size | full model GB | / bf16 |")
    print("|---|---|---|---|---|")
    worst = (0.0, "")
    for step in large["build"]["steps"]:
        (s1, p1), (s2, p2) = [(r["bf16_bytes"], r["build"]["steps"][step]["total"] - r["build"]["at_start"]["total"])
                              for r in (small, large)]
        slope = (p2 - p1) / (s2 - s1)
        at_full = p2 + slope * (full - s2)
        worst = max(worst, (at_full, step))
        print(f"| {step} | {gb(p2 - slope * s2)} | {slope:.2f} | {gb(at_full)} | {at_full / full:.2f}x |")
    print()
    print(f"Full model: the build peaks in '{worst[1]}' at about {gb(worst[0])} GB above the floor, "
          f"{worst[0] / full:.2f}x the bf16 size (target <= 1.20x).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--double", type=int, default=4, help="double-stream blocks (FLUX.1-dev: 19)")
    parser.add_argument("--single", type=int, default=7, help="single-stream blocks (FLUX.1-dev: 38)")
    parser.add_argument("--compare", default="2+4",
                        help="further depths, DOUBLE+SINGLE comma-separated, to tell a fixed overhead from a "
                             "proportional one ('' for none)")
    parser.add_argument("--rank", type=int, default=64, help="LoRA rank")
    parser.add_argument("--tiny", action="store_true", help="1+1 blocks only (a quick dry run)")
    parser.add_argument("--tmp", help="where the temporary folders go (default: the system's, e.g. /tmp)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "make":
        print(json.dumps(make(Path(args.work), args.double, args.single, args.rank)))
        return
    if args.child:
        print(json.dumps(child(args.child, Path(args.work))))
        return
    depths = [(1, 1)] if args.tiny else [(args.double, args.single)] + [
        tuple(int(n) for n in d.split("+")) for d in args.compare.split(",") if d.strip()]
    rows = [measure(d, s, args.rank, args.tmp) for d, s in depths]
    rows.sort(key=lambda r: r["bf16_bytes"])
    report(rows)


if __name__ == "__main__":
    main()
