"""Exact attention for wide heads, a block of queries at a time: the VAE's mid-block attention.

The FLUX VAE's encoder and decoder each end (or begin) with one self-attention over every latent
cell, with ONE head of width 512. PyTorch's flash and cuDNN kernels stop at head width 256, so
``scaled_dot_product_attention`` runs it through the memory-efficient kernel, which is slow for wide
heads. Yet at 4096 px output (262,144 latent cells) that attention is 141 TFLOP per call, more than
the rest of the VAE together.

:func:`blockwise_attention` computes the same ``softmax(q k^T / sqrt(d)) v`` through plain matrix
products, which run near the tensor cores' peak at any width, one block of query rows at a time so
that the scores never take more than a fixed budget of memory. :class:`BlockwiseAttnProcessor`
plugs it into diffusers' ``Attention`` modules through the public ``set_attn_processor``; it only
takes over where it helps (wide heads on CUDA) and hands every other call to diffusers' own
``AttnProcessor2_0``. Precision: the scores are kept in the input dtype and the softmax accumulates
in float32, as diffusers' classic ``AttnProcessor`` does.
"""

from __future__ import annotations

import torch

FUSED_MAX_HEAD_DIM = 256  # flash and cuDNN attention handle heads up to this width
SCORE_BYTES = 512 * 2**20  # memory for one block's scores (twice this with its softmax)


def blockwise_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        max_score_bytes: int = SCORE_BYTES) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` for [B, H, S_q, d] queries and [B, H, S_k, d] keys and values.

    Exact (no approximation); the query rows are taken in blocks whose scores [B, H, n, S_k] fit
    ``max_score_bytes``. Returns [B, H, S_q, d_v] in the dtype of ``v``.
    """
    per_row = q.shape[0] * q.shape[1] * k.shape[-2] * q.element_size()
    rows = max(1, max_score_bytes // per_row)
    k_t = k.transpose(-1, -2) * q.shape[-1] ** -0.5  # [B, H, d, S_k], scaled once
    if rows >= q.shape[-2]:
        return torch.matmul(torch.matmul(q, k_t).softmax(-1), v)
    out = q.new_empty(*q.shape[:-1], v.shape[-1], dtype=v.dtype)
    for start in range(0, q.shape[-2], rows):
        scores = torch.matmul(q[..., start:start + rows, :], k_t)  # [B, H, n, S_k]
        out[..., start:start + rows, :] = torch.matmul(scores.softmax(-1), v)
        del scores
    return out


class BlockwiseAttnProcessor:
    """A diffusers attention processor: :func:`blockwise_attention` for wide-headed self-attention.

    Takes over spatial self-attention ([B, C, H, W] input, no mask, no cross-attention, no extra
    norms: the VAE's mid-block) when the head is wider than ``min_head_dim - 1`` and the input lives
    on one of ``devices``; every other call goes to diffusers' ``AttnProcessor2_0`` unchanged.
    """

    def __init__(self, max_score_bytes: int = SCORE_BYTES, min_head_dim: int = FUSED_MAX_HEAD_DIM + 1,
                 devices: tuple[str, ...] = ("cuda",)) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.max_score_bytes = max_score_bytes
        self.min_head_dim = min_head_dim
        self.devices = devices
        self.fallback = AttnProcessor2_0()

    def handles(self, attn: torch.nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
                attention_mask: torch.Tensor | None) -> bool:
        """Whether this call is one the blockwise path computes (else diffusers' processor does)."""
        return (hidden_states.ndim == 4 and encoder_hidden_states is None and attention_mask is None
                and attn.spatial_norm is None and attn.norm_q is None and attn.norm_k is None
                and attn.inner_dim // attn.heads >= self.min_head_dim and hidden_states.device.type in self.devices)

    def __call__(self, attn: torch.nn.Module, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        if not self.handles(attn, hidden_states, encoder_hidden_states, attention_mask):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        b, c, h, w = hidden_states.shape
        x = hidden_states.flatten(2)  # [B, C, S]
        if attn.group_norm is not None:
            x = attn.group_norm(x)
        x = x.transpose(1, 2)  # [B, S, C]
        q, k, v = (proj(x).unflatten(-1, (attn.heads, -1)).transpose(1, 2) for proj in (attn.to_q, attn.to_k, attn.to_v))
        out = blockwise_attention(q, k, v, self.max_score_bytes)  # [B, heads, S, d]
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2)))  # [B, S, C]
        out = out.transpose(1, 2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def use_blockwise_attention(module: torch.nn.Module, **options) -> None:
    """Give every attention of ``module`` (a diffusers model, e.g. the VAE) a :class:`BlockwiseAttnProcessor`."""
    module.set_attn_processor(BlockwiseAttnProcessor(**options))
