"""The FLUX base a checkpoint runs on: a Hub repo, a diffusers folder, or a single transformer file,
and its transformer and VAE loaded the way the options ask (LoRA fused, quantized, GGUF).

The order matters for a demanding user: :meth:`Base.transformer_config` answers "how large is this
model" cheaply (the packaged FLUX.1-dev config, a local ``config.json``, a file's keys, or one small
download of ``transformer/config.json``), so that a machine that cannot run it says so before any
gigabytes move; only then :func:`load_transformer_for` and :func:`load_vae_for` fetch what they need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fluxsr_cli.errors import CheckpointError, ConfigError
from fluxsr_cli.model.architectures import FLUX_DEV_TRANSFORMER
from fluxsr_cli.model.hub import BASE_FILES, DEFAULT_BASE, FLUX_LICENCE_NOTE, VAE_FILES, is_local_ref, resolve
from fluxsr_cli.model.loading import apply_lora, load_transformer, load_vae, read_transformer_config
from fluxsr_cli.model.quantize import load_quantized_transformer
from fluxsr_cli.model.single_file import (
    FileInfo,
    check_flux_dev,
    inspect_file,
    is_weights_file,
    load_transformer_file,
    load_vae_file,
    transformer_config,
)
from fluxsr_cli.progress import Notice, no_notice


@dataclass(frozen=True)
class Base:
    """Where the base model's files are, before anything is downloaded."""

    ref: str
    revision: str | None = None
    offline: bool = False
    file: FileInfo | None = None  # a single transformer file (BFL safetensors or GGUF)

    @property
    def note(self) -> str | None:
        return FLUX_LICENCE_NOTE if self.ref == DEFAULT_BASE else None

    def transformer_config(self, notice: Notice = no_notice) -> dict[str, Any]:
        """The transformer's config, as cheaply as it can be had (never a weight file)."""
        if self.file is not None:
            return transformer_config(self.file)
        if is_local_ref(self.ref):
            return read_transformer_config(resolve(self.ref))
        if self.ref == DEFAULT_BASE:  # the published FLUX.1-dev config, shipped with fluxsr
            return dict(FLUX_DEV_TRANSFORMER)
        return read_transformer_config(resolve(self.ref, self.revision, self.offline, ["transformer/config.json"],
                                              notice, complete=True))

    def folder(self, patterns: list[str], notice: Notice = no_notice) -> Path:
        """The base's files matching ``patterns``, downloaded when missing (with the licence note first)."""
        return resolve(self.ref, self.revision, self.offline, patterns, notice, self.note, complete=True)


def open_base(ref: str | Path, revision: str | None = None, offline: bool = False) -> Base:
    """A base from ``--base`` (or a checkpoint's ``base_model``): a file is inspected (and refused when
    it is not the FLUX.1-dev transformer), a folder or repo id is kept as given."""
    if is_weights_file(ref):
        info = inspect_file(ref)
        check_flux_dev(info)
        return Base(str(Path(str(ref)).expanduser()), None, offline, info)
    if Path(str(ref)).expanduser().is_file():
        raise CheckpointError(f"{ref}: --base takes a folder, a Hub repo id, or a .safetensors / .gguf "
                              "transformer file")
    return Base(str(ref), revision, offline)


def effective_quantize(base: Base, quantize: str, notice: Notice = no_notice) -> str:
    """The quantization a base file implies: an fp8 file runs as ``--quantize fp8``; a GGUF file is
    quantized already (and takes no other)."""
    if base.file is None:
        return quantize
    if base.file.format == "gguf":
        if quantize != "none":
            raise ConfigError(f"{base.file.path}: a GGUF file is quantized already ({base.file.weights}); "
                              f"drop --quantize {quantize}")
        return "none"
    if base.file.fp8 and quantize == "none":
        notice(f"{base.file.path.name} holds fp8 weights: it runs as --quantize fp8 (fp8 weights, bf16 compute)")
        return "fp8"
    return quantize


def load_transformer_for(base: Base, lora_file: Path | None, quantize: str, dtype: torch.dtype,
                         device: torch.device, cache: Path | None = None, notice: Notice = no_notice,
                         checkpoint_transformer: Path | None = None) -> torch.nn.Module:
    """The transformer to run: the checkpoint's own (``checkpoint_transformer``: a folder holding
    ``transformer/``) or the base's, with the LoRA and quantization asked for.

    A bf16 base gets the LoRA fused in float32; a quantized one (``quantize``) is fused first, then
    quantized onto ``device`` and cached; a GGUF file keeps its quantized blocks and gets the LoRA
    unfused, through PEFT layers over diffusers' dequantizing ones (its blocks cannot take a fused
    update without requantizing them). Unquantized transformers are returned on the CPU.
    """
    if checkpoint_transformer is not None:
        source = checkpoint_transformer
    elif base.file is not None:
        source = base.file.path
    else:
        source = base.folder(BASE_FILES, notice)
    if quantize != "none":
        return load_quantized_transformer(source, lora_file, quantize, dtype, device, cache, notice)[0]
    if base.file is not None and checkpoint_transformer is None:
        transformer = load_transformer_file(base.file, dtype)
        fuse = base.file.format != "gguf"
    else:
        transformer = load_transformer(source, dtype)
        fuse = True
    if lora_file is not None:
        apply_lora(transformer, lora_file, fuse=fuse)
    return transformer


def load_vae_for(base: Base, vae: str | None, fallback: str, dtype: torch.dtype, notice: Notice = no_notice,
                 fallback_revision: str | None = None):
    """The VAE: ``--vae`` (``ae.safetensors`` or a diffusers ``vae/`` folder), else the base folder's
    ``vae/``, else (a transformer file as the base) the ``vae/`` of the ``fallback`` repo at
    ``fallback_revision`` (the checkpoint's base and revision, as ``fluxsr download`` plans it)."""
    if vae is not None:
        path = Path(vae).expanduser()
        if path.is_file():
            return load_vae_file(path, dtype)
        if (path / "config.json").is_file():  # the vae/ folder itself
            return load_vae(path.parent, dtype) if path.name == "vae" else _vae_folder(path, dtype)
        return load_vae(resolve(vae, offline=base.offline, allow_patterns=VAE_FILES, notice=notice, complete=True),
                        dtype)
    if base.file is None:
        return load_vae(base.folder(VAE_FILES, notice), dtype)
    try:
        folder = resolve(fallback, fallback_revision, offline=base.offline, allow_patterns=VAE_FILES, notice=notice,
                         first_download_note=FLUX_LICENCE_NOTE if fallback == DEFAULT_BASE else None, complete=True)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; or pass the VAE with --vae ae.safetensors") from None
    return load_vae(folder, dtype)


def _vae_folder(folder: Path, dtype: torch.dtype):
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.from_pretrained(str(folder), torch_dtype=dtype).eval().requires_grad_(False)
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{folder}: cannot load this VAE folder ({str(e).splitlines()[0]})") from None
