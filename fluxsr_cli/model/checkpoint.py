"""fluxsr checkpoints: what they hold, reading them (small files only) and writing them atomically.

A checkpoint is a Hub repo id (with a revision) or a local folder, in one of two formats:

1. **fluxsr** (what ``fluxsr distill export`` writes): ``fluxsr.json`` (settings),
   ``embeddings.safetensors`` (``prompt_embeds`` [1, L, 4096], ``pooled_prompt_embeds`` [1, 768]) and
   either ``lora.safetensors`` (a diffusers/peft LoRA of the transformer) or a full ``transformer/``.
2. **community** FluxSR port (``mon3tr/FluxSR-private``): ``pytorch_lora_weights.safetensors``,
   ``t5_embedding.pth``, ``clip_embedding.pth`` and an optional ``training_config.json``.

Where the files come from is :mod:`fluxsr_cli.model.hub`; loading the transformer, the VAE and
the LoRA is :mod:`fluxsr_cli.model.loading`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fluxsr_cli.atomic import finish_temporary, make_temporary, sweep_temporaries_of
from fluxsr_cli.errors import CheckpointError, ConfigError
from fluxsr_cli.model.hub import DEFAULT_BASE, resolve
from fluxsr_cli.progress import Notice, no_notice

DEFAULT_MODEL = "mon3tr/FluxSR-private"
FORMAT_VERSION = 1

CHECKPOINT_FILES = [
    "fluxsr.json", "embeddings.safetensors", "lora.safetensors", "transformer/*",
    "pytorch_lora_weights.safetensors", "t5_embedding.pth", "clip_embedding.pth", "training_config.json",
]


@dataclass(frozen=True)
class CheckpointInfo:
    """The settings a checkpoint carries (``fluxsr.json``)."""

    format_version: int = FORMAT_VERSION
    base_model: str = DEFAULT_BASE
    base_revision: str | None = None
    t_l: float = 0.25
    guidance: float = 1.0
    lora_rank: int | None = None
    lora_alpha: float | None = None
    prompt: str = ""
    source: str = "fluxsr"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 < self.t_l < 1.0:
            raise ConfigError(f"t_l must lie in (0, 1), got {self.t_l}")


@dataclass
class Checkpoint:
    """A resolved checkpoint: where its files are, its settings and its fixed conditioning."""

    root: Path
    info: CheckpointInfo
    prompt_embeds: torch.Tensor  # [1, L, D_text]
    pooled_prompt_embeds: torch.Tensor  # [1, D_pooled]
    lora_file: Path | None = None
    transformer_dir: Path | None = None


def check_safetensors(path: Path) -> list[str]:
    """Open a safetensors file's header (which also checks the file size); return its keys or raise."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: file missing from the checkpoint; download it again or re-export")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:  # safetensors raises its own error types for every kind of damage
        raise CheckpointError(
            f"{path}: not a valid safetensors file ({str(e).splitlines()[0]}); the file is corrupt or "
            "incomplete: delete it and download or export it again"
        ) from None
    return keys


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    check_safetensors(path)
    return load_file(str(path))


def _load_pth_tensor(path: Path, names: tuple[str, ...]) -> torch.Tensor:
    """A tensor from a ``.pth`` file loaded with ``weights_only=True`` (no pickle code runs)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file missing from the checkpoint; download it again")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read it as plain tensors ({str(e).splitlines()[0]}); "
                              "the file is corrupt or not a tensor file") from None
    if isinstance(obj, dict):
        for name in names:
            if isinstance(obj.get(name), torch.Tensor):
                return obj[name]
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        raise CheckpointError(f"{path}: expected one tensor, found keys {sorted(obj)}")
    if isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], torch.Tensor):
        return obj[0]
    if not isinstance(obj, torch.Tensor):
        raise CheckpointError(f"{path}: expected a tensor, found {type(obj).__name__}")
    return obj


def _community_settings(root: Path) -> dict[str, Any]:
    """``t_l`` and guidance from the community port's optional ``training_config.json``."""
    path = root / "training_config.json"
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); delete or fix it") from None
    found: dict[str, Any] = {"extra": {"training_config": cfg}}
    for key in ("t_l", "T_L", "t_L", "tl", "lr_timestep", "mid_timestep", "timestep"):
        if isinstance(cfg.get(key), (int, float)):
            value = float(cfg[key])
            found["t_l"] = value / 1000.0 if value > 1.0 else value  # some configs use 0..1000
            break
    for key in ("guidance", "guidance_scale", "guidance_embed"):
        if isinstance(cfg.get(key), (int, float)):
            found["guidance"] = float(cfg[key])
            break
    for key in ("rank", "lora_rank"):
        if isinstance(cfg.get(key), int):
            found["lora_rank"] = cfg[key]
    return found


def read_checkpoint(ref: str | Path, revision: str | None = None, offline: bool = False,
                    notice: Notice = no_notice) -> Checkpoint:
    """Resolve ``ref`` and read its settings and fixed conditioning (small files only)."""
    root = resolve(ref, revision=revision, offline=offline, allow_patterns=CHECKPOINT_FILES, notice=notice)
    if (root / "fluxsr.json").is_file():
        try:
            raw = json.loads((root / "fluxsr.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{root / 'fluxsr.json'}: not valid JSON ({e}); re-export the checkpoint") from None
        known = {f for f in CheckpointInfo.__dataclass_fields__} - {"extra"}
        extra = {**raw.pop("extra", {}), **{k: v for k, v in raw.items() if k not in known}}
        try:
            info = CheckpointInfo(**{k: v for k, v in raw.items() if k in known}, extra=extra)
        except (TypeError, ConfigError) as e:
            raise CheckpointError(f"{root / 'fluxsr.json'}: {e}") from None
        if info.format_version > FORMAT_VERSION:
            raise CheckpointError(f"{root}: checkpoint format {info.format_version} is newer than this fluxsr "
                                  f"understands ({FORMAT_VERSION}); upgrade fluxsr")
        emb = load_safetensors(root / "embeddings.safetensors")
        for key in ("prompt_embeds", "pooled_prompt_embeds"):
            if key not in emb:
                raise CheckpointError(f"{root / 'embeddings.safetensors'}: missing tensor {key!r}; re-export")
        lora = root / "lora.safetensors"
        tdir = root / "transformer"
        if not lora.is_file() and not tdir.is_dir():
            raise CheckpointError(f"{root}: has neither lora.safetensors nor transformer/; the checkpoint is incomplete")
        ckpt = Checkpoint(root, info, emb["prompt_embeds"], emb["pooled_prompt_embeds"],
                          lora_file=lora if lora.is_file() else None,
                          transformer_dir=tdir if tdir.is_dir() and not lora.is_file() else None)
    elif (root / "pytorch_lora_weights.safetensors").is_file() or (root / "t5_embedding.pth").is_file():
        info = CheckpointInfo(source="community", prompt="", **_community_settings(root))
        t5 = _load_pth_tensor(root / "t5_embedding.pth", ("prompt_embeds", "t5", "embedding"))
        clip = _load_pth_tensor(root / "clip_embedding.pth", ("pooled_prompt_embeds", "clip", "embedding"))
        lora = root / "pytorch_lora_weights.safetensors"
        check_safetensors(lora)
        ckpt = Checkpoint(root, info, t5 if t5.ndim == 3 else t5.unsqueeze(0),
                          clip if clip.ndim == 2 else clip.reshape(1, -1), lora_file=lora)
    else:
        raise CheckpointError(
            f"{root}: not a fluxsr checkpoint (no fluxsr.json) nor the community FluxSR port "
            "(no pytorch_lora_weights.safetensors); check --model"
        )
    if ckpt.prompt_embeds.ndim != 3 or ckpt.prompt_embeds.shape[0] != 1 or ckpt.pooled_prompt_embeds.ndim != 2:
        raise CheckpointError(
            f"{root}: embeddings have shapes {tuple(ckpt.prompt_embeds.shape)} and "
            f"{tuple(ckpt.pooled_prompt_embeds.shape)}; expected [1, L, D] and [1, P]"
        )
    return ckpt


def save_checkpoint(out_dir: Path, info: CheckpointInfo, embeddings: dict[str, torch.Tensor],
                    lora_state_dict: dict[str, torch.Tensor] | None = None,
                    lora_config: dict[str, Any] | None = None, transformer: Any = None,
                    overwrite: bool = False, files: dict[str, bytes] | None = None) -> Path:
    """Write a fluxsr-format checkpoint folder atomically (a temporary folder renamed into place).

    The temporaries that killed exports of ``out_dir`` left are removed first.

    ``lora_state_dict`` uses peft keys without the ``transformer.`` prefix (as
    ``peft.get_peft_model_state_dict`` returns them); it is saved in diffusers' LoRA layout.
    ``files`` (relative path -> content) go into the same folder: the model card and its pictures.
    """
    from diffusers import FluxPipeline
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise CheckpointError(f"{out_dir}: exists; pass --overwrite to replace it or choose another folder")
    if (lora_state_dict is None) == (transformer is None):
        raise ValueError("give exactly one of lora_state_dict and transformer")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries_of(out_dir)
    tmp = make_temporary(out_dir, folder=True)
    try:
        (tmp / "fluxsr.json").write_text(json.dumps(asdict(info), indent=2) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in embeddings.items()}, str(tmp / "embeddings.safetensors"))
        if lora_state_dict is not None:
            FluxPipeline.save_lora_weights(
                str(tmp), transformer_lora_layers={k: v.detach().cpu() for k, v in lora_state_dict.items()},
                weight_name="lora.safetensors", transformer_lora_adapter_metadata=lora_config,
            )
        else:
            transformer.save_pretrained(str(tmp / "transformer"))
        for name, content in (files or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(content)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        finish_temporary(tmp, out_dir)
    except BaseException:
        finish_temporary(tmp)
        raise
    return out_dir
