"""ADL feature capture on a tiny FLUX with LoRA: shapes, gradients, gradient checkpointing."""

from __future__ import annotations

import pytest
import torch

from fluxsr_cli.errors import ConfigError
from fluxsr_cli.model.architectures import (
    TINY_TEXT_LENGTH,
    TINY_TRANSFORMER,
    build_transformer,
    random_embeddings,
)
from fluxsr_cli.model.student import Conditioning, velocity
from fluxsr_cli.train.adl import FeatureCapture, parse_blocks
from fluxsr_cli.train.losses import adl_loss

BLOCKS = [("double", 0), ("single", 0), ("single", 1)]


def _student(seed: int = 0):
    from peft import LoraConfig

    model = build_transformer(TINY_TRANSFORMER, seed=seed)
    torch.manual_seed(seed)
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                 target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_mlp", "ff.net.2"]))
    for name, p in model.named_parameters():  # non-zero B so that the LoRA changes the features
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    return model.train()


def _inputs():
    g = torch.Generator().manual_seed(1)
    emb = random_embeddings(TINY_TRANSFORMER, TINY_TEXT_LENGTH, seed=2)
    cond = Conditioning(emb["prompt_embeds"], emb["pooled_prompt_embeds"], 1.0)
    return torch.randn(2, 16, 8, 6, generator=g), cond  # 4 x 3 = 12 image tokens


def _adl(model, checkpointing: bool):
    if checkpointing:
        model.enable_gradient_checkpointing()
    else:
        model.disable_gradient_checkpointing()
    z, cond = _inputs()
    with FeatureCapture(model, BLOCKS, text_length=TINY_TEXT_LENGTH) as cap:
        velocity(model, z, 0.25, cond)
    feats = cap.take()
    loss = adl_loss(feats)
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return feats, loss.detach(), grads


def test_captures_image_tokens_of_each_block():
    model = _student()
    feats, loss, _ = _adl(model, checkpointing=False)
    dim = TINY_TRANSFORMER["num_attention_heads"] * TINY_TRANSFORMER["attention_head_dim"]
    assert [tuple(f.shape) for f in feats] == [(2, 12, dim)] * 3  # text tokens sliced off the single blocks
    assert 0 < loss.item() < 1


def test_single_stream_slice_is_the_image_part():
    model = _student()
    z, cond = _inputs()
    full = {}
    handle = model.single_transformer_blocks[1].attn.register_forward_hook(lambda m, a, o: full.update(out=o))
    with FeatureCapture(model, [("single", 1)], text_length=TINY_TEXT_LENGTH) as cap, torch.no_grad():
        velocity(model, z, 0.25, cond)
    handle.remove()
    assert full["out"].shape[1] == TINY_TEXT_LENGTH + 12
    assert torch.equal(cap.take()[0], full["out"][:, TINY_TEXT_LENGTH:])


def test_gradients_reach_the_lora_weights_only():
    model = _student()
    _, _, grads = _adl(model, checkpointing=False)
    lora = [n for n in grads if "lora_" in n]
    assert lora and all("lora_" in n for n in grads)
    assert any(grads[n].abs().sum() > 0 for n in lora if "lora_A" in n)
    assert any(grads[n].abs().sum() > 0 for n in lora if "lora_B" in n)


def test_same_loss_and_gradients_with_gradient_checkpointing():
    plain_feats, plain_loss, plain_grads = _adl(_student(), checkpointing=False)
    ckpt_feats, ckpt_loss, ckpt_grads = _adl(_student(), checkpointing=True)
    assert len(ckpt_feats) == len(plain_feats) == 3  # the recomputation added nothing
    assert ckpt_loss.item() == pytest.approx(plain_loss.item(), rel=1e-6)
    assert plain_grads.keys() == ckpt_grads.keys()
    for name in plain_grads:
        assert torch.allclose(plain_grads[name], ckpt_grads[name], rtol=1e-4, atol=1e-7), name


def test_hooks_are_removed_and_take_empties():
    model = _student()
    z, cond = _inputs()
    cap = FeatureCapture(model, BLOCKS, text_length=TINY_TEXT_LENGTH)
    with cap, torch.no_grad():
        velocity(model, z, 0.25, cond)
    assert len(cap.take()) == 3
    with torch.no_grad():
        velocity(model, z, 0.25, cond)  # outside the context: nothing is captured
    with pytest.raises(RuntimeError, match="did not run"):
        cap.take()
    assert all(not m._forward_hooks for m in model.modules())


def test_parse_blocks():
    assert parse_blocks(["double:0", "single:-1", "single:37"], 19, 38) == [("double", 0), ("single", 37),
                                                                            ("single", 37)]
    for bad in (["double:19"], ["triple:0"], ["single"], ["single:x"]):
        with pytest.raises(ConfigError):
            parse_blocks(bad, 19, 38)
