"""Pieces of the benchmark scripts that can be checked without the real model."""

from __future__ import annotations

import importlib.util
import json
import os
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


def _run(wall, cpu, rss, loop, **kw):
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_tree_mb": rss, "peak_rss_largest_process_mb": rss,
            "loop_ex_per_s": loop, "load_1min_before": 3.0, "load_1min_after": 4.0, "other_processes_cpu_cores": 0.5, **kw}


def _fake_runs():
    less = dict(examples=8, gradient_dim=1000, grad_s_per_example=0.5, dense_projection_s_per_example=10.0,
                countsketch_projection_s_per_example=0.01, dense_projection_blocks_timed="8/82")
    return {"ours": [_run(40.0, 70.0, 2000.0, 2.0, rep=1), _run(44.0, 72.0, 2100.0, 1.0, rep=2)],
            "bergson": [_run(80.0, 150.0, 8000.0, 1.0, rep=1), _run(84.0, 152.0, 8200.0, 0.5, rep=2)],
            "floor": [_run(30.0, 50.0, 1500.0, 3.0, rep=1), _run(31.0, 50.0, 1500.0, 3.0, rep=2)],
            "less": [_run(60.0, 100.0, 2500.0, None, rep=1, **less), {"error": "exit 1: boom", "rep": 2}]}


def test_summary_ratios_are_medians_of_the_same_run(st):
    med, r = st.summarise({"n": 32}, _fake_runs())
    assert med["ours"]["wall_s"] == 42.0 and med["bergson"]["peak_rss_tree_mb"] == 8100.0
    assert r["end to end: bergson wall / ours wall (speed-up)"] == pytest.approx(82.0 / 42.0)
    assert r["end to end: ours peak RSS / bergson peak RSS (process tree)"] == pytest.approx(2050.0 / 8100.0)
    assert r["end to end: ours CPU s / bergson CPU s"] == pytest.approx(71.0 / 151.0)
    assert r["in-process: ours loop / bergson collection (examples/s)"] == pytest.approx(1.5 / 0.75)
    assert r["in-process: ours time / floor time − 1 (overhead over frozen-weight fwd+bwd)"] == pytest.approx(3.0 / 1.5 - 1)
    ours_s = 1 / 1.5  # the failed LESS rep is left out, the finished one counts
    assert r["in-process: LESS-style gradient pass alone / ours (time per example)"] == pytest.approx(0.5 / ours_s)
    assert r["in-process: LESS-style + CountSketch / ours (time per example)"] == pytest.approx(0.51 / ours_s)
    assert r["in-process: LESS-style + TRAK dense projector / ours (time per example)"] == pytest.approx(10.5 / ours_s)


def test_report_writes_what_was_recorded(st, tmp_path):
    from argparse import Namespace

    args = Namespace(max_length=256, threads=2, reps=2, batch_size=8, token_budget=1024, dtype="bfloat16")
    info = {"n": 32, "tokens": 100, "response_tokens": 50, "skipped_longer_than_max_length": 3}
    st.report(args, info, _fake_runs(), "python benchmarks/stock_throughput.py --n 32", tmp_path / "res")
    payload = json.loads((tmp_path / "res.json").read_text())
    assert payload["command"] == "python benchmarks/stock_throughput.py --n 32"
    assert payload["runs"]["less"][1]["error"] == "exit 1: boom"
    md = (tmp_path / "res.md").read_text()
    assert "`python benchmarks/stock_throughput.py --n 32`" in md
    assert "load average 3.0–4.0; other processes used 0.50–0.50 cores" in md  # from the runs, not typed in
    assert "| ours | 42.0 | 40.0, 44.0 |" in md and "3.0→4.0, 3.0→4.0" in md
    assert "CountSketch projection 0.0100" in md and "8/82" in md
    assert not list(tmp_path.glob("*.tmp"))


def test_bergson_progress_bar_elapsed_is_parsed(st):
    log = ("Collecting gradients:   0%|          | 0/2 [00:00<?, ?it/s]\rCollecting gradients:  50%|#  | 1/2 "
           "[01:58<01:58, 118.51s/it]\rCollecting gradients: 100%|##| 2/2 [05:01<00:00, 156.31s/it]\nSaving")
    assert st.bergson_collect_seconds(log) == 301
    assert st.bergson_collect_seconds("Collecting gradients: 100%|##| 9/9 [1:02:03<00:00]") == 3723
    assert st.bergson_collect_seconds("no bar here") is None


def test_measured_run_counts_the_process_tree(st, tmp_path):
    """A parent that starts a child holding ~300 MiB: the tree's peak includes the child; CPU and load recorded."""
    import sys

    code = ("import subprocess, sys, time; b = b'x' * (50 * 2**20); "  # touched pages: resident for sure
            "p = subprocess.Popen([sys.executable, '-c', 'import time; b = b\"x\" * (300 * 2**20); time.sleep(3)']); "
            "p.wait()")
    r = st.measured_run([sys.executable, "-c", code], dict(os.environ), tmp_path / "log.txt")
    assert r["rc"] == 0 and r["wall_s"] >= 1.5
    # the sampled tree peak must hold the child's ~300 MiB on top of the parent's 50 MiB (a parent-only measure
    # stays near 60 MiB); ru_maxrss is the largest single process of the tree, which can catch transient peaks
    # the 50 ms sampler misses, so the two are not ordered
    assert r["peak_rss_tree_mb"] >= 340 and r["peak_rss_largest_process_mb"] >= 300
    assert r["cpu_s"] > 0 and r["load_1min_before"] >= 0 and r["other_processes_cpu_cores"] >= 0


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
    from influcoder.core import metrics as M
    from influcoder.teacher.labels import load_labels, meta_path
    from influcoder.data.records import read_records
    from influcoder.data.records import DataSpec
    from influcoder.teacher.stock import StockConfig, stock

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
        stock(StockConfig(model=str(tiny_model_dir), data=DataSpec(str(f), preset="prompt-response"), out=str(tmp_path / f"s_{side}"),
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
