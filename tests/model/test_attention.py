"""Blockwise attention equals PyTorch's fused attention; the processor swaps in only where asked."""

from __future__ import annotations

import pytest
import torch

from fluxsr_cli.model import attention as attention_lib
from fluxsr_cli.model import placement
from fluxsr_cli.model import vae as vae_lib
from fluxsr_cli.model.architectures import TINY_TRANSFORMER, TINY_VAE, build_transformer, build_vae
from fluxsr_cli.model.attention import BlockwiseAttnProcessor, blockwise_attention, use_blockwise_attention
from fluxsr_cli.upscale import tiled_vae


@pytest.mark.parametrize("budget", [1, 7 * 37 * 4 * 2 * 3, 10**9])  # one row per block, 7 rows (uneven), all
def test_blockwise_attention_equals_sdpa(budget):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 50, 16, generator=g) * 3  # large logits: the softmax is far from uniform
    k = torch.randn(2, 3, 37, 16, generator=g)
    v = torch.randn(2, 3, 37, 24, generator=g)  # values wider than keys
    out = blockwise_attention(q, k, v, max_score_bytes=budget)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 3, 50, 24)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@torch.no_grad()  # as in the upscaler: the blockwise path leaves autograd to diffusers
def _vae_pass(vae: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = vae_lib.encode(vae, x)
    return z, vae_lib.decode(vae, z)


def test_processor_on_the_vae_gives_the_same_latents_and_pixels():
    vae = build_vae(TINY_VAE, seed=3)
    x = torch.rand(1, 3, 96, 64, generator=torch.Generator().manual_seed(1))
    z_ref, x_ref = _vae_pass(vae, x)
    calls = []
    processor = BlockwiseAttnProcessor(max_score_bytes=1024, min_head_dim=1, devices=("cpu",))
    processor.fallback = lambda *a, **k: calls.append(1)  # must not be reached: blockwise takes these calls
    vae.set_attn_processor(processor)
    z, out = _vae_pass(vae, x)
    assert calls == []
    torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, x_ref, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_processor_keeps_global_group_norm_statistics_of_tiled_vae():
    """The tiled VAE fixes every GroupNorm, the attention's own included: still the same numbers."""
    vae = build_vae(TINY_VAE, seed=3)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    stats = tiled_vae.record_group_norm(vae.encoder, lambda: vae_lib.encode(vae, x[..., :32, :]))
    with tiled_vae.fixed_group_norm(vae.encoder, stats):
        ref = vae_lib.encode(vae, x)
    use_blockwise_attention(vae, min_head_dim=1, devices=("cpu",), max_score_bytes=256)
    with tiled_vae.fixed_group_norm(vae.encoder, stats):
        out = vae_lib.encode(vae, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_default_processor_leaves_narrow_heads_and_the_cpu_to_diffusers():
    vae = build_vae(TINY_VAE, seed=3)  # 16-wide head on the CPU: not taken over
    attn = vae.encoder.mid_block.attentions[0]
    processor = BlockwiseAttnProcessor()
    h = torch.randn(1, 16, 4, 4)
    assert not processor.handles(attn, h, None, None)
    assert not BlockwiseAttnProcessor(min_head_dim=1).handles(attn, h, None, None)  # CPU only with devices=
    assert BlockwiseAttnProcessor(min_head_dim=1, devices=("cpu",)).handles(attn, h, None, None)
    assert not BlockwiseAttnProcessor(min_head_dim=1, devices=("cpu",)).handles(attn, h, None, torch.ones(1, 16, 16))
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    z_ref, x_ref = _vae_pass(vae, x)
    vae.set_attn_processor(processor)
    z, out = _vae_pass(vae, x)
    assert torch.equal(z, z_ref) and torch.equal(out, x_ref)  # the same kernel ran


def test_place_models_gives_the_vae_the_blockwise_processor():
    t, v = build_transformer(TINY_TRANSFORMER), build_vae(TINY_VAE)
    placement.place_models(t, v, torch.device("cpu"))
    kinds = {type(p).__name__ for p in v.attn_processors.values()}
    assert kinds == {"BlockwiseAttnProcessor"}
    assert all(type(p).__name__ != "BlockwiseAttnProcessor" for p in t.attn_processors.values())
    assert all(p.probabilities is attention_lib.softmax_probabilities for p in v.attn_processors.values())


def test_place_models_moves_a_quantized_transformer_that_is_not_on_the_device_yet():
    """A GGUF transformer carries ``hf_quantizer`` like torchao's and bitsandbytes' but is loaded on the CPU:
    it must be moved (the ``meta`` device stands in for the GPU), and one already there left alone."""
    t, v = build_transformer(TINY_TRANSFORMER), build_vae(TINY_VAE)
    t.hf_quantizer = object()
    placement.place_models(t, v, torch.device("meta"))
    assert {p.device.type for p in t.parameters()} == {"meta"}
    moved: list = []
    t.to = lambda *a, **k: moved.append(a)  # already on the device: not moved again
    placement.place_models(t, v, torch.device("meta"))
    assert moved == []


def test_place_models_with_compile_compiles_the_vae_softmax(monkeypatch):
    calls = _spy_on_compile(monkeypatch)
    t, v = build_transformer(TINY_TRANSFORMER), build_vae(TINY_VAE)
    placement.place_models(t, v, torch.device("cpu"), compile=True)
    assert (attention_lib.softmax_probabilities, {"dynamic": True}) in calls
    assert all(p.probabilities is not attention_lib.softmax_probabilities for p in v.attn_processors.values())


@pytest.mark.parametrize("logit_scale", [1.0, 10.0])
def test_blockwise_attention_in_bf16_keeps_float32_scores(logit_scale):
    """Peaked attention (large logits): bf16 scores would give ~2.5 % rms error; float32 scores ~0.2 %."""
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(1, 1, 512, 512, generator=g) * logit_scale).bfloat16()
    k, v = (torch.randn(1, 1, 512, 512, generator=g).bfloat16() for _ in range(2))
    exact = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
    out = blockwise_attention(q, k, v, max_score_bytes=100 * 512 * 4)
    assert out.dtype == torch.bfloat16
    error = (out.double() - exact).pow(2).mean().sqrt() / exact.pow(2).mean().sqrt()
    assert error < 4e-3


def test_blockwise_attention_half_into_float_path(monkeypatch):
    """The CUDA path (bf16 matrices multiplied straight into float32 scores, scaled after), emulated."""
    from fluxsr_cli.model import attention

    real = torch.bmm
    asked = []

    def bmm(a, b, *, out_dtype=None, **kw):  # what torch.bmm(out_dtype=float32) computes on CUDA
        asked.append(out_dtype)
        return real(a.float(), b.float()) if out_dtype is not None else real(a, b, **kw)

    monkeypatch.setattr(attention, "float32_scores_supported", lambda device_type, dtype: True)
    monkeypatch.setattr(torch, "bmm", bmm)
    g = torch.Generator().manual_seed(1)
    q = (torch.randn(1, 1, 300, 512, generator=g) * 10).bfloat16()
    k, v = (torch.randn(1, 1, 300, 512, generator=g).bfloat16() for _ in range(2))
    out = blockwise_attention(q, k, v, max_score_bytes=64 * 300 * 4)
    exact = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert torch.float32 in asked and out.dtype == torch.bfloat16
    assert (out.double() - exact).pow(2).mean().sqrt() / exact.pow(2).mean().sqrt() < 4e-3


def test_compiled_softmax_runs_compiled_inside_the_eager_block_loop():
    """``--compile``: the block loop stays eager (a graph break in the compiled decoder) and calls a
    compiled softmax, whose graphs serve every block and image size; the result is unchanged."""
    torch.compiler.reset()  # no graphs left by other tests for the same (diffusers) code
    vae = build_vae(TINY_VAE, seed=3)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    processor = BlockwiseAttnProcessor(max_score_bytes=4096, min_head_dim=1, devices=("cpu",))
    processor.probabilities = torch.compile(attention_lib.softmax_probabilities, backend=backend, dynamic=True)
    vae.set_attn_processor(processor)
    vae.decoder.compile(backend=lambda gm, ex: gm.forward, dynamic=None)
    counts = []
    with torch.no_grad():
        for side in (20, 24, 28):
            z = torch.randn(1, 16, side, side + 2, generator=torch.Generator().manual_seed(side))
            out = vae.decoder(z)
            counts.append(len(graphs))
    # compiled with dynamic sizes: one graph for every block and image size (plus at most one
    # more where a size of 1 turns up: PyTorch specialises sizes 0 and 1)
    assert 1 <= counts[0] <= counts[1] == counts[2] <= 2
    reference = build_vae(TINY_VAE, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(out, reference.decoder(z), atol=1e-5, rtol=1e-5)


def _spy_on_compile(monkeypatch) -> list:
    """Record torch.compile's calls and compile with the "eager" backend (no C++ compiler needed)."""
    real, calls = torch.compile, []

    def spy(fn=None, **kw):
        calls.append((fn, kw))
        return real(fn, **{**kw, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", spy)
    return calls


def test_compile_softmax_option_uses_torch_compile(monkeypatch):
    calls = _spy_on_compile(monkeypatch)
    plain = BlockwiseAttnProcessor()
    compiled = BlockwiseAttnProcessor(compile_softmax=True)
    assert plain.probabilities is attention_lib.softmax_probabilities
    assert calls == [(attention_lib.softmax_probabilities, {"dynamic": True})]
    scores = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(compiled.probabilities(scores, torch.float32), scores.softmax(-1))


def test_processor_leaves_autograd_to_diffusers():
    """Training's decoder runs with gradients: the blocks would keep every score, so SDPA does it."""
    vae = build_vae(TINY_VAE, seed=3)
    attn = vae.decoder.mid_block.attentions[0]
    processor = BlockwiseAttnProcessor(min_head_dim=1, devices=("cpu",))
    h = torch.randn(1, 16, 4, 4)
    assert not processor.handles(attn, h, None, None)
    with torch.no_grad():
        assert processor.handles(attn, h, None, None)


def test_blockwise_attention_keeps_float64():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 20, 8, generator=g, dtype=torch.float64) for _ in range(3))
    out = blockwise_attention(q, k, v, max_score_bytes=8 * 20 * 2 * 3)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-12, rtol=0)


def test_compiled_vae_with_blockwise_attention_reuses_its_graphs_across_sizes():
    """The block loop is not traced: a third and fourth image size compile nothing new."""
    torch.compiler.reset()  # no graphs left by other tests for the same (diffusers) code
    vae = build_vae(TINY_VAE, seed=3)
    use_blockwise_attention(vae, min_head_dim=1, devices=("cpu",), max_score_bytes=4096)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    vae.decoder.compile(backend=backend, dynamic=None)
    counts = []
    with torch.no_grad():
        for side in (20, 24, 28, 32):  # (below ~18 the CPU convolution guards on size thresholds)
            z = torch.randn(1, 16, side, side + 2, generator=torch.Generator().manual_seed(side))
            out = vae.decoder(z)
            counts.append(len(graphs))
    assert out.shape[-2:] == (32 * 8, 34 * 8)
    assert counts[2] == counts[3] == counts[1] > counts[0] > 0
