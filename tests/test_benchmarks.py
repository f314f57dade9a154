"""Pieces of the benchmark scripts that can be checked without the real model."""

from __future__ import annotations

import importlib.util
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def st():
    return _load("stock_throughput")


def test_trak_basic_projector_is_a_fixed_rademacher_matrix(st):
    torch.manual_seed(0)
    d, k = 300, 250  # three blocks of 100 columns, the last one partial
    eye = torch.eye(d)
    m = st._trak_basic_projector(eye, k, seed=4)  # rows of the identity give the matrix itself
    assert m.shape == (d, k)
    assert set(m.unique().tolist()) == {-1.0, 1.0}
    x = torch.randn(5, d)
    torch.testing.assert_close(st._trak_basic_projector(x, k, seed=4), x @ m, rtol=1e-5, atol=1e-4)
    assert not torch.equal(st._trak_basic_projector(eye, k, seed=5), m)
    # timing only a prefix of the blocks computes exactly those columns
    part = st._trak_basic_projector(x, k, seed=4, max_blocks=1)
    torch.testing.assert_close(part[:, :100], (x @ m)[:, :100], rtol=1e-5, atol=1e-4)


def _fake_results():
    return {
        "_load": [10.0, 12.0],
        "ours-fp32": {"ex_per_s": [2.0, 3.0, 2.5], "peak_rss_mb": 3000.0,
                      "reps": [{"stock_call_s": 10.0}, {"stock_call_s": 9.0}, {"stock_call_s": 9.5}]},
        "floor-fp32": {"ex_per_s": [3.0, 3.0], "peak_rss_mb": 4000.0, "flops": 1e12,
                       "matmul_flop_per_s": {"float32": 1e11, "bfloat16": 4e11}},
        "bergson-fp32": {"ex_per_s": [1.0, 1.0], "peak_rss_mb": 9000.0, "cmd": "bergson build x"},
        "bergson-bf16": {"skipped": "not enough memory"},
        "ours-bf16": {"ex_per_s": [4.0], "peak_rss_mb": 2000.0, "reps": [{"stock_call_s": 5.0}]},
        "less-fp32": {"ex_per_s": [0.5], "peak_rss_mb": 2500.0, "examples": 8, "grad_s_per_example": 1.0,
                      "projection_s_per_16": 16.0, "projection_blocks_timed": "8/82"},
    }


def test_report_ratios_and_files(st, tmp_path):
    args = Namespace(max_length=256, threads=2, reps=2, batch_size=8, token_budget=4096)
    info = {"n": 64, "tokens": 100, "response_tokens": 50}
    st.report(args, info, _fake_results(), tmp_path / "res")
    payload = json.loads((tmp_path / "res.json").read_text())
    r = payload["ratios"]
    assert payload["medians"]["ours-fp32"] == 2.5
    assert r["ours/bergson fp32 (examples/s, same run)"] == pytest.approx(2.5)
    assert r["ours/bergson fp32 (peak RSS, same run)"] == pytest.approx(3000 / 9000)
    assert r["ours-fp32/less-fp32 (examples/s)"] == pytest.approx(5.0)
    assert r["ours overhead over plain fwd+bwd fp32 (time ratio − 1)"] == pytest.approx(3.0 / 2.5 - 1)
    assert r["FLOP floor fp32: examples/s at the measured matmul rate"] == pytest.approx(64 / 10.0)
    ext = [k for k in r if k.startswith("ours/bergson bf16 (examples/s) vs EXTERNAL")]
    assert len(ext) == 1 and r[ext[0]] == pytest.approx(4.0 / 1.42)
    md = (tmp_path / "res.md").read_text()
    assert "NOT RUN: not enough memory" in md and "bergson build x" in md
    assert not list(tmp_path.glob("*.tmp"))


def test_fidelity_cosine_matches_definition():
    pf = _load("projection_fidelity")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 30)), rng.normal(size=(3, 30))
    ref = np.array([[x @ y / np.linalg.norm(x) / np.linalg.norm(y) for y in b] for x in a])
    np.testing.assert_allclose(pf.cosine(a, b), ref, rtol=1e-12)


def test_distill_quality_scores_a_block_disjoint_from_training_and_selection(tmp_path, tiny_model_dir):
    """benchmarks/distill_quality.py: the reported block is carved out before distill sees the labels, so it is
    disjoint from both the training split and distill's epoch-picking validation block; the reported numbers
    are the trained encoder's on exactly that block."""
    from influcoder import InfluenceEncoder
    from influcoder import metrics as M
    from influcoder.labels import load_labels, meta_path
    from influcoder.records import read_records
    from influcoder.stock import StockConfig, stock

    from conftest import SAMPLE_ROWS
    from test_encoder import make_tiny_bert_dir

    rows = SAMPLE_ROWS + [{"id": f"x{i}", "prompt": f"Tell me fact {i} about {w}.", "response": f"{w} fact {i}."}
                          for i, w in enumerate(["rivers", "stars", "bread", "trains", "owls", "glass", "maps", "salt",
                                                 "rain", "cats"])]
    pf = tmp_path / "pool.jsonl"
    pf.write_text("".join(json.dumps(r) + "\n" for r in rows))
    qf = tmp_path / "q.jsonl"
    qf.write_text("".join(json.dumps({"id": f"q{i}", "prompt": r["prompt"][::-1], "response": r["response"]}) + "\n"
                          for i, r in enumerate(rows[:10])))
    for side, f in (("pool", pf), ("q", qf)):
        stock(StockConfig(model=str(tiny_model_dir), data=str(f), out=str(tmp_path / f"s_{side}"), preset="prompt-response",
                          projection="none", lora_rank=2, max_length=48), progress=False)
    bert = make_tiny_bert_dir(tmp_path / "bert")
    dq = _load("distill_quality")
    out_json = tmp_path / "dq.json"
    assert dq.main(["--pool-data", str(pf), "--query-data", str(qf), "--pool-store", str(tmp_path / "s_pool"),
                    "--query-store", str(tmp_path / "s_q"), "--work", str(tmp_path / "w"), "--encoder", str(bert),
                    "--seeds", "0,1", "--epochs", "1", "--test-pool", "6", "--test-queries", "3", "--val-pool", "4",
                    "--val-queries", "2", "--max-length", "32", "--lr", "1e-3", "--out-json", str(out_json),
                    "--out-md", str(tmp_path / "dq.md")]) == 0
    res = json.loads(out_json.read_text())
    full = load_labels(tmp_path / "w" / "labels.npy")
    recs = {r.id: r for r in read_records(pf)[0]}
    qrecs = {r.id: r for r in read_records(qf)[0]}
    for seed in ("0", "1"):
        (tl,) = (tmp_path / "w").glob(f"labels-train-seed{seed}-*.npy")
        meta = json.loads(meta_path(tl).read_text())
        test_p, test_q = meta["held_out_test_block"]["pool_ids"], meta["held_out_test_block"]["query_ids"]
        assert len(test_p) == 6 and len(test_q) == 3
        split = json.loads((tmp_path / "w" / f"enc-seed{seed}" / "split.json").read_text())
        assert not set(test_p) & (set(split["train_pool_ids"]) | set(split["val_pool_ids"]) | set(meta["pool_ids"]))
        assert not set(test_q) & (set(split["train_query_ids"]) | set(split["val_query_ids"]) | set(meta["query_ids"]))
        enc = InfluenceEncoder.from_pretrained(tmp_path / "w" / f"enc-seed{seed}")
        pred = enc.encode([recs[i] for i in test_p]) @ enc.encode([qrecs[j] for j in test_q], side="query").T
        true = np.asarray(full.matrix)[np.ix_([full.pool_ids.index(i) for i in test_p],
                                               [full.query_ids.index(j) for j in test_q])]
        got = res["seeds"][seed]["methods"]["trained_encoder"]["per_anchor_spearman"]
        assert got == pytest.approx(M.per_anchor_spearman(pred, true), abs=1e-5)
        assert res["seeds"][seed]["test_block"]["n_pool"] == 6
    assert "disjoint from training and from the validation block" in (tmp_path / "dq.md").read_text()
