"""What `fluxsr info` reports: versions, devices, and the checkpoints in the local Hub cache."""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fluxsr_cli import __version__

PACKAGES = ("torch", "diffusers", "transformers", "peft", "accelerate", "huggingface-hub", "safetensors",
            "typer", "rich", "pillow", "opencv-python-headless", "pyiqa", "bitsandbytes")


@dataclass
class CachedModel:
    repo_id: str
    kind: str  # "FLUX base", "fluxsr checkpoint", "community FluxSR port" or "other"
    size_gb: float
    revisions: list[str] = field(default_factory=list)
    path: str = ""


def versions() -> dict[str, str]:
    """Versions of fluxsr, Python and the packages it uses (``-`` when not installed)."""
    found = {"fluxsr": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "-"
    return found


def devices() -> list[dict[str, Any]]:
    """Each CUDA device with its memory, or the CPU alone."""
    import torch

    found: list[dict[str, Any]] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            found.append({"device": f"cuda:{i}", "name": torch.cuda.get_device_name(i),
                          "memory_gb": total / 2**30, "free_gb": free / 2**30,
                          "bf16": torch.cuda.is_bf16_supported()})
    found.append({"device": "cpu", "name": platform.processor() or platform.machine(),
                  "threads": torch.get_num_threads()})
    return found


def _kind(path: Path) -> str:
    if (path / "fluxsr.json").is_file():
        return "fluxsr checkpoint"
    if (path / "pytorch_lora_weights.safetensors").is_file() and (path / "t5_embedding.pth").is_file():
        return "community FluxSR port"
    if (path / "transformer" / "config.json").is_file() and (path / "vae" / "config.json").is_file():
        return "FLUX base"
    return "other"


def cached_models(cache_dir: str | Path | None = None) -> list[CachedModel]:
    """Models in the Hugging Face cache that fluxsr can use (bases and checkpoints), largest first."""
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:  # the cache folder as configured now (scan_cache_dir's own default is fixed when it is imported)
        info = scan_cache_dir(cache_dir or constants.HF_HUB_CACHE)
    except CacheNotFound:
        return []
    found = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        kinds = {_kind(Path(rev.snapshot_path)) for rev in repo.revisions}
        kind = next((k for k in ("fluxsr checkpoint", "community FluxSR port", "FLUX base") if k in kinds), "other")
        if kind == "other":
            continue
        found.append(CachedModel(repo.repo_id, kind, repo.size_on_disk / 1e9,
                                 sorted(rev.commit_hash[:10] for rev in repo.revisions), str(repo.repo_path)))
    return sorted(found, key=lambda m: -m.size_gb)
