from __future__ import annotations

import pytest
import torch

from fluxsr_cli.model import architectures
from fluxsr_cli.model.architectures import TINY_TRANSFORMER, TINY_VAE, build_transformer, build_vae


@pytest.mark.parametrize("build, config", [(build_transformer, TINY_TRANSFORMER), (build_vae, TINY_VAE)])
def test_random_models_are_made_in_their_dtype_and_seeded(build, config):
    """bf16, frozen, eval mode, the same weights for the same seed; the default dtype restored."""
    model = build(config, dtype=torch.bfloat16, seed=5)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    again = build(config, dtype=torch.bfloat16, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True))


def test_the_default_dtype_is_restored_when_a_build_fails():
    with pytest.raises(TypeError):
        architectures._build(lambda **kw: torch.empty(1, nonsense=True), {}, torch.bfloat16, "cpu", 0)
    assert torch.get_default_dtype() == torch.float32


def test_weights_are_made_in_the_target_dtype_not_cast_from_float32():
    """A 12B transformer made in float32 first would need 48 GB for a moment."""
    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.made_as = torch.nn.Linear(2, 2).weight.dtype

    assert architectures._build(Probe, {}, torch.bfloat16, "cpu", 0).made_as == torch.bfloat16
