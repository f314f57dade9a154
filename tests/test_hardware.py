"""Device and precision `auto` (influcoder.core.hardware): both outcomes with the CPU's answer faked, the store /
encoder / embeddings of `auto` equal to the explicit choice, and the resolved precision recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from influcoder.core import hardware
from influcoder.core.errors import UserError


def test_auto_precision_follows_the_cpu(monkeypatch):
    hardware.cpu_bf16_probe.cache_clear()
    monkeypatch.setenv(hardware.CPU_BF16_ENV, "native")
    assert hardware.resolve_precision("auto", "cpu") == "bfloat16"
    hardware.cpu_bf16_probe.cache_clear()
    monkeypatch.setenv(hardware.CPU_BF16_ENV, "emulated")
    assert hardware.resolve_precision("auto", "cpu") == "float32"
    for explicit in ("float32", "bfloat16"):  # an explicit choice is kept whatever the CPU
        assert hardware.resolve_precision(explicit, "cpu") == explicit
    with pytest.raises(UserError, match="precision must be one of auto, float32, bfloat16"):
        hardware.resolve_precision("fp16", "cpu")
    hardware.cpu_bf16_probe.cache_clear()
    monkeypatch.setenv(hardware.CPU_BF16_ENV, "maybe")
    with pytest.raises(UserError, match="INFLUCODER_CPU_BF16 must be native or emulated"):
        hardware.resolve_precision("auto", "cpu")
    hardware.cpu_bf16_probe.cache_clear()


def test_the_probe_measures_both_precisions(monkeypatch):
    """Without the override the answer is measured: both rates are real numbers and `native` is their comparison."""
    monkeypatch.delenv(hardware.CPU_BF16_ENV, raising=False)
    hardware.cpu_bf16_probe.cache_clear()
    try:
        p = hardware.cpu_bf16_probe()
    finally:
        hardware.cpu_bf16_probe.cache_clear()
    assert p["float32_gflops"] > 0 and p["bfloat16_gflops"] > 0
    assert p["native"] == (p["bfloat16_gflops"] >= p["float32_gflops"])
    assert p["capability"] == torch.backends.cpu.get_cpu_capability()


def test_auto_device_and_cuda_requests(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.resolve_device("auto") == "cpu" and hardware.resolve_device("cpu") == "cpu"
    with pytest.raises(UserError, match="torch sees no CUDA GPU"):
        hardware.resolve_device("cuda")
    with pytest.raises(UserError, match="device must be auto, cpu, cuda or cuda:N"):
        hardware.resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hardware.resolve_device("auto") == "cuda" and hardware.resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hardware.resolve_precision("auto", "cuda") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert hardware.resolve_precision("auto", "cuda:0") == "float32"


def test_cpu_info_names_the_cpu():
    info = hardware.cpu_info()
    assert info["cpu_model"] and info["capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["torch_threads"] >= 1 and "bf16_native" in info


@pytest.mark.parametrize("outcome, want", [("native", "bfloat16"), ("emulated", "float32")])
def test_stock_auto_equals_the_explicit_choice(outcome, want, monkeypatch, tiny_model_dir, sample_jsonl, tmp_path):
    from influcoder.teacher.stock import StockConfig, stock
    from influcoder.teacher.store import open_store

    monkeypatch.setenv(hardware.CPU_BF16_ENV, outcome)
    hardware.cpu_bf16_probe.cache_clear()
    common = dict(model=str(tiny_model_dir), data=str(sample_jsonl), proj_dim=32, shard_size=4, batch_size=3, device="cpu")
    auto = open_store(stock(StockConfig(out=str(tmp_path / "auto"), **common), progress=False))
    expl = open_store(stock(StockConfig(out=str(tmp_path / "expl"), dtype=want, **common), progress=False))
    other = open_store(stock(StockConfig(out=str(tmp_path / "other"), dtype={"float32": "bfloat16"}.get(want, "float32"),
                                         **common), progress=False))
    hardware.cpu_bf16_probe.cache_clear()
    assert auto.manifest["dtype"] == want == expl.manifest["dtype"]
    np.testing.assert_array_equal(np.asarray(auto.matrix), np.asarray(expl.matrix))
    assert not np.array_equal(np.asarray(auto.matrix), np.asarray(other.matrix))  # the precision does matter
    # the store remembers what it was made with: resuming it where auto resolves otherwise is refused
    flipped = {"native": "emulated", "emulated": "native"}[outcome]
    monkeypatch.setenv(hardware.CPU_BF16_ENV, flipped)
    with pytest.raises(UserError, match="differs in: dtype"):
        stock(StockConfig(out=str(tmp_path / "auto"), **common), progress=False)
    hardware.cpu_bf16_probe.cache_clear()


@pytest.mark.parametrize("outcome, want", [("native", "bfloat16"), ("emulated", "float32")])
def test_train_and_embed_auto_equal_the_explicit_choice(outcome, want, monkeypatch, tmp_path):
    from test_distill import _cfg, _write_problem, make_tiny_bert_dir

    from influcoder.student.distill import train
    from influcoder.search.embed import EmbedConfig, embed_file, open_embeddings

    enc_dir = make_tiny_bert_dir(tmp_path / "bert")
    pf, qf, lf = _write_problem(tmp_path, n_pool=24, n_query=8)
    monkeypatch.setenv(hardware.CPU_BF16_ENV, outcome)
    hardware.cpu_bf16_probe.cache_clear()
    try:
        a = train(_cfg(tmp_path, enc_dir, pf, qf, lf, "auto", epochs=1, freeze_layers=1, device="auto"), progress=False)
        b = train(_cfg(tmp_path, enc_dir, pf, qf, lf, "expl", epochs=1, freeze_layers=1, precision=want), progress=False)
        ea = open_embeddings(embed_file(EmbedConfig(str(a), str(pf), str(tmp_path / "ea"), dtype="float32"), progress=False))
        eb = open_embeddings(embed_file(EmbedConfig(str(a), str(pf), str(tmp_path / "eb"), dtype="float32",
                                                    precision=want), progress=False))
    finally:
        hardware.cpu_bf16_probe.cache_clear()
    ma, mb = (json.loads((d / "influcoder_encoder.json").read_text()) for d in (a, b))
    assert ma["precision"] == want == mb["precision"] and ma["device"] == "cpu"
    assert ma["training_config"]["precision"] == "auto"
    from safetensors.numpy import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert ea.manifest["precision"] == want == eb.manifest["precision"]
    np.testing.assert_array_equal(ea.matrix(), eb.matrix())


def test_bf16_embedding_is_close_to_float32_and_not_equal(tmp_path):
    """The bf16 forward is a real change (not silently float32) and stays close to float32."""
    from test_embed import make_tiny_encoder

    from influcoder.student.loading import load_encoder

    d = make_tiny_encoder(tmp_path / "enc")
    texts = ["the rain on the tin roof", "a blue cat", "2 3 5 7"]
    e32 = load_encoder(d, precision="float32").encode(texts)
    e16 = load_encoder(d, precision="bfloat16").encode(texts)
    assert not np.array_equal(e32, e16)
    assert np.abs(e32 - e16).max() < 5e-2
