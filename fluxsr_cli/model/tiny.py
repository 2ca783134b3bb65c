"""Tiny random FLUX stacks and checkpoints, saved in the real on-disk formats.

Used by the tests, the CPU benchmarks and smoke runs: every loader in fluxsr (diffusers
``from_pretrained``, LoRA loading, the Hugging Face cache) runs on them exactly as on the real
model, only with a transformer of a few blocks and heads and a VAE of a few channels.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch

from fluxsr_cli.model.architectures import (
    TINY_TEXT_LENGTH,
    TINY_TRANSFORMER,
    TINY_VAE,
    build_transformer,
    build_vae,
    random_embeddings,
)
from fluxsr_cli.model.checkpoint import CheckpointInfo, save_checkpoint


def save_tiny_base(root: Path, seed: int = 0) -> Path:
    """A tiny random FLUX base (``transformer/``, ``vae/``, ``model_index.json``) in diffusers' layout."""
    root = Path(root)
    build_transformer(TINY_TRANSFORMER, seed=seed).save_pretrained(root / "transformer")
    build_vae(TINY_VAE, seed=seed + 1).save_pretrained(root / "vae")
    (root / "model_index.json").write_text(
        '{"_class_name": "FluxPipeline", "_diffusers_version": "0.32.0", '
        '"transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}\n'
    )
    return root


def random_lora(transformer: torch.nn.Module, rank: int = 4, seed: int = 0, std: float = 0.05,
                targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0"),
                alpha: float | None = None) -> dict[str, torch.Tensor]:
    """Attach a LoRA with random A and B to ``transformer`` and return its peft state dict.

    ``alpha`` (default: the rank) sets the scale alpha / rank by which B A is added to a weight.
    """
    from peft import LoraConfig, get_peft_model_state_dict

    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(targets),
                                       init_lora_weights="gaussian"))
    g = torch.Generator().manual_seed(seed)
    for name, param in transformer.named_parameters():
        if "lora_B" in name:
            param.data.copy_(torch.randn(param.shape, generator=g) * std)
    state = get_peft_model_state_dict(transformer)
    return {k: v.clone() for k, v in state.items()}


def save_tiny_checkpoint(root: Path, base: Path | str, seed: int = 0, t_l: float = 0.25, guidance: float = 1.0,
                         rank: int = 4, alpha: float | None = None, lora_std: float = 0.05) -> Path:
    """A fluxsr-format checkpoint (``fluxsr.json``, ``lora.safetensors``, ``embeddings.safetensors``).

    The LoRA's alpha (default: the rank) is stored in the file's adapter metadata, as peft saves it;
    ``lora_std`` sets the size of the LoRA's random B (how far it moves the model).
    """
    transformer = build_transformer(TINY_TRANSFORMER, seed=seed)
    lora = random_lora(transformer, rank=rank, seed=seed + 10, std=lora_std, alpha=alpha)
    info = CheckpointInfo(base_model=str(base), t_l=t_l, guidance=guidance, lora_rank=rank,
                          lora_alpha=float(alpha or rank), prompt="")
    emb = random_embeddings(TINY_TRANSFORMER, TINY_TEXT_LENGTH, seed=seed + 20)
    config = transformer.peft_config["default"].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    return save_checkpoint(Path(root), info, emb, lora_state_dict=lora, lora_config=config, overwrite=True)


def save_tiny_community(root: Path, seed: int = 0, t_l: float | None = None, alpha: float | None = None) -> Path:
    """The community port's layout: ``pytorch_lora_weights.safetensors`` + ``t5/clip_embedding.pth``.

    With ``alpha`` the LoRA file also holds one ``<layer>.alpha`` tensor per adapted layer (the
    kohya-style convention diffusers reads as ``network_alphas``); without, alpha is the rank.
    """
    import json

    from diffusers import FluxPipeline
    from safetensors.torch import load_file, save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    transformer = build_transformer(TINY_TRANSFORMER, seed=seed)
    lora = random_lora(transformer, rank=4, seed=seed + 10, alpha=alpha)
    FluxPipeline.save_lora_weights(str(root), transformer_lora_layers=lora)
    if alpha is not None:
        file = root / "pytorch_lora_weights.safetensors"
        state = load_file(str(file))
        layers = {k.removesuffix(".lora_A.weight") for k in state if k.endswith(".lora_A.weight")}
        save_file({**state, **{f"{layer}.alpha": torch.tensor(float(alpha)) for layer in layers}}, str(file))
    emb = random_embeddings(TINY_TRANSFORMER, TINY_TEXT_LENGTH, seed=seed + 20)
    torch.save(emb["prompt_embeds"], root / "t5_embedding.pth")
    torch.save(emb["pooled_prompt_embeds"], root / "clip_embedding.pth")
    if t_l is not None:
        (root / "training_config.json").write_text(json.dumps({"t_l": t_l, "guidance": 1.0, "rank": 4}))
    return root


def add_to_hub_cache(cache_dir: Path, repo_id: str, folder: Path, commit: str | None = None) -> Path:
    """Lay ``folder`` out as a Hugging Face cache entry (``models--org--name``: blobs, snapshots, refs).

    Returns the snapshot folder. With ``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``) the real
    resolution code of huggingface_hub then finds the repo as if it had been downloaded.
    """
    folder = Path(folder)
    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
    repo_dir = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            shutil.copyfile(file, blob)
        target = snapshot / file.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        os.symlink(os.path.relpath(blob, target.parent), target)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot
