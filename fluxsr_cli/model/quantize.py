"""Quantized transformers (``--quantize``): fp8 and NF4 weights through torchao and bitsandbytes, built
once per base, LoRA and mode, and kept in a cache folder.

Modes (the VAE and the activations stay in the compute dtype, bf16 on a GPU):

- ``fp8``: weights stored as float8 e4m3 with one scale per output row, computed in the compute
  dtype (torchao ``Float8WeightOnlyConfig``); any CUDA GPU, and the CPU. About half the bf16 size.
- ``fp8-compute``: torchao ``Float8DynamicActivationFloat8WeightConfig`` with rowwise scales: the
  matrix products themselves run in fp8, on GPUs of compute capability 8.9 and newer (Ada, Hopper,
  Blackwell). Pair it with ``--compile``.
- ``nf4``: bitsandbytes 4-bit NF4 with bf16 compute, about 28 % of the bf16 size; CUDA only
  (diffusers' bitsandbytes loader quantizes on the GPU).

The LoRA is fused first, in float32 layer by layer, and only then quantized (PEFT layers on quantized
bases are fragile, and a rounded update is lost). Building an entry: the bf16 transformer (from a
diffusers folder, or a single BFL-layout file: an fp8 file is upcast exactly) and the LoRA are loaded
on the CPU, fused in place, written once as plain safetensors (2 GB shards) to a temporary folder
inside the cache, and read back (not mapped) through diffusers' ``from_pretrained(quantization_config=...)``,
which quantizes tensor by tensor onto the device; that quantized model is saved with
``save_pretrained`` (safetensors, no pickle; a torchao model from the CPU, see :func:`_save_entry`)
and the temporary folder removed. Peak host memory while building is about the bf16 transformer's
size plus a few GB (measured by ``bench/quantize_build_cpu.py``); disk needs the bf16 size once more,
temporarily. The next run loads the entry directly (half or a quarter of the bytes, nothing to fuse).
"""

from __future__ import annotations

import gc
import hashlib
import importlib.metadata
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fluxsr_cli.atomic import finish_temporary, make_temporary, sweep_temporaries_of
from fluxsr_cli.errors import CheckpointError, ConfigError, ResourceError, one_line
from fluxsr_cli.model.loading import ADAPTER_NAME, apply_lora, fuse_lora_fp32, load_transformer
from fluxsr_cli.progress import Notice, ProgressFn, no_notice, no_progress

QUANTIZE_MODES = ("none", "fp8", "fp8-compute", "nf4")
# weight bytes per parameter, for memory plans before a model exists (scales and unquantized layers aside)
WEIGHT_BYTES = {"fp8": 1.0, "fp8-compute": 1.0, "nf4": 0.55}
CACHE_FORMAT = 1
CACHE_INFO = "fluxsr-cache.json"
SHARD = "2GB"  # shards of the temporary fused copy: a shard is the most host memory saving needs at once
EXTRA = "pip install 'fluxsr[quant]'"


@dataclass(frozen=True)
class CacheEntry:
    """What a cache entry holds and what it was made from (``fluxsr-cache.json``)."""

    key: str
    mode: str
    dtype: str
    source: str  # the transformer folder it was made from (a Hub snapshot or a local folder)
    source_id: str  # the fingerprint of that folder's weights
    lora: str | None
    lora_sha256: str | None
    library: str  # the quantizing library and its version
    created: str
    bytes: int = 0
    path: str = ""


def cache_root() -> Path:
    """``$FLUXSR_CACHE``, else ``$XDG_CACHE_HOME/fluxsr``, else ``~/.cache/fluxsr``; entries live in ``transformers/``."""
    root = os.environ.get("FLUXSR_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fluxsr"
    return Path(root) / "transformers"


# -- which library, which device --------------------------------------------------------------------------
def _library(mode: str) -> str:
    return "bitsandbytes" if mode == "nf4" else "torchao"


def library_version(mode: str) -> str:
    """The installed version of the library ``mode`` needs; a one-line error naming the extra when it is absent."""
    name = _library(mode)
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"--quantize {mode} needs {name}, which is not installed: {EXTRA}") from None


def check_settings(mode: str, offload: str) -> None:
    """A known mode, and not with offloading (a quantized transformer stays on the GPU: that combination
    is neither needed nor tested)."""
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, got {mode!r}")
    if mode != "none" and offload != "none":
        raise ConfigError(f"--quantize {mode} with --offload {offload} is not supported: a quantized transformer "
                          "stays on the GPU; drop --offload (fp8 fits a 16-24 GB card, nf4 a 12 GB one)")


def check_mode(mode: str, device: torch.device) -> None:
    """Refuse, before anything is loaded, a mode this machine cannot run (with what to use instead)."""
    if mode == "none":
        return
    if mode == "fp8-compute":
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        if capability is None or capability < (8, 9):
            where = f"{torch.cuda.get_device_name(device)} (compute capability {capability[0]}.{capability[1]})" \
                if capability else "the CPU"
            raise ResourceError(f"--quantize fp8-compute needs fp8 matrix units (compute capability 8.9+: Ada, Hopper, "
                                f"Blackwell) and {where} has none; use --quantize fp8 (fp8 weights, bf16 compute)")
    if mode == "nf4" and device.type != "cuda":
        raise ResourceError("--quantize nf4 needs a CUDA GPU (bitsandbytes quantizes there); on the CPU use "
                            "--quantize fp8")
    library_version(mode)  # after the device: a machine that cannot run the mode is told so, not to install more


def quantization_config(mode: str, dtype: torch.dtype) -> Any:
    """The diffusers quantization config of ``mode`` (computing in ``dtype``)."""
    if mode == "nf4":
        from diffusers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    from diffusers import TorchAoConfig
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig, PerRow

    if mode == "fp8":
        return TorchAoConfig(Float8WeightOnlyConfig())
    if mode == "fp8-compute":
        return TorchAoConfig(Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    raise ValueError(f"no quantization for mode {mode!r}")


# -- cache keys -----------------------------------------------------------------------------------------
def _file_id(path: Path) -> str:
    """A weight file's identity without reading it: its Hub blob name (the content's hash) when it is
    a file of the Hugging Face cache, else its name, size and modification time."""
    resolved = path.resolve()
    if resolved.parent.name == "blobs":
        return resolved.name
    stat = resolved.stat()
    return f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"


def folder_id(folder: Path) -> str:
    """The fingerprint of a diffusers model folder's config and weights."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".json"))
    return hashlib.sha256("\n".join(_file_id(p) for p in files).encode()).hexdigest()[:20]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(source_id: str, lora_sha256: str | None, mode: str, dtype: torch.dtype, library: str) -> str:
    """One entry per (weights, LoRA, mode, compute dtype, library version, cache format)."""
    text = json.dumps([CACHE_FORMAT, source_id, lora_sha256, mode, str(dtype), library])
    return f"{mode}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def list_cache(root: Path | None = None) -> list[CacheEntry]:
    """The finished entries of the cache (newest first); half-built ones are not listed."""
    root = root or cache_root()
    found = []
    for info in sorted(root.glob(f"*/{CACHE_INFO}")) if root.is_dir() else []:
        if info.parent.name.startswith("."):  # a build under way (or killed)
            continue
        try:
            data = json.loads(info.read_text())
            entry = CacheEntry(**{k: v for k, v in data.items() if k in CacheEntry.__dataclass_fields__})
        except (OSError, ValueError, TypeError):
            continue
        size = sum(p.stat().st_size for p in info.parent.rglob("*") if p.is_file())
        found.append(CacheEntry(**{**asdict(entry), "bytes": size, "path": str(info.parent)}))
    return sorted(found, key=lambda e: e.created, reverse=True)


# -- load or build ---------------------------------------------------------------------------------------
def _device_map(device: torch.device) -> dict[str, Any] | None:
    if device.type == "cpu":
        return None  # diffusers loads on the CPU by default (a "cpu" device map would mean offloading)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return {"": f"{device.type}:{index}"}


def _from_pretrained(folder: Path, dtype: torch.dtype, device: torch.device, config: Any = None,
                     mapped: bool = True):
    """``mapped=False`` reads the files instead of mapping them: a quantized model keeps its few unquantized
    tensors (biases) pointing into a mapped file, and with them the whole file's pages and, once deleted,
    its disk space."""
    from diffusers import FluxTransformer2DModel

    kwargs = {"quantization_config": config} if config is not None else {}
    if not mapped:
        kwargs["disable_mmap"] = True
    try:
        model = FluxTransformer2DModel.from_pretrained(str(folder), torch_dtype=dtype, device_map=_device_map(device),
                                                       **kwargs)
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # quantizers raise ImportError, ValueError, RuntimeError, AssertionError ...
        raise CheckpointError(f"{folder}: cannot load the quantized transformer ({one_line(e)})") from None
    return model.eval().requires_grad_(False)


def _source_id(source: Path) -> str:
    return folder_id(source / "transformer") if source.is_dir() else _file_id(source)


def _load_plain(source: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The transformer of ``source`` (a folder with ``transformer/``, or a single file) on the CPU in ``dtype``."""
    if source.is_dir():
        return load_transformer(source, dtype)
    from fluxsr_cli.model.single_file import inspect_file, load_transformer_file

    return load_transformer_file(inspect_file(source), dtype)


def _save_entry(model: torch.nn.Module, folder: Path, mode: str, device: torch.device) -> None:
    """``save_pretrained`` of a quantized model. torchao's safetensors support copies every quantized tensor
    before writing (the whole model at once): on a GPU that copy would double the weights' GPU memory
    (a 16-24 GB card holding 12 GB of fp8 weights runs out), so a torchao model is saved from the CPU,
    where the copy costs host memory the build has just freed, and moved back."""
    on_gpu = device.type == "cuda" and _library(mode) == "torchao"
    if on_gpu:
        model.to("cpu")
        torch.cuda.empty_cache()
    try:
        model.save_pretrained(str(folder))
    finally:
        if on_gpu:
            model.to(device)


def load_quantized_transformer(source: Path, lora_file: Path | None, mode: str, dtype: torch.dtype,
                               device: torch.device, cache: Path | None = None, notice: Notice = no_notice,
                               progress: ProgressFn = no_progress) -> tuple[torch.nn.Module, bool]:
    """The transformer of ``source`` (a folder with ``transformer/``, or a single BFL-layout file) with
    ``lora_file`` fused, quantized by ``mode``, on ``device``; from the cache when it was built before.
    Returns (model, built now)."""
    cache = Path(cache) if cache is not None else cache_root()
    library = f"{_library(mode)}=={library_version(mode)}"
    lora_sha = file_sha256(lora_file) if lora_file is not None else None
    key = cache_key(_source_id(source), lora_sha, mode, dtype, library)
    entry = cache / key
    if (entry / CACHE_INFO).is_file():
        return _from_pretrained(entry / "transformer", dtype, device), False
    notice(f"building the {mode} transformer once (fusing the LoRA, quantizing); it is kept in {entry}")
    cache.mkdir(parents=True, exist_ok=True)
    removed = sweep_temporaries_of(entry)  # what a killed build of this entry left (tens of GB)
    if removed:
        notice(f"removed {len(removed)} unfinished build(s) of {key} left by a killed run")
    work = make_temporary(entry, folder=True)
    try:
        progress("quantize", 0, 3)
        if lora_file is None and source.is_dir():  # nothing to fuse: quantized straight from the source
            model = _from_pretrained(source / "transformer", dtype, device, quantization_config(mode, dtype))
        else:
            transformer = _load_plain(source, dtype)  # on the CPU
            if lora_file is not None:
                apply_lora(transformer, lora_file, fuse=False)
                fuse_lora_fp32(transformer, ADAPTER_NAME)
            transformer.save_pretrained(str(work / "fused"), max_shard_size=SHARD)
            del transformer
            gc.collect()
            progress("quantize", 1, 3)
            model = _from_pretrained(work / "fused", dtype, device, quantization_config(mode, dtype), mapped=False)
            shutil.rmtree(work / "fused")
        progress("quantize", 2, 3)
        _save_entry(model, work / "transformer", mode, device)
        info = CacheEntry(key, mode, str(dtype).removeprefix("torch."), str(source), _source_id(source),
                          str(lora_file) if lora_file is not None else None, lora_sha, library,
                          time.strftime("%Y-%m-%dT%H:%M:%S"))
        (work / CACHE_INFO).write_text(json.dumps(asdict(info), indent=2) + "\n")
        # another process may have finished the same entry first: then this build is dropped
        finish_temporary(work, None if (entry / CACHE_INFO).is_file() else entry)
        progress("quantize", 3, 3)
    except BaseException:
        finish_temporary(work)
        raise
    return model, True
