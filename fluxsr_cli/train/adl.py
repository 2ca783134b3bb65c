"""Image-token features of chosen FLUX blocks, captured by forward hooks, for the ADL loss.

Double-stream blocks (``transformer_blocks[i]``): their ``attn`` returns ``(image, text)`` outputs;
the image part is taken. Single-stream blocks (``single_transformer_blocks[i]``): their ``attn``
runs over the concatenated ``[text, image]`` tokens; the image part is the slice after the first
``text_length`` tokens.

Gradient checkpointing runs each block's forward a second time during backward, and hooks fire
again then. The capture therefore keeps no growing state: each hook *overwrites* one slot per
block, the hooks exist only inside the ``with`` block (normally one forward pass), and
:meth:`FeatureCapture.take` hands the features out once and empties the slots.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fluxsr_cli.errors import ConfigError


def parse_blocks(spec: Sequence[str], num_double: int, num_single: int) -> list[tuple[str, int]]:
    """``["double:0", "single:37", "single:-1"]`` -> ``[("double", 0), ("single", 37), ("single", 37)]``."""
    blocks = []
    for item in spec:
        kind, _, index = str(item).partition(":")
        counts = {"double": num_double, "single": num_single}
        if kind not in counts or not index.lstrip("-").isdigit():
            raise ConfigError(f"adl_blocks: {item!r} is not 'double:I' or 'single:I'")
        i = int(index)
        n = counts[kind]
        if not -n <= i < n:
            raise ConfigError(f"adl_blocks: {item!r} is out of range; the model has {n} {kind}-stream blocks")
        blocks.append((kind, i % n))
    return blocks


class FeatureCapture:
    """Forward hooks on the ``attn`` of chosen blocks; a context manager.

        with FeatureCapture(transformer, [("double", 0), ("single", 1)], text_length=L) as cap:
            v = velocity(transformer, z_l, t_l, cond)
        feats = cap.take()  # [B, N_img, C] per block, in the order given; graph attached
    """

    def __init__(self, transformer: torch.nn.Module, blocks: Sequence[tuple[str, int]], text_length: int) -> None:
        model = _unwrap(transformer)
        self.blocks = list(blocks)
        self.text_length = text_length
        self._modules = [
            (model.transformer_blocks if kind == "double" else model.single_transformer_blocks)[i].attn
            for kind, i in self.blocks
        ]
        self._slots: list[torch.Tensor | None] = [None] * len(self.blocks)
        self._handles: list[Any] = []

    def _hook(self, slot: int, kind: str):
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            if kind == "double":
                image = output[0]  # (image [B, N, C], text [B, L, C])
            else:
                image = output[:, self.text_length:]  # [B, L + N, C] -> [B, N, C]
            self._slots[slot] = image  # overwrite, never append: a recomputation replaces, not adds

        return hook

    def __enter__(self) -> FeatureCapture:
        self._slots = [None] * len(self.blocks)
        for slot, ((kind, _), module) in enumerate(zip(self.blocks, self._modules, strict=True)):
            self._handles.append(module.register_forward_hook(self._hook(slot, kind)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def take(self) -> list[torch.Tensor]:
        """The captured features (one per block, in order), emptied afterwards."""
        missing = [f"{k}:{i}" for (k, i), s in zip(self.blocks, self._slots, strict=True) if s is None]
        if missing:
            raise RuntimeError(f"ADL: blocks {', '.join(missing)} did not run in the captured forward pass")
        feats = [s for s in self._slots if s is not None]
        self._slots = [None] * len(self.blocks)
        return feats


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The FLUX transformer inside a DDP/compile wrapper (the blocks live on it)."""
    while not hasattr(model, "transformer_blocks") and hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)
