"""FLUX.1-dev as the single files people already have: BFL-layout safetensors (bf16 or fp8 e4m3), GGUF
(``Q8_0``, ``Q4_K_S``, ...) for the transformer, and ``ae.safetensors`` for the VAE.

:func:`inspect_file` reads only a file's header (safetensors) or tensor table (GGUF) and says what the
file is: a FLUX transformer (its depth, input width and guidance embedder read from its keys, so a
shallow test file and the real 19 + 38 block file take the same path), a VAE, a LoRA, a text encoder.
:func:`check_flux_dev` refuses anything that is not the FLUX.1-dev transformer, naming what it is.
Loading goes through diffusers' ``from_single_file`` with the FLUX.1-dev configs of
:mod:`fluxsr_cli.model.architectures` written to a local folder, so nothing is fetched from the Hub.
GGUF weights stay quantized (diffusers dequantizes them layer by layer as they compute).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fluxsr_cli.errors import CheckpointError, one_line
from fluxsr_cli.model.architectures import FLUX_DEV_TRANSFORMER, FLUX_VAE

SUFFIXES = (".safetensors", ".gguf", ".sft")
COMFY_PREFIX = "model.diffusion_model."
FLUX_DEV_IN_CHANNELS = 64  # 16 latent channels x 2 x 2; Fill has 384, Canny and Depth 128


@dataclass(frozen=True)
class FileInfo:
    """What a weights file holds, from its header alone."""

    path: Path
    format: str  # "safetensors" or "gguf"
    kind: str  # "FLUX transformer", "VAE", "LoRA", "text encoder", "diffusers transformer" or "unknown"
    weights: str = ""  # the dtype or GGUF type of most matrices: "BF16", "F8_E4M3", "Q8_0", ...
    num_double: int = 0
    num_single: int = 0
    in_channels: int = 0
    guidance: bool = False
    scaled_fp8: bool = False  # ComfyUI's "scaled fp8": scale_weight tensors beside the fp8 weights

    @property
    def fp8(self) -> bool:
        return self.weights.upper().startswith(("F8", "FLOAT8"))


def is_weights_file(ref: str | Path) -> bool:
    path = Path(str(ref)).expanduser()
    return path.suffix.lower() in SUFFIXES and path.is_file()


def _tensors(path: Path) -> tuple[str, dict[str, tuple[str, tuple[int, ...]]]]:
    """(format, name -> (dtype or GGUF type, torch-order shape)), reading no tensor data."""
    if path.suffix.lower() == ".gguf":
        try:
            from gguf import GGUFReader
        except ImportError:
            raise CheckpointError(f"{path}: reading GGUF files needs the gguf package: pip install 'fluxsr[quant]'") \
                from None
        try:
            reader = GGUFReader(str(path))
        except Exception as e:  # a damaged or foreign file
            raise CheckpointError(f"{path}: not a readable GGUF file ({one_line(e)})") from None
        return "gguf", {t.name: (t.tensor_type.name, tuple(int(n) for n in reversed(t.shape))) for t in reader.tensors}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            found = {}
            for key in f.keys():
                part = f.get_slice(key)
                found[key] = (part.get_dtype(), tuple(part.get_shape()))
    except Exception as e:  # safetensors raises its own types for every kind of damage
        raise CheckpointError(f"{path}: not a valid safetensors file ({one_line(e)}); the file is damaged or "
                              "incomplete: download it again") from None
    return "safetensors", found


def _blocks(names: list[str], prefix: str) -> int:
    found = {int(m.group(1)) for n in names if (m := re.match(rf"{re.escape(prefix)}(\d+)\.", n))}
    return max(found) + 1 if found else 0


def inspect_file(path: str | Path) -> FileInfo:
    """What the file at ``path`` is (see the module docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; give a .safetensors or .gguf file, or a folder")
    fmt, tensors = _tensors(path)
    names = [n.removeprefix(COMFY_PREFIX) for n in tensors]
    matrices = Counter(dtype for dtype, shape in tensors.values() if len(shape) >= 2)
    weights = matrices.most_common(1)[0][0] if matrices else ""
    if any(".lora_" in n or "lora_down" in n or "lora_up" in n for n in names):
        kind = "LoRA"
    elif any(n.startswith("double_blocks.") for n in names):
        img_in = next((shape for name, (_, shape) in tensors.items() if name.endswith("img_in.weight")), (0, 0))
        return FileInfo(path, fmt, "FLUX transformer", weights, _blocks(names, "double_blocks."),
                        _blocks(names, "single_blocks."), img_in[-1], any(n.startswith("guidance_in.") for n in names),
                        any(n.endswith("scale_weight") for n in names))
    elif any(n.startswith("transformer_blocks.") for n in names):
        kind = "diffusers transformer"
    elif any(n.startswith(("encoder.down.", "decoder.up.", "encoder.down_blocks.", "decoder.up_blocks.")) for n in names):
        kind = "VAE"
    elif any(n.startswith(("encoder.block.", "shared.", "text_model.", "text_projection")) for n in names):
        kind = "text encoder"
    else:
        kind = "unknown"
    return FileInfo(path, fmt, kind, weights)


def check_flux_dev(info: FileInfo) -> None:
    """Refuse, naming what it is, a file that is not the FLUX.1-dev transformer."""
    where = info.path
    if info.kind == "VAE":
        raise CheckpointError(f"{where}: is a VAE, not a transformer; pass it with --vae and the transformer "
                              "file (flux1-dev*.safetensors or .gguf) with --base")
    if info.kind == "LoRA":
        raise CheckpointError(f"{where}: is a LoRA, not a base model; a LoRA belongs in a checkpoint folder "
                              "given with --model")
    if info.kind == "text encoder":
        raise CheckpointError(f"{where}: is a text encoder (T5 or CLIP); upscaling needs none: pass the FLUX.1-dev "
                              "transformer file with --base")
    if info.kind == "diffusers transformer":
        raise CheckpointError(f"{where}: holds a transformer in diffusers' key layout; pass the folder that holds "
                              "it (with its config.json), not the file")
    if info.kind != "FLUX transformer":
        raise CheckpointError(f"{where}: is not a FLUX transformer (no double_blocks.* tensors); give "
                              "flux1-dev.safetensors, flux1-dev-fp8.safetensors or a flux1-dev GGUF file")
    if info.in_channels != FLUX_DEV_IN_CHANNELS:
        variant = {384: "FLUX.1 Fill", 128: "FLUX.1 Canny or Depth"}.get(info.in_channels, "another FLUX variant")
        raise CheckpointError(f"{where}: is {variant} ({info.in_channels} input channels, FLUX.1-dev has "
                              f"{FLUX_DEV_IN_CHANNELS}); fluxsr needs FLUX.1-dev")
    if not info.guidance:
        raise CheckpointError(f"{where}: has no guidance embedder, so it is FLUX.1-schnell (or a distilled "
                              "variant), not FLUX.1-dev; fluxsr's checkpoints are made for FLUX.1-dev")
    if info.scaled_fp8:
        raise CheckpointError(f"{where}: is a 'scaled fp8' file (scale_weight tensors beside the weights), which "
                              "diffusers does not read; use flux1-dev-fp8.safetensors (plain e4m3), the bf16 file "
                              "or a GGUF file")


def transformer_config(info: FileInfo) -> dict[str, Any]:
    """The FLUX.1-dev transformer config with the file's depth and guidance embedder."""
    return {**FLUX_DEV_TRANSFORMER, "num_layers": info.num_double, "num_single_layers": info.num_single,
            "guidance_embeds": info.guidance}


def _config_folder(subfolder: str, class_name: str, config: dict[str, Any]) -> Path:
    root = Path(tempfile.mkdtemp(prefix="fluxsr-config-"))
    (root / subfolder).mkdir()
    (root / subfolder / "config.json").write_text(json.dumps({"_class_name": class_name, **config}, indent=2))
    return root


def load_transformer_file(info: FileInfo, dtype: torch.dtype):
    """The FLUX.1-dev transformer of a single file, frozen and in eval mode, computing in ``dtype``:
    safetensors weights in ``dtype`` (fp8 ones upcast exactly), GGUF weights kept quantized."""
    from diffusers import FluxTransformer2DModel

    check_flux_dev(info)
    kwargs: dict[str, Any] = {}
    if info.format == "gguf":
        from diffusers import GGUFQuantizationConfig

        kwargs["quantization_config"] = GGUFQuantizationConfig(compute_dtype=dtype)
    config = _config_folder("transformer", "FluxTransformer2DModel", transformer_config(info))
    try:
        model = FluxTransformer2DModel.from_single_file(str(info.path), config=str(config), subfolder="transformer",
                                                        torch_dtype=dtype, local_files_only=True, **kwargs)
    except Exception as e:  # the converter, GGUF dequantizers, shape mismatches: one line
        raise CheckpointError(f"{info.path}: cannot load this transformer file ({one_line(e)})") from None
    finally:
        import shutil

        shutil.rmtree(config, ignore_errors=True)
    return model.eval().requires_grad_(False)


def load_vae_file(path: str | Path, dtype: torch.dtype):
    """The FLUX VAE of ``ae.safetensors`` (the BFL/LDM key layout) or of a single diffusers-layout file."""
    from diffusers import AutoencoderKL

    info = inspect_file(path)
    if info.kind != "VAE":
        raise CheckpointError(f"{info.path}: is {'a ' + info.kind if info.kind != 'unknown' else 'not'} a VAE; "
                              "--vae takes ae.safetensors or a diffusers vae/ folder")
    config = _config_folder("vae", "AutoencoderKL", FLUX_VAE)
    try:
        model = AutoencoderKL.from_single_file(str(info.path), config=str(config), subfolder="vae", torch_dtype=dtype,
                                               local_files_only=True)
    except Exception as e:
        raise CheckpointError(f"{info.path}: cannot load this VAE file ({one_line(e)})") from None
    finally:
        import shutil

        shutil.rmtree(config, ignore_errors=True)
    return model.eval().requires_grad_(False)
