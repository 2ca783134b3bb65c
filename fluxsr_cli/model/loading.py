"""Loading the FLUX transformer and VAE (diffusers layout), fusing a LoRA, and choosing the device.

Every failure is a one-line :class:`CheckpointError` naming the folder or file at fault. The
transformer is loaded frozen and in eval mode; :func:`apply_lora` checks that every tensor of a
LoRA file found its layer (some diffusers/peft paths only warn, leaving the base model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fluxsr_cli.errors import CheckpointError, ConfigError, ResourceError
from fluxsr_cli.model.checkpoint import check_safetensors

ADAPTER_NAME = "fluxsr"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
LARGE_MODEL_PARAMS = 1e9  # a transformer this large is refused on the CPU unless asked for


def _from_pretrained(cls: Any, root: Path, subfolder: str, dtype: torch.dtype) -> Any:
    folder = root / subfolder
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: config.json missing; the model folder is incomplete (download it again)")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise CheckpointError(f"{folder}: no .safetensors weights; the model folder is incomplete (download it again)")
    index = [w for w in folder.glob("*.index.json")]
    if not index:
        for w in weights:
            check_safetensors(w)
    try:
        return cls.from_pretrained(str(root), subfolder=subfolder, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{folder}: cannot load ({str(e).splitlines()[0]}); "
                              "the files are incomplete or corrupt: download them again") from None


def estimate_params(config: dict[str, Any]) -> float:
    """Approximate parameter count of a FLUX transformer from its config (36 d^2 per double block,
    15 d^2 per single block)."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    return float((36 * config["num_layers"] + 15 * config["num_single_layers"]) * d * d)


def read_transformer_config(root: Path) -> dict[str, Any]:
    path = root / "transformer" / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; the base model folder is incomplete (download it again)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); download it again") from None


def load_transformer(root: Path, dtype: torch.dtype):
    from diffusers import FluxTransformer2DModel

    return _from_pretrained(FluxTransformer2DModel, root, "transformer", dtype).eval().requires_grad_(False)


def load_vae(root: Path, dtype: torch.dtype):
    from diffusers import AutoencoderKL

    return _from_pretrained(AutoencoderKL, root, "vae", dtype).eval().requires_grad_(False)


def apply_lora(transformer: Any, lora_file: Path, fuse: bool = True) -> int:
    """Load a FLUX LoRA into ``transformer``; fail loudly if any of its keys matched nothing.

    Some diffusers/peft paths only warn when keys do not match (and the model then behaves like the
    base): we compare the adapter the model holds after loading with the file. Returns the number
    of LoRA tensors loaded. With ``fuse`` the LoRA is merged into the weights and the adapter removed.
    """
    from diffusers import FluxPipeline
    from peft import get_peft_model_state_dict

    check_safetensors(lora_file)
    try:
        state_dict, alphas, metadata = FluxPipeline.lora_state_dict(
            str(lora_file.parent), weight_name=lora_file.name, return_alphas=True, return_lora_metadata=True
        )
    except Exception as e:
        raise CheckpointError(f"{lora_file}: not a FLUX LoRA diffusers can read ({str(e).splitlines()[0]})") from None
    lora_keys = {k.removeprefix("transformer.") for k in state_dict if ".lora_" in k or k.startswith("transformer.")}
    stray = sorted(k for k in state_dict if not k.startswith("transformer."))
    if stray:
        raise CheckpointError(f"{lora_file}: {len(stray)} keys are not for the FLUX transformer "
                              f"(e.g. {stray[0]!r}); text-encoder LoRAs are not supported")
    if not lora_keys:
        raise CheckpointError(f"{lora_file}: holds no LoRA weights")
    try:
        FluxPipeline.load_lora_into_transformer(
            state_dict, network_alphas=alphas, transformer=transformer, adapter_name=ADAPTER_NAME, metadata=metadata
        )
    except Exception as e:
        raise CheckpointError(f"{lora_file}: does not fit this transformer ({str(e).splitlines()[0]}); "
                              "is it a LoRA for a different base model?") from None
    loaded = get_peft_model_state_dict(transformer, adapter_name=ADAPTER_NAME) if getattr(
        transformer, "peft_config", None) else {}
    lora_tensors = {k for k in lora_keys if ".lora_A" in k or ".lora_B" in k}
    missing = sorted(k for k in lora_tensors if k not in loaded)
    if missing or not loaded:
        example = missing[0] if missing else sorted(lora_keys)[0]
        raise CheckpointError(
            f"{lora_file}: {len(missing) or len(lora_keys)} LoRA tensors matched no layer of the transformer "
            f"(e.g. {example!r}); the file's key layout does not fit this model"
        )
    if fuse:
        fuse_lora_fp32(transformer, ADAPTER_NAME)
    return len(lora_tensors)


@torch.no_grad()
def fuse_lora_fp32(transformer: torch.nn.Module, adapter: str) -> int:
    """Merge the LoRA ``adapter`` into its base layers, each update computed and added in float32 and
    rounded once to the weight's dtype (peft's own merge adds an update already rounded to it); then
    the LoRA layers are removed. Returns the number of layers fused."""
    from peft.tuners.lora import LoraLayer

    fused = 0
    for module in transformer.modules():
        if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
            continue
        if module.use_dora.get(adapter, False) or getattr(module, "lora_bias", {}).get(adapter, False):
            # weight-decomposed LoRA, or one with a bias on B: peft's merge knows its norm and adds the bias
            module.merge(adapter_names=[adapter])
        else:
            module.lora_A[adapter].float()
            module.lora_B[adapter].float()
            delta = module.get_delta_weight(adapter)  # float32, scaled by alpha / r
            base = module.get_base_layer()
            # in place: a weight read from a memory-mapped file becomes the fused copy, not a second one
            base.weight.data.copy_(base.weight.float() + delta.to(base.weight.device))
        fused += 1
    transformer.unload_lora()
    return fused


def compute_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The dtype the models compute in: ``name`` (a key of :data:`DTYPES`), else bf16 on a GPU, fp32 on the CPU."""
    if name is not None:
        return DTYPES[name]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def pick_device(requested: str | None, transformer_config: dict, base_ref: str) -> torch.device:
    """CUDA when present; without one the full-size model is refused unless the CPU is asked for."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ConfigError(f"--device {requested!r} is not a device; use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ResourceError(f"--device {requested}: no CUDA GPU is visible; use --device cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    params = estimate_params(transformer_config)
    if params > LARGE_MODEL_PARAMS:
        raise ResourceError(
            f"{base_ref}: the {params / 1e9:.1f}B-parameter FLUX transformer needs a CUDA GPU with at least "
            "24 GB (less with --offload); no GPU is visible. On the CPU it needs about 48 GB of RAM and "
            "several minutes per megapixel: pass --device cpu to run it there anyway"
        )
    return torch.device("cpu")
