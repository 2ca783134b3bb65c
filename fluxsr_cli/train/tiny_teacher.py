"""A tiny random FLUX teacher: a whole ``FluxPipeline`` (CLIP + T5 + transformer + VAE) that needs no Hub.

Tests, smoke runs and the trainer's "it learns" check use it in place of FLUX.1-dev. Everything is
built offline and saved with ``save_pretrained``, so ``FluxPipeline.from_pretrained(folder)`` loads
it through the real code paths:

- CLIP tokenizer: byte-level BPE from an in-code alphabet (the 256 byte symbols, with and without
  the ``</w>`` end-of-word mark) and a few merges;
- T5 tokenizer: a sentencepiece unigram model trained in-process on synthetic prompts, saved as
  ``spiece.model`` and converted by ``T5TokenizerFast.from_pretrained``;
- text encoders: random ``CLIPTextModel`` (width = the transformer's pooled width) and
  ``T5EncoderModel`` (width = its joint attention width), in ``.eval()`` so dropout is off;
- transformer and VAE: the tiny configs of :mod:`fluxsr_cli.model.architectures`;
- scheduler: FLUX.1-dev's flow-matching Euler scheduler settings.
"""

from __future__ import annotations

import io
import random
import tempfile
from pathlib import Path

from fluxsr_cli.model.architectures import TINY_TRANSFORMER, TINY_VAE, build_transformer, build_vae

FLUX_SCHEDULER = {  # FLUX.1-dev's scheduler/scheduler_config.json
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}

WORDS = (
    "a an the photo of cat dog bird red blue green yellow tree house city street mountain river lake portrait "
    "man woman child old young sunset night morning light dark close up wide shot detailed painting small large "
    "car road forest beach sea sky cloud snow rain flower garden window door table cup book stone bridge"
).split()

CLIP_MERGES = (("t", "h"), ("th", "e</w>"), ("a", "n"), ("o", "f</w>"), ("i", "n"), ("e", "r</w>"))
CLIP_MAX_LENGTH = 77
T5_VOCAB = 64


def synthetic_prompts(n: int = 300, seed: int = 0) -> list[str]:
    """``n`` short random prompts made of :data:`WORDS` (the T5 tokenizer's training text, test prompts)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def _byte_symbols() -> list[str]:
    """The 256 printable symbols that byte-level BPE (GPT-2, CLIP) uses for the bytes 0-255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def clip_tokenizer():
    """A byte-level CLIP tokenizer built in code: every text tokenizes, no file is downloaded."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab[s] = len(vocab)
    for a, b in CLIP_MERGES:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(CLIP_MERGES), model_max_length=CLIP_MAX_LENGTH)


def t5_tokenizer(seed: int = 0):
    """A T5 tokenizer from a sentencepiece model trained here on synthetic prompts (pad 0, eos 1, unk 2)."""
    import sentencepiece as spm
    from transformers import T5TokenizerFast

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(synthetic_prompts(300, seed)), model_writer=model, vocab_size=T5_VOCAB,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        num_threads=1, minloglevel=2,
    )
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "spiece.model").write_bytes(model.getvalue())
        return T5TokenizerFast.from_pretrained(tmp, extra_ids=0, legacy=False)


def text_encoders(clip_vocab: int, t5_vocab: int, clip_ids: tuple[int, int], seed: int = 0):
    """Random tiny ``CLIPTextModel`` and ``T5EncoderModel`` sized for :data:`TINY_TRANSFORMER`, in eval mode."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    bos, eos = clip_ids
    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=clip_vocab, hidden_size=TINY_TRANSFORMER["pooled_projection_dim"], intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=CLIP_MAX_LENGTH,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
    ))
    torch.manual_seed(seed + 1)
    t5 = T5EncoderModel(T5Config(
        vocab_size=t5_vocab, d_model=TINY_TRANSFORMER["joint_attention_dim"], d_kv=8, d_ff=64, num_layers=1,
        num_heads=2, relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="gated-gelu",
        is_encoder_decoder=False, pad_token_id=0, eos_token_id=1,
    ))
    return clip.eval().requires_grad_(False), t5.eval().requires_grad_(False)


def build_tiny_pipeline(seed: int = 0):
    """A tiny random ``FluxPipeline`` on the CPU in fp32 (every component in eval mode)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    tokenizer = clip_tokenizer()
    tokenizer_2 = t5_tokenizer(seed)
    clip, t5 = text_encoders(len(tokenizer), len(tokenizer_2), (tokenizer.bos_token_id, tokenizer.eos_token_id),
                             seed=seed + 2)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
        vae=build_vae(TINY_VAE, seed=seed + 1),
        text_encoder=clip,
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=tokenizer_2,
        transformer=build_transformer(TINY_TRANSFORMER, seed=seed),
    )


def save_tiny_teacher(root: Path, seed: int = 0) -> Path:
    """Save :func:`build_tiny_pipeline` to ``root`` (diffusers layout); returns ``root``."""
    root = Path(root)
    build_tiny_pipeline(seed).save_pretrained(str(root))
    return root
