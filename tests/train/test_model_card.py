"""The model card of an export: the Hub's front matter (read back by huggingface_hub and by PyYAML), the
training record, an eval table from a real `fluxsr eval --json` file, and no local paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from fluxsr_cli.cli import app
from fluxsr_cli.errors import InputError
from fluxsr_cli.model.hub import DEFAULT_BASE
from fluxsr_cli.model.tiny import add_to_hub_cache
from fluxsr_cli.train.config import DistillConfig
from fluxsr_cli.train.model_card import card_config, model_card, published_base, read_eval, validation_grid

LICENCE_LINK = "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md"


@pytest.fixture(scope="module")
def eval_json(tmp_path_factory) -> Path:
    """A result of the real `fluxsr eval --json` (PSNR and SSIM of two noisy photos, the RealSR paper row)."""
    root = tmp_path_factory.mktemp("eval")
    for name in ("gt", "pred"):
        (root / name).mkdir()
    rng = np.random.default_rng(0)
    for photo in ("astronaut", "coffee"):
        img = getattr(data, photo)()[:64, :64]
        Image.fromarray(img).save(root / "gt" / f"{photo}.png")
        noisy = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(root / "pred" / f"{photo}.png")
    out = root / "realsr.json"
    result = CliRunner().invoke(app, ["eval", str(root / "pred"), "--gt", str(root / "gt"), "--metrics", "psnr,ssim",
                                      "--dataset", "realsr", "--device", "cpu", "--json", str(out)])
    assert result.exit_code == 0, result.output
    return out


def split(card: str) -> tuple[dict, str]:
    """(front matter, body) of a card, split by hand and parsed with PyYAML."""
    assert card.startswith("---\n")
    front, body = card[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def test_card_front_matter_names_base_licence_task_and_library(eval_json):
    from huggingface_hub import ModelCard

    config = DistillConfig(data=Path("/home/someone/pairs"), output_dir=Path("/home/someone/runs/ftd"),
                           t_l=0.3, lambda_adl=0.02, lora_rank=16, lora_alpha=16.0)
    text = model_card(config, 1234, DEFAULT_BASE, [("realsr", read_eval(eval_json))],
                      "images/validation.png", "held-out pairs", repo_id="me/my-fluxsr", pairs=2400)
    front, body = split(text)
    assert front == ModelCard(text).data.to_dict()  # PyYAML and huggingface_hub read the same front matter
    assert front["base_model"] == "black-forest-labs/FLUX.1-dev"
    assert (front["license"], front["license_name"], front["license_link"]) == (
        "other", "flux-1-dev-non-commercial-license", LICENCE_LINK)
    assert front["pipeline_tag"] == "image-to-image" and front["library_name"] == "fluxsr"
    assert set(front["tags"]) == {"super-resolution", "flux", "lora", "fluxsr"}
    assert front["base_model_relation"] == "adapter"
    assert body.lstrip().startswith("# my-fluxsr")
    rows = {line.split("|")[1].strip(): line for line in body.splitlines() if line.startswith("| ")}
    assert "| 1234 |" in rows["optimizer steps"] and "| 0.3 |" in rows["T_L (flow time of the LR latent)"]
    assert "λ_ADL 0.02" in rows["loss"] and "rank-16 LoRA" in rows["weights"] and "2400" in rows["training pairs"]
    report = json.loads(eval_json.read_text())
    assert f"{report['means']['psnr']:.4g}" in rows["psnr ↑"] and "| 24.83 |" in rows["psnr ↑"]  # the paper's RealSR PSNR
    assert "| 0.7175 |" in rows["ssim ↑"]
    assert "![held-out pairs](images/validation.png)" in body
    assert "--model me/my-fluxsr" in body
    assert "/home/someone" not in text and "output_dir" not in text  # no local paths published
    toml = body.split("```toml\n", 1)[1].split("```", 1)[0]
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    settings = tomllib.loads(toml)["distill"]
    assert settings["base_model"] == DEFAULT_BASE and settings["t_l"] == 0.3 and "data" not in settings


def test_a_full_fine_tune_is_no_lora_and_an_unknown_base_is_left_out():
    text = model_card(DistillConfig(finetune="full", base_model="/data/flux"), 10, None)
    front, body = split(text)
    assert "base_model" not in front and front["base_model_relation"] == "finetune"
    assert "lora" not in front["tags"] and "transformer/" in body and "/data/flux" not in text
    assert "base_model" not in card_config(DistillConfig(base_model="/data/flux"), None)


def test_published_base_is_a_hub_id_never_a_local_path(tmp_path, tiny_base):
    snapshot = add_to_hub_cache(tmp_path / "hub", "some-org/FLUX.1-dev", tiny_base, commit="a" * 40)
    assert published_base(DEFAULT_BASE) == (DEFAULT_BASE, None)
    assert published_base(snapshot) == ("some-org/FLUX.1-dev", "a" * 40)  # a folder of the HF cache
    assert published_base(tiny_base) is None  # a plain local folder: unknown
    assert published_base(tiny_base, base_id=DEFAULT_BASE) == (DEFAULT_BASE, None)


def test_validation_grid_and_bad_eval_files(tmp_path):
    (tmp_path / "validation").mkdir()
    for step in (500, 1000, 1500):
        (tmp_path / "validation" / f"step-{step:07d}.png").write_bytes(b"png")
    assert validation_grid(tmp_path, 1200).name == "step-0001000.png"
    assert validation_grid(tmp_path, 100) is None
    (tmp_path / "x.json").write_text('{"rows": []}')
    with pytest.raises(InputError, match="not a `fluxsr eval --json` result"):
        read_eval(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("{")
    with pytest.raises(InputError, match="cannot read it as JSON"):
        read_eval(tmp_path / "y.json")


def test_push_refuses_a_checkpoint_that_names_a_local_base(tmp_path, tiny_ckpt, monkeypatch):
    import shutil

    from huggingface_hub import HfApi

    from fluxsr_cli.train.checkpoints import push_checkpoint

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was called")

    monkeypatch.setattr(HfApi, "create_repo", no_hub)
    folder = shutil.copytree(tiny_ckpt, tmp_path / "ckpt")  # its fluxsr.json names the tiny base's folder
    assert Path(json.loads((folder / "fluxsr.json").read_text())["base_model"]).is_dir()
    with pytest.raises(InputError, match="names the local base"):
        push_checkpoint(folder, "me/x")
