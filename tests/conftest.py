"""Shared fixtures: tiny random FLUX stacks saved in the real formats, real photos, a Hub cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HUB_BASE = "fluxsr-test/tiny-flux"
HUB_MODEL = "fluxsr-test/tiny-fluxsr"
HUB_COMMUNITY = "fluxsr-test/tiny-community-port"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny random FLUX base folder: ``transformer/`` + ``vae/`` (diffusers layout)."""
    from fluxsr_cli.model.tiny import save_tiny_base

    return save_tiny_base(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_base, tmp_path_factory) -> Path:
    """A fluxsr-format checkpoint (random LoRA + embeddings) whose base is ``tiny_base``."""
    from fluxsr_cli.model.tiny import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "fluxsr", tiny_base)


@pytest.fixture(scope="session")
def tiny_community(tmp_path_factory) -> Path:
    """The community FluxSR port's layout, tiny."""
    from fluxsr_cli.model.tiny import save_tiny_community

    return save_tiny_community(tmp_path_factory.mktemp("tiny") / "community", t_l=0.3)


@pytest.fixture(scope="session")
def hub_cache(tiny_base, tiny_community, tmp_path_factory) -> Path:
    """A Hugging Face cache folder holding the tiny base, a fluxsr checkpoint whose base is a repo id,
    and the community port's layout."""
    from fluxsr_cli.model.tiny import add_to_hub_cache, save_tiny_checkpoint

    cache = tmp_path_factory.mktemp("hf") / "hub"
    add_to_hub_cache(cache, HUB_BASE, tiny_base)
    ckpt = save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "hubckpt", HUB_BASE)
    add_to_hub_cache(cache, HUB_MODEL, ckpt)
    add_to_hub_cache(cache, HUB_COMMUNITY, tiny_community)
    return cache


@pytest.fixture()
def offline_hub(hub_cache, monkeypatch) -> Path:
    """Point huggingface_hub at ``hub_cache`` in offline mode for this test."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache


@pytest.fixture()
def served_hub(tiny_base, tmp_path, monkeypatch):
    """A fake Hub (``tests/fake_hub.py``) serving the tiny base as ``org/base`` and a LoRA checkpoint for
    it as ``org/ckpt``; huggingface_hub is online against it, logged out, with an empty cache."""
    from fluxsr_cli.model.tiny import save_tiny_checkpoint
    from tests.fake_hub import FakeHub

    hub = FakeHub()
    hub.add("org/base", tiny_base)
    hub.add("org/ckpt", save_tiny_checkpoint(tmp_path / "served-ckpt", "org/base"))
    with hub.serving(monkeypatch, tmp_path / "served-cache"):
        yield hub


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photo (skimage's astronaut), uint8 [512, 512, 3]."""
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def small_photo(photo) -> np.ndarray:
    """A 48x40 crop of the astronaut's face region, float32 [48, 40, 3] in [0, 1]."""
    return (photo[60:108, 180:220].astype(np.float32) / 255.0).copy()


def pytest_terminal_summary(terminalreporter) -> None:
    """Say loudly when tests that need the real LPIPS weights were skipped (an offline developer run)."""
    from tests.lpips_weights import REQUIRE_ENV, SKIP_MARK

    skipped = [r for r in terminalreporter.stats.get("skipped", []) if SKIP_MARK in str(r.longrepr)]
    if skipped:
        terminalreporter.write_sep(
            "!", f"WARNING: {len(skipped)} test(s) SKIPPED: {SKIP_MARK} (offline?); "
            f"run `python -m tests.lpips_weights` online once, CI sets {REQUIRE_ENV}=1 and fails", yellow=True, bold=True)
