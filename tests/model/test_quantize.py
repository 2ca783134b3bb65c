"""Quantized transformers on the CPU: fp8 weights (torchao) end to end, the cache, the LoRA fused in
float32 before quantization, and the modes the CPU cannot run refused with what to use instead."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fluxsr_cli.cli import app
from fluxsr_cli.errors import ConfigError, ResourceError
from fluxsr_cli.model import quantize
from fluxsr_cli.model.loading import ADAPTER_NAME, apply_lora, fuse_lora_fp32, load_transformer
from fluxsr_cli.model.student import velocity
from fluxsr_cli.model.tiny import save_tiny_checkpoint
from fluxsr_cli.upscale.options import ModelOptions, UpscaleOptions
from fluxsr_cli.upscale.restore import load_upscaler

pytest.importorskip("torchao", reason="the fp8 modes need torchao (the dev extra installs it)")

# fp8 e4m3 keeps 3 mantissa bits (one scale per output row): ~1.8 % rms error per weight; through the
# tiny stack's three blocks with a strong LoRA fused in, the velocity moved 6-8 % (rms, relative) on
# two seeds. The bound is about twice that; the LoRA moves it by 73 %.
FP8_VELOCITY_BOUND = 0.12


def rms(x: torch.Tensor) -> float:
    return float(x.float().square().mean().sqrt())


@pytest.fixture(scope="module")
def strong_ckpt(tiny_base, tmp_path_factory):
    """A checkpoint whose LoRA moves the velocity a lot (B ~ N(0, 2)), so its effect can be told apart."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("strong") / "ckpt", tiny_base, seed=3, lora_std=2.0)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("FLUXSR_CACHE", str(folder))
    return folder / "transformers"


def _velocity(up, z):
    with torch.no_grad():
        return velocity(up.transformer, z, up.t_l, up.cond, dtype=up.dtype)


def test_fp8_stores_float8_and_keeps_the_loras_effect(strong_ckpt, tiny_base, cache):
    plain = load_upscaler(ModelOptions(model=str(strong_ckpt), device="cpu"))
    fp8 = load_upscaler(ModelOptions(model=str(strong_ckpt), device="cpu", quantize="fp8"))
    # every linear weight of the blocks is torchao's Float8Tensor holding float8 e4m3 data and row scales
    linears = [m for m in fp8.transformer.modules() if isinstance(m, torch.nn.Linear)]
    kinds = {type(m.weight).__name__ for m in linears}
    assert kinds == {"Float8Tensor"}, kinds
    assert {m.weight.qdata.dtype for m in linears} == {torch.float8_e4m3fn}
    stored = sum(m.weight.qdata.numel() * m.weight.qdata.element_size() for m in linears)
    full = sum(m.weight.numel() * 4 for m in linears)  # the same weights in float32 (the CPU's compute dtype)
    assert stored == full // 4
    # close to the unquantized model, and far from the base without its LoRA
    z = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    without_lora = load_transformer(tiny_base, torch.float32)
    v_plain, v_fp8 = _velocity(plain, z), _velocity(fp8, z)
    with torch.no_grad():
        v_base = velocity(without_lora, z, plain.t_l, plain.cond)
    error, effect = rms(v_fp8 - v_plain) / rms(v_plain), rms(v_base - v_plain) / rms(v_plain)
    assert error < FP8_VELOCITY_BOUND
    assert effect > 6 * error, (effect, error)


def test_the_cache_is_read_the_second_time_and_keyed_by_lora_and_base(tiny_ckpt, tiny_base, tmp_path, cache,
                                                                        monkeypatch):
    lq = np.random.default_rng(1).random((20, 16, 3), dtype=np.float32)
    options = ModelOptions(model=str(tiny_ckpt), device="cpu", quantize="fp8")
    notes: list[str] = []
    first = load_upscaler(options, notice=notes.append).upscale_array(lq)
    assert len(notes) == 1 and "building the fp8 transformer" in notes[0]
    assert [e.mode for e in quantize.list_cache(cache)] == ["fp8"]

    def refuse(*args, **kwargs):
        raise AssertionError("the cached transformer was built again")

    with monkeypatch.context() as m:  # a hit neither reads the bf16 weights nor fuses
        m.setattr(quantize, "load_transformer", refuse)
        m.setattr(quantize, "fuse_lora_fp32", refuse)
        notes.clear()
        again = load_upscaler(options, notice=notes.append).upscale_array(lq)
    assert notes == [] and again.tobytes() == first.tobytes()
    # another LoRA: a new entry
    other = save_tiny_checkpoint(tmp_path / "other", tiny_base, seed=5)
    load_upscaler(ModelOptions(model=str(other), device="cpu", quantize="fp8"))
    assert len(quantize.list_cache(cache)) == 2
    # the same LoRA on changed base weights: a new entry
    import shutil

    changed = tmp_path / "base2"
    shutil.copytree(tiny_base, changed)
    weights = next((changed / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # a new file: a new identity
    load_upscaler(ModelOptions(model=str(tiny_ckpt), base=str(changed), device="cpu", quantize="fp8"))
    entries = quantize.list_cache(cache)
    assert len(entries) == 3 and len({e.key for e in entries}) == 3
    assert {e.lora_sha256 for e in entries} == {quantize.file_sha256(tiny_ckpt / "lora.safetensors"),
                                                 quantize.file_sha256(other / "lora.safetensors")}


def test_upscale_with_fp8_through_the_cli(tiny_ckpt, tmp_path, cache, photo):
    src = tmp_path / "in.png"
    Image.fromarray(photo[100:140, 160:196]).save(src)
    runner = CliRunner()
    common = ["upscale", str(src), "--model", str(tiny_ckpt), "--device", "cpu", "--color-fix", "none"]
    plain = runner.invoke(app, [*common, "-o", str(tmp_path / "plain.png")])
    fp8 = runner.invoke(app, [*common, "-o", str(tmp_path / "fp8.png"), "--quantize", "fp8"])
    assert plain.exit_code == 0 and fp8.exit_code == 0, fp8.output
    a = np.asarray(Image.open(tmp_path / "plain.png"), dtype=np.float64)
    b = np.asarray(Image.open(tmp_path / "fp8.png"), dtype=np.float64)
    assert a.shape == b.shape == (160, 144, 3)
    # 8-bit levels: the fp8 picture is the same picture (measured: 0.7 levels apart on average)
    assert 0 < np.abs(a - b).mean() < 4.0
    info = runner.invoke(app, ["info"])
    assert info.exit_code == 0 and "quantized transformers" in info.stdout and "fp8" in info.stdout


def test_fused_lora_is_the_float32_sum(tiny_ckpt, tiny_base):
    """W + (alpha / r) B A in float32, rounded once: for bf16 weights the fused layer equals that sum."""
    transformer = load_transformer(tiny_base, torch.bfloat16)
    apply_lora(transformer, tiny_ckpt / "lora.safetensors", fuse=False)
    layer = transformer.transformer_blocks[0].attn.to_q
    w = layer.get_base_layer().weight.detach().float().clone()
    a, b = layer.lora_A[ADAPTER_NAME].weight.float(), layer.lora_B[ADAPTER_NAME].weight.float()
    scale = layer.scaling[ADAPTER_NAME]
    storage = layer.get_base_layer().weight.untyped_storage().data_ptr()
    fuse_lora_fp32(transformer, ADAPTER_NAME)
    fused = transformer.transformer_blocks[0].attn.to_q
    assert isinstance(fused, torch.nn.Linear) and not hasattr(transformer, "peft_config")
    assert torch.equal(fused.weight, (w + scale * (b @ a)).to(torch.bfloat16))
    # in place: a weight read from a mapped file is overwritten, not held twice (24 GB for FLUX.1-dev)
    assert fused.weight.untyped_storage().data_ptr() == storage


@torch.no_grad()
def test_a_lora_with_a_bias_keeps_it_when_fused():
    """peft's ``lora_bias`` (diffusers turns it on for files with ``lora_B.bias``): the fused layer equals
    the unfused LoRA layer's output, bias included."""
    from peft import LoraConfig

    from fluxsr_cli.model.architectures import TINY_TRANSFORMER, build_transformer

    transformer = build_transformer(TINY_TRANSFORMER, seed=0)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q"], lora_bias=True),
                            adapter_name=ADAPTER_NAME)
    layer = transformer.transformer_blocks[0].attn.to_q
    g = torch.Generator().manual_seed(1)
    layer.lora_B[ADAPTER_NAME].weight.copy_(torch.randn(layer.lora_B[ADAPTER_NAME].weight.shape, generator=g))
    layer.lora_B[ADAPTER_NAME].bias.copy_(torch.randn(layer.lora_B[ADAPTER_NAME].bias.shape, generator=g))
    x = torch.randn(3, layer.in_features, generator=g)
    expected = layer(x)
    fuse_lora_fp32(transformer, ADAPTER_NAME)
    torch.testing.assert_close(transformer.transformer_blocks[0].attn.to_q(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads Linux's /proc/self/maps")
def test_a_built_model_maps_none_of_the_build_files(tiny_ckpt, tiny_base, cache):
    """The fused bf16 copy is read, not mapped, when it is quantized: a few unquantized tensors (biases)
    would otherwise keep the whole deleted file mapped, in memory and on disk, while the model lives."""
    model, built = quantize.load_quantized_transformer(tiny_base, tiny_ckpt / "lora.safetensors",
                                                       "fp8", torch.float32, torch.device("cpu"))
    assert built
    maps = Path("/proc/self/maps").read_text()
    assert str(cache) not in maps, [line for line in maps.splitlines() if str(cache) in line]
    del model


class _Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def to(self, device):
        self.calls.append(f"to {device}")
        return self

    def save_pretrained(self, folder):
        self.calls.append("save")


@pytest.mark.parametrize(("mode", "expected"), [("fp8", ["to cpu", "save", "to cuda"]), ("fp8-compute",
                         ["to cpu", "save", "to cuda"]), ("nf4", ["save"])])
def test_a_torchao_entry_is_saved_from_the_cpu(mode, expected, tmp_path):
    """torchao's save copies every quantized tensor at once: on the GPU that would double the weights."""
    model = _Recorder()
    quantize._save_entry(model, tmp_path, mode, torch.device("cuda"))
    assert model.calls == expected
    cpu = _Recorder()
    quantize._save_entry(cpu, tmp_path, mode, torch.device("cpu"))
    assert cpu.calls == ["save"]


def test_modes_the_cpu_cannot_run_are_refused_with_the_alternative():
    cpu = torch.device("cpu")
    with pytest.raises(ResourceError, match="use --quantize fp8"):
        quantize.check_mode("fp8-compute", cpu)
    with pytest.raises(ResourceError, match="nf4 needs a CUDA GPU.*--quantize fp8"):
        quantize.check_mode("nf4", cpu)
    quantize.check_mode("fp8", cpu)
    with pytest.raises(ConfigError, match="--offload"):
        ModelOptions(quantize="fp8", offload="sequential")
    with pytest.raises(ConfigError, match="--quantize must be one of"):
        ModelOptions(quantize="int3")


def test_an_older_gpu_is_refused_fp8_compute(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 3090")
    with pytest.raises(ResourceError, match=r"RTX 3090 \(compute capability 8.6\).*use --quantize fp8"):
        quantize.check_mode("fp8-compute", torch.device("cuda"))


def test_a_missing_library_names_the_extra(tiny_ckpt, monkeypatch):
    real = importlib.metadata.version

    def version(name):
        if name in ("bitsandbytes", "torchao"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    with pytest.raises(ConfigError, match=r"nf4 needs bitsandbytes.*fluxsr\[quant\]"):
        quantize.check_mode("nf4", torch.device("cuda"))
    with pytest.raises(ConfigError, match=r"fp8-compute needs torchao.*fluxsr\[quant\]"):
        quantize.check_mode("fp8-compute", torch.device("cuda"))
    src = tiny_ckpt.parent / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    result = CliRunner().invoke(app, ["upscale", str(src), "-o", str(src.with_name("out.png")), "--model",
                                      str(tiny_ckpt), "--quantize", "fp8", "--device", "cpu"])
    assert result.exit_code == 2 and "needs torchao" in result.output and not src.with_name("out.png").exists()


def test_unquantized_mode_loads_as_before(tiny_ckpt):
    up = load_upscaler(ModelOptions(model=str(tiny_ckpt), device="cpu"))
    assert getattr(up.transformer, "hf_quantizer", None) is None
    assert up.upscale_array(np.zeros((8, 8, 3), np.float32), UpscaleOptions(scale=2)).shape == (16, 16, 3)


def test_a_killed_build_is_cleared_before_the_next(tiny_ckpt, tiny_base, cache):
    """A build killed half way leaves a temporary folder (tens of GB for the real model) in the cache:
    the next build of that entry removes it first."""
    import subprocess
    import sys

    from fluxsr_cli.atomic import temporary_name, this_host

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    library = f"torchao=={quantize.library_version('fp8')}"
    key = quantize.cache_key(quantize._source_id(tiny_base), quantize.file_sha256(tiny_ckpt / "lora.safetensors"),
                             "fp8", torch.float32, library)
    leftover = cache / temporary_name(key, host=this_host(), pid=dead_pid)
    (leftover / "fused").mkdir(parents=True)
    (leftover / "fused" / "diffusion_pytorch_model.safetensors").write_bytes(b"half of 24 GB")
    notes: list[str] = []
    load_upscaler(ModelOptions(model=str(tiny_ckpt), device="cpu", quantize="fp8"), notice=notes.append)
    assert not leftover.exists() and any("unfinished build" in n for n in notes)
    assert [p.name for p in cache.iterdir()] == [key]
