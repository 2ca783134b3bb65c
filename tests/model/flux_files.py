"""Single files in the layouts people download (the inverse of diffusers' converters, for the tests).

- :func:`to_bfl`: a diffusers ``FluxTransformer2DModel`` state dict in the Black Forest Labs key layout of
  ``flux1-dev.safetensors`` (the inverse of diffusers' ``convert_flux_transformer_checkpoint_to_diffusers``);
- :func:`write_gguf`: such a state dict as a GGUF file (the ``gguf`` package's writer and quantizers);
- :func:`vae_to_ldm`: a diffusers ``AutoencoderKL`` state dict in the LDM layout of ``ae.safetensors``.

diffusers' FLUX converter splits the single blocks' ``linear1`` at a fixed width of 3072, so files made
here come from a full-width transformer (24 heads x 128) of one double and one single block.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SHALLOW = {"num_layers": 1, "num_single_layers": 1}


def _swap_halves(w: torch.Tensor) -> torch.Tensor:
    """diffusers' AdaLayerNormContinuous splits (scale, shift); BFL's final layer (shift, scale)."""
    a, b = w.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def to_bfl(sd: dict[str, torch.Tensor], guidance: bool = True) -> dict[str, torch.Tensor]:
    """diffusers FLUX transformer keys -> BFL keys (``double_blocks.*``, ``single_blocks.*``, ...)."""
    out = {}
    pairs = {"time_in": "time_text_embed.timestep_embedder", "vector_in": "time_text_embed.text_embedder"}
    if guidance:
        pairs["guidance_in"] = "time_text_embed.guidance_embedder"
    for bfl, diff in pairs.items():
        for a, b in (("in_layer", "linear_1"), ("out_layer", "linear_2")):
            for p in ("weight", "bias"):
                out[f"{bfl}.{a}.{p}"] = sd[f"{diff}.{b}.{p}"]
    for p in ("weight", "bias"):
        out[f"txt_in.{p}"] = sd[f"context_embedder.{p}"]
        out[f"img_in.{p}"] = sd[f"x_embedder.{p}"]
        out[f"final_layer.linear.{p}"] = sd[f"proj_out.{p}"]
        out[f"final_layer.adaLN_modulation.1.{p}"] = _swap_halves(sd[f"norm_out.linear.{p}"])
    double = len({k.split(".")[1] for k in sd if k.startswith("transformer_blocks.")})
    single = len({k.split(".")[1] for k in sd if k.startswith("single_transformer_blocks.")})
    for i in range(double):
        d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{b}img_mod.lin.{p}"] = sd[f"{d}norm1.linear.{p}"]
            out[f"{b}txt_mod.lin.{p}"] = sd[f"{d}norm1_context.linear.{p}"]
            out[f"{b}img_attn.qkv.{p}"] = torch.cat([sd[f"{d}attn.to_{x}.{p}"] for x in "qkv"])
            out[f"{b}txt_attn.qkv.{p}"] = torch.cat([sd[f"{d}attn.add_{x}_proj.{p}"] for x in "qkv"])
            out[f"{b}img_mlp.0.{p}"] = sd[f"{d}ff.net.0.proj.{p}"]
            out[f"{b}img_mlp.2.{p}"] = sd[f"{d}ff.net.2.{p}"]
            out[f"{b}txt_mlp.0.{p}"] = sd[f"{d}ff_context.net.0.proj.{p}"]
            out[f"{b}txt_mlp.2.{p}"] = sd[f"{d}ff_context.net.2.{p}"]
            out[f"{b}img_attn.proj.{p}"] = sd[f"{d}attn.to_out.0.{p}"]
            out[f"{b}txt_attn.proj.{p}"] = sd[f"{d}attn.to_add_out.{p}"]
        out[f"{b}img_attn.norm.query_norm.scale"] = sd[f"{d}attn.norm_q.weight"]
        out[f"{b}img_attn.norm.key_norm.scale"] = sd[f"{d}attn.norm_k.weight"]
        out[f"{b}txt_attn.norm.query_norm.scale"] = sd[f"{d}attn.norm_added_q.weight"]
        out[f"{b}txt_attn.norm.key_norm.scale"] = sd[f"{d}attn.norm_added_k.weight"]
    for i in range(single):
        s, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{b}modulation.lin.{p}"] = sd[f"{s}norm.linear.{p}"]
            out[f"{b}linear1.{p}"] = torch.cat([sd[f"{s}attn.to_{x}.{p}"] for x in "qkv"] + [sd[f"{s}proj_mlp.{p}"]])
            out[f"{b}linear2.{p}"] = sd[f"{s}proj_out.{p}"]
        out[f"{b}norm.query_norm.scale"] = sd[f"{s}attn.norm_q.weight"]
        out[f"{b}norm.key_norm.scale"] = sd[f"{s}attn.norm_k.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def write_gguf(sd: dict[str, torch.Tensor], path: Path, qtype: str = "F16") -> Path:
    """A GGUF file of ``sd`` (BFL keys): matrices as ``qtype`` (``F16``, ``BF16``, ``Q8_0``), vectors as F32."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "flux")
    kind = gguf.GGMLQuantizationType[qtype]
    for name, tensor in sd.items():
        data = tensor.float().numpy()
        if tensor.ndim < 2 or data.shape[-1] % 32:
            writer.add_tensor(name, data.astype(np.float32))
        elif kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, data.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def vae_to_ldm(sd: dict[str, torch.Tensor], up_blocks: int = 4) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` keys -> the LDM keys of ``ae.safetensors`` (inverse of diffusers'
    ``convert_ldm_vae_checkpoint``; attention projections back to 1x1 convolutions)."""
    out = {}
    for key, value in sd.items():
        k = key.replace("conv_shortcut", "nin_shortcut")
        for side in ("encoder", "decoder"):
            k = k.replace(f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1.")
            k = k.replace(f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2.")
            if f"{side}.mid_block.attentions.0." in k:
                k = k.replace(f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1.")
                k = (k.replace("group_norm.", "norm.").replace("to_q.", "q.").replace("to_k.", "k.")
                     .replace("to_v.", "v.").replace("to_out.0.", "proj_out."))
                if value.ndim == 2:
                    value = value[:, :, None, None]
        if k.startswith("encoder.down_blocks."):
            k = k.replace("encoder.down_blocks.", "encoder.down.").replace(".resnets.", ".block.")
            k = k.replace(".downsamplers.0.", ".downsample.")
        if k.startswith("decoder.up_blocks."):
            i = int(k.split(".")[2])
            k = f"decoder.up.{up_blocks - 1 - i}." + k.split(".", 3)[3]
            k = k.replace("resnets.", "block.").replace("upsamplers.0.", "upsample.")
        k = k.replace("conv_norm_out.", "norm_out.")
        out[k] = value.contiguous()
    return out
