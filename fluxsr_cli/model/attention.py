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
takes over where it helps (wide heads on CUDA, where half-precision matrices multiply straight
into float32 scores) and hands every other call to diffusers' own ``AttnProcessor2_0``. Precision:
the scores and the softmax are float32, as in the fused kernels. Speed (H200, 4096 px output, one
call): 1.49 s through the memory-efficient kernel, 0.74 s blockwise, 0.67 s blockwise with the
softmax compiled (``--compile``: one kernel reads the float32 scores once and writes bf16).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

FUSED_MAX_HEAD_DIM = 256  # flash and cuDNN attention handle heads up to this width
SCORE_BYTES = 512 * 2**20  # memory for one block's float32 scores (about 2.5 times this with the softmax)


@torch.compiler.disable  # probe the real device, eagerly, even when called from a compiled VAE
@functools.cache
def float32_scores_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch.bmm`` on ``device`` multiplies ``dtype`` matrices into float32 directly
    (``out_dtype``: PyTorch 2.8+ on CUDA for half types), i.e. at the half-precision matmul rate."""
    if dtype in (torch.float32, torch.float64):
        return True
    try:
        a = torch.ones(1, 2, 2, device=device, dtype=dtype)
        return torch.bmm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (TypeError, RuntimeError, NotImplementedError):  # no such argument, or no such kernel
        return False


def softmax_probabilities(scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One block's attention probabilities: softmax of float32 ``scores`` over the last dimension,
    cast to ``dtype``. Eagerly that is two passes over the scores (and a float32 temporary);
    ``torch.compile`` fuses them into one kernel that writes ``dtype`` directly."""
    return scores.softmax(-1).to(dtype)


@torch.compiler.disable  # a Python loop over blocks: compiled, it pinned every image size and unrolled
def blockwise_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, max_score_bytes: int = SCORE_BYTES,
                        probabilities: Callable[[torch.Tensor, torch.dtype], torch.Tensor] = softmax_probabilities,
                        ) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` for [B, H, S_q, d] queries and [B, H, S_k, d] keys and values.

    Exact (no approximation); the query rows are taken in blocks whose float32 scores [B, H, n, S_k]
    fit ``max_score_bytes``. The scores and the softmax are float32 whatever the input dtype, as in
    the fused kernels (half-precision scores lose the tails of peaked attention: with logits of
    ~10, 2.5 % rms error against 0.2 %); the probabilities are cast to the dtype of ``v`` for the
    second product by ``probabilities`` (:func:`softmax_probabilities`, or a compiled version of
    it). Returns [B, H, S_q, d_v] in the dtype of ``v``.
    """
    b, h, s_q, d = q.shape
    s_k = k.shape[-2]
    q3 = q.reshape(b * h, s_q, d)
    v3 = v.reshape(b * h, s_k, v.shape[-1])
    scale = d ** -0.5  # applied in float32: scaling half-precision keys would round every key
    work = torch.promote_types(q.dtype, torch.float32)  # the scores' dtype: float32, or float64
    half_into_float = work != q.dtype and float32_scores_supported(q.device, q.dtype)
    if half_into_float:
        k_t = k.reshape(b * h, s_k, d).transpose(1, 2)  # [BH, d, S_k]
    else:
        k_t = (k.reshape(b * h, s_k, d).to(work) * scale).transpose(1, 2)
    rows = max(1, max_score_bytes // (b * h * s_k * work.itemsize))
    out = v3.new_empty(b * h, s_q, v.shape[-1])
    for start in range(0, s_q, rows):
        block = q3[:, start:start + rows]
        if half_into_float:  # [BH, n, S_k] float32 scores
            scores = torch.bmm(block, k_t, out_dtype=torch.float32).mul_(scale)
        else:
            scores = torch.bmm(block.to(work), k_t)
        out[:, start:start + rows] = torch.bmm(probabilities(scores, v.dtype), v3)
        del scores
    return out.reshape(b, h, s_q, v.shape[-1])


class BlockwiseAttnProcessor:
    """A diffusers attention processor: :func:`blockwise_attention` for wide-headed self-attention.

    Takes over spatial self-attention ([B, C, H, W] input, no mask, no cross-attention, no extra
    norms: the VAE's mid-block) when the head is wider than ``min_head_dim - 1`` and the input lives
    on one of ``devices``; every other call goes to diffusers' ``AttnProcessor2_0`` unchanged.
    """

    def __init__(self, max_score_bytes: int = SCORE_BYTES, min_head_dim: int = FUSED_MAX_HEAD_DIM + 1,
                 devices: tuple[str, ...] = ("cuda",), compile_softmax: bool = False) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.max_score_bytes = max_score_bytes
        self.min_head_dim = min_head_dim
        self.devices = devices
        self.fallback = AttnProcessor2_0()
        # compiled on first use, with dynamic sizes (the block and the image size vary); under
        # torch.compiler.set_stance("force_eager") (the tiled VAE) it runs eagerly like the rest
        self.probabilities = (torch.compile(softmax_probabilities, dynamic=True) if compile_softmax
                              else softmax_probabilities)

    def handles(self, attn: torch.nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
                attention_mask: torch.Tensor | None) -> bool:
        """Whether this call is one the blockwise path computes (else diffusers' processor does).

        Never under autograd (training's VAE decoder): the blocks would keep every score for the
        backward pass, and the half-into-float32 product has no derivative.
        """
        return (hidden_states.ndim == 4 and encoder_hidden_states is None and attention_mask is None
                and not torch.is_grad_enabled()
                and attn.spatial_norm is None and attn.norm_q is None and attn.norm_k is None
                and attn.inner_dim // attn.heads >= self.min_head_dim and hidden_states.device.type in self.devices
                and float32_scores_supported(hidden_states.device, hidden_states.dtype))

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
        out = blockwise_attention(q, k, v, self.max_score_bytes, self.probabilities)  # [B, heads, S, d]
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2)))  # [B, S, C]
        out = out.transpose(1, 2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def use_blockwise_attention(module: torch.nn.Module, **options) -> None:
    """Give every attention of ``module`` (a diffusers model, e.g. the VAE) a :class:`BlockwiseAttnProcessor`."""
    module.set_attn_processor(BlockwiseAttnProcessor(**options))
