"""Teacher pairs on a tiny random FLUX pipeline (CLIP + T5 with offline tokenizers) on the CPU."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fluxsr_cli.configs import load_config
from fluxsr_cli.errors import ConfigError, InputError
from fluxsr_cli.train.dataset import item_names
from fluxsr_cli.train.pairs import PairsConfig, derive_seed, generate_pairs, read_prompts

MANIFEST_KEYS = {"index", "seed", "prompt", "latents", "hq", "lq", "height", "width", "scale", "teacher",
                 "degradation"}
SIZE = 32  # px; latents are [16, 4, 4]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    from fluxsr_cli.train.tiny_teacher import save_tiny_teacher

    return save_tiny_teacher(tmp_path_factory.mktemp("teacher") / "tiny-flux")


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    from fluxsr_cli.train.tiny_teacher import synthetic_prompts

    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(synthetic_prompts(4, seed=7)) + "\n\n")  # 4 prompts for 6 items: they cycle
    return path


@pytest.fixture(scope="module")
def config(teacher, prompts_file) -> PairsConfig:
    # output is relative: runs in different folders then write byte-identical pairs.toml files
    return PairsConfig(teacher=str(teacher), prompts=prompts_file, num_pairs=6, resolution=SIZE, steps=2,
                       guidance=3.5, seed=11, output=Path("data"), max_sequence_length=8)


def run_in(folder: Path, config: PairsConfig, monkeypatch, **kwargs):
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(folder)
    try:
        return generate_pairs(config, **kwargs)
    finally:
        monkeypatch.undo()


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")}


@pytest.fixture(scope="module")
def full_run(config, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("full")
    summary = run_in(folder, config, mp)
    return folder / "data", summary


def test_six_pairs_make_a_valid_data_set(full_run, prompts_file, teacher):
    from fluxsr_cli.train.dataset import PairDataset, load_embeddings, read_manifest

    root, summary = full_run
    assert (summary.generated, summary.skipped, summary.in_manifest) == (6, 0, 6)
    records = read_manifest(root)
    assert [r["index"] for r in records] == list(range(6))
    prompts = read_prompts(prompts_file)
    for r in records:
        assert set(r) == MANIFEST_KEYS
        assert r["seed"] == derive_seed(11, r["index"])
        assert r["prompt"] == prompts[r["index"] % 4]
        assert {k: r[k] for k in ("latents", "hq", "lq")} == item_names(r["index"])
        assert (r["height"], r["width"], r["scale"]) == (SIZE, SIZE, 4)
        assert r["teacher"] == {"model": str(teacher), "revision": None, "steps": 2, "guidance": 3.5, "dtype": "fp32",
                                "quantize": "none"}
        assert {"stage1", "stage2", "final"} <= set(r["degradation"])
    assert len({r["seed"] for r in records}) == 6

    data = PairDataset(root, lq=True)
    assert len(data) == 6
    for k in range(6):
        item = data[k]
        assert item["index"] == k
        for key in ("eps", "z_0", "z_l"):
            assert item[key].shape == (16, SIZE // 8, SIZE // 8) and item[key].dtype == torch.float32
            assert torch.isfinite(item[key]).all()
        assert item["hq"].shape == (3, SIZE, SIZE) and item["hq"].dtype == torch.float32
        assert 0.0 <= item["hq"].min() and item["hq"].max() <= 1.0
        assert item["lq"].shape == (3, SIZE // 4, SIZE // 4)
        assert not torch.equal(item["eps"], item["z_0"]) and not torch.equal(item["z_0"], item["z_l"])
    assert not torch.equal(data[0]["eps"], data[1]["eps"])
    emb = load_embeddings(root)
    assert emb["prompt_embeds"].shape == (1, 8, 32) and emb["pooled_prompt_embeds"].shape == (1, 16)
    assert emb["prompt_embeds"].dtype == torch.float32
    saved = load_config(PairsConfig, root / "pairs.toml", "pairs")
    assert replace(saved, output=Path("data")) == saved and saved.steps == 2 and saved.seed == 11


def test_z0_regenerates_from_stored_eps_and_seed(full_run, teacher, config):
    """The stored eps is the seed's noise; the teacher re-run from it gives the stored z_0 exactly; the
    pipeline's own decode of that sample matches D(z_0) (same latent convention); z_L = E(up(lq.png))."""
    from diffusers import FluxPipeline

    from fluxsr_cli.model import vae as vae_lib
    from fluxsr_cli.model.latents import pack
    from fluxsr_cli.train.dataset import PairDataset, load_image, read_manifest
    from fluxsr_cli.train.pairs import draw_eps, encode_prompts, teacher_latent
    from fluxsr_cli.upscale.bicubic import bicubic_upsample

    root, _ = full_run
    pipe = FluxPipeline.from_pretrained(str(teacher))
    pipe.set_progress_bar_config(disable=True)
    data = PairDataset(root)
    for record in read_manifest(root)[:2]:
        item = data[record["index"]]
        eps = draw_eps(torch.Generator().manual_seed(record["seed"]), (1, 16, 4, 4), torch.float32)
        assert torch.equal(eps[0], item["eps"])
        embeds, pooled = encode_prompts(pipe, [record["prompt"]], config.max_sequence_length)[record["prompt"]]
        z_0 = teacher_latent(pipe, eps, embeds, pooled, steps=2, guidance=3.5)
        assert torch.equal(z_0[0], item["z_0"])
        with torch.no_grad():
            image = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=SIZE, width=SIZE,
                         num_inference_steps=2, guidance_scale=3.5, latents=pack(eps), output_type="pt").images
            x_0 = vae_lib.decode(pipe.vae, z_0)
            assert torch.allclose(image, x_0, atol=1e-5)
            assert torch.allclose((x_0[0] * 255).round() / 255, item["hq"], atol=1e-6)
            lq = load_image(root / record["lq"])[None]
            z_l = vae_lib.encode(pipe.vae, bicubic_upsample(lq, 4))
        assert torch.allclose(z_l[0], item["z_l"], atol=1e-6)


def test_interrupted_run_resumes_to_identical_files(full_run, config, tmp_path, monkeypatch):
    def stop_after_three(stage: str, done: int, total: int) -> None:
        if stage == "pairs" and done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_in(tmp_path, config, monkeypatch, progress=stop_after_three)
    root = tmp_path / "data"
    assert not (root / "manifest.jsonl").exists()
    assert len(list((root / "items").glob("*.safetensors"))) == 3
    part = root / "parts" / "manifest-00000.jsonl"
    with part.open("a") as f:  # a kill in the middle of the next line
        f.write('{"index": 3, "seed": 12')
    (root / "hq" / "000003.png").write_bytes(b"half a png")  # a non-atomic writer would leave this
    summary = run_in(tmp_path, config, monkeypatch)
    assert (summary.skipped, summary.generated, summary.in_manifest) == (3, 3, 6)
    assert hashes(root) == hashes(full_run[0])
    again = run_in(tmp_path, config, monkeypatch)  # nothing left: no model is loaded, files unchanged
    assert (again.skipped, again.generated) == (6, 0)
    assert hashes(root) == hashes(full_run[0])


def test_two_ranks_split_the_items(full_run, config, tmp_path, monkeypatch):
    first = run_in(tmp_path, config, monkeypatch, rank=0, world_size=2)
    root = tmp_path / "data"
    assert (first.assigned, first.generated, first.in_manifest) == (3, 3, 3)
    second = run_in(tmp_path, config, monkeypatch, rank=1, world_size=2)
    assert (second.assigned, second.generated, second.in_manifest) == (3, 3, 6)
    parts = [[json.loads(line)["index"] for line in (root / "parts" / f"manifest-{r:05d}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    assert parts == [[0, 2, 4], [1, 3, 5]]
    assert not set(parts[0]) & set(parts[1]) and set(parts[0]) | set(parts[1]) == set(range(6))
    single, split = hashes(full_run[0]), hashes(root)
    for name in split.keys() - {"parts/manifest-00000.jsonl", "parts/manifest-00001.jsonl"}:
        assert split[name] == single[name], name  # every item is independent of the split


@pytest.mark.parametrize(("setting", "value", "words"), [
    ("resolution", "1000", "multiple of 16"),
    ("steps", "0", "steps = 0"),
    ("num_pairs", "0", "num_pairs"),
    ("dtype", "fp8", "dtype"),
    ("offload", "cpu", "offload"),
    ("guidance", "-1", "guidance"),
])
def test_bad_values_fail_in_one_line(tmp_path, setting, value, words):
    toml = tmp_path / "ftd.toml"
    toml.write_text('[pairs]\nprompts = "p.txt"\n')
    with pytest.raises(ConfigError) as e:
        load_config(PairsConfig, toml, "pairs", [f"{setting}={value}"])
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.fixture()
def no_models(monkeypatch):
    """Any attempt to resolve or load a model fails the test."""
    import diffusers

    from fluxsr_cli.model import hub, loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(hub, "resolve", refuse)
    monkeypatch.setattr(loading, "load_transformer", refuse)
    monkeypatch.setattr(diffusers.FluxPipeline, "from_pretrained", refuse)


def test_input_errors_come_before_any_model(config, full_run, tmp_path, no_models, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x3 = tmp_path / "x3.toml"
    x3.write_text("[degrade]\nscale = 3\n")
    cases = [
        (replace(config, prompts=tmp_path / "missing.txt"), ConfigError, "not found"),
        (replace(config, degradation=x3), ConfigError, "multiple of the degradation scale 3"),
        (replace(config, output=full_run[0], steps=3), ConfigError, "steps = 2"),  # resume with other settings
        (replace(config, output=full_run[0], seed=12), ConfigError, "seed = 11"),
    ]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    cases.append((replace(config, output=tmp_path / "busy"), InputError, "not empty"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    cases.append((replace(config, prompts=empty), ConfigError, "no prompts"))
    for cfg, error, words in cases:
        with pytest.raises(error) as e:
            generate_pairs(cfg)
        assert words in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_prompt_files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(["a cat", {"prompt": "a dog"}, "  "]))
    assert read_prompts(tmp_path / "a.json") == ["a cat", "a dog"]
    (tmp_path / "b.json").write_text(json.dumps({"prompts": ["x"]}))
    assert read_prompts(tmp_path / "b.json") == ["x"]
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_prompts(tmp_path / "c.json")
    (tmp_path / "d.txt").write_text("one\n\n two \n")
    assert read_prompts(tmp_path / "d.txt") == ["one", "two"]


def test_seeds_are_a_pure_function_of_root_and_index():
    seeds = [derive_seed(0, i) for i in range(1000)]
    assert len(set(seeds)) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert seeds[:3] == [derive_seed(0, i) for i in range(3)] and derive_seed(1, 0) != seeds[0]


def test_damaged_manifest_is_a_one_line_error(full_run, tmp_path):
    from fluxsr_cli.train.dataset import PairDataset, read_manifest

    with pytest.raises(InputError, match="not a finished pairs data set"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.jsonl").write_text('{"index": 0}\n{"index": 1, "sha\n')
    with pytest.raises(InputError, match="line 2"):
        PairDataset(tmp_path)
    lq = np.asarray(Image.open(full_run[0] / "lq" / "000000.png"))
    assert lq.shape == (SIZE // 4, SIZE // 4, 3) and lq.dtype == np.uint8


def test_a_data_set_from_before_quantize_resumes_and_another_quantization_is_refused(full_run, config, tmp_path):
    """pairs.toml files written before the quantize setting existed read as quantize = "none"."""
    import shutil

    from fluxsr_cli.train.pairs import check_inputs

    old = tmp_path / "old"
    shutil.copytree(full_run[0], old)
    record = old / "pairs.toml"
    record.write_text("".join(line for line in record.read_text().splitlines(keepends=True)
                              if not line.startswith("quantize")))
    assert check_inputs(replace(config, output=old))[0]
    with pytest.raises(ConfigError, match="made with quantize = 'none', the config says 'fp8'"):
        check_inputs(replace(config, output=old, quantize="fp8"))


def test_resume_refuses_another_dtype_before_loading(full_run, config, monkeypatch):
    import diffusers

    from fluxsr_cli.model import loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the dtype was checked")

    monkeypatch.setattr(loading, "load_transformer", refuse)
    monkeypatch.setattr(diffusers.FluxPipeline, "from_pretrained", refuse)
    with pytest.raises(ConfigError, match="made in fp32 but this run would use fp16"):
        generate_pairs(replace(config, output=full_run[0], num_pairs=7, dtype="fp16"))
    assert not (full_run[0] / "items" / "000006.safetensors").exists()
    assert load_config(PairsConfig, full_run[0] / "pairs.toml", "pairs").num_pairs == 6  # the record is untouched


def test_the_shipped_config_and_prompts_load(monkeypatch):
    """`fluxsr pairs --config configs/ftd.toml` from the repository root finds its prompts file."""
    from fluxsr_cli.train.config import load_distill_config

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    pairs = load_config(PairsConfig, Path("configs/ftd.toml"), "pairs")
    prompts = read_prompts(pairs.prompts)
    assert len(prompts) == 40 and len(set(prompts)) == 40 and all("photo" in p for p in prompts)
    assert load_distill_config(Path("configs/ftd.toml")).lora_rank == 64


def test_the_teacher_is_refused_on_a_machine_without_gpu_before_any_download(config, tmp_path, monkeypatch):
    import huggingface_hub

    from fluxsr_cli.errors import ResourceError
    from fluxsr_cli.model.hub import DEFAULT_BASE

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: calls.append(a) or 1 / 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ResourceError, match="FLUX.1-dev: the 11.8B-parameter FLUX transformer needs a CUDA GPU"):
        generate_pairs(replace(config, teacher=DEFAULT_BASE, output=tmp_path / "pairs"))
    assert calls == []  # the packaged FLUX.1-dev config decided: nothing was fetched
