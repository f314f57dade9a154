"""Distillation: the loss pinned by hand, leak-free split, candidate sampling, end-to-end training and CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from influcoder.student.config import DistillConfig
from influcoder.student.losses import distill_loss, kl_loss, pearson_loss
from influcoder.student.batches import sample_candidates, split_indices
from influcoder.student.distill import train
from influcoder.core.errors import UserError
from influcoder.teacher.labels import load_labels, write_meta

from test_encoder import make_tiny_bert_dir


# ------------------------------------------------------------------------------------------ loss
def test_pearson_loss_hand_values():
    # pred (1,2,3) vs true (1,3,2): centred (-1,0,1)·(-1,1,0) = 1, norms √2·√2 → r = 0.5
    assert float(pearson_loss(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 3.0, 2.0]]))) == pytest.approx(0.5, abs=1e-6)
    # 2×2 flattened: pred (1,0,0,1), true (1,0,0,0): centred (.5,-.5,-.5,.5)·(.75,-.25,-.25,-.25) = .5;
    # |pred| = 1, |true| = √.75 → r = .5/√.75
    r = 0.5 / math.sqrt(0.75)
    got = pearson_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert float(got) == pytest.approx(1 - r, abs=1e-6)


def test_pearson_zero_for_perfect_and_affine_and_two_for_negated():
    t = torch.randn(4, 6)
    assert float(pearson_loss(t.clone(), t)) == pytest.approx(0.0, abs=1e-6)
    assert float(pearson_loss(0.01 * t - 3.0, t)) == pytest.approx(0.0, abs=1e-5)
    assert float(pearson_loss(-2 * t + 1, t)) == pytest.approx(2.0, abs=1e-5)


def test_kl_hand_value_and_zero_for_identical():
    tau = 0.5
    # true row (τ·ln3, 0) → p = (3/4, 1/4); pred row (0, 0) → q = (1/2, 1/2)
    true = torch.tensor([[tau * math.log(3.0), 0.0]])
    pred = torch.zeros(1, 2)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(kl_loss(pred, true, tau)) == pytest.approx(expected, abs=1e-6)
    # mean over queries: a second, identical row adds 0 → half the value
    true2 = torch.cat([true, torch.tensor([[0.3, -0.1]])])
    pred2 = torch.cat([pred, torch.tensor([[0.3, -0.1]])])
    assert float(kl_loss(pred2, true2, tau)) == pytest.approx(expected / 2, abs=1e-6)
    t = torch.randn(3, 5)
    assert float(kl_loss(t + 7.0, t, 0.1)) == pytest.approx(0.0, abs=1e-6)  # softmax is shift-invariant per row


def test_kl_matches_torch_reference():
    torch.manual_seed(0)
    pred, true, tau = torch.randn(12, 15), torch.randn(12, 15), 0.3
    ref = torch.nn.functional.kl_div(torch.log_softmax(pred / tau, -1), torch.log_softmax(true / tau, -1),
                                     log_target=True, reduction="batchmean")
    assert float(kl_loss(pred, true, tau)) == pytest.approx(float(ref), rel=1e-5)


def test_combined_loss_is_weighted_sum():
    tau, alpha = 0.5, 0.3
    pred = torch.tensor([[0.0, 0.0, 1.0], [1.0, 2.0, 3.0]])
    true = torch.tensor([[tau * math.log(3.0), 0.0, 0.2], [1.0, 3.0, 2.0]])
    loss, parts = distill_loss(pred, true, alpha, tau)
    assert float(loss) == pytest.approx(alpha * float(pearson_loss(pred, true)) + (1 - alpha) * float(kl_loss(pred, true, tau)), abs=1e-6)
    assert float(parts["pearson"]) == pytest.approx(float(pearson_loss(pred, true)))
    l0, _ = distill_loss(true.clone(), true, 0.5, tau)
    assert float(l0) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return make_tiny_bert_dir(tmp_path_factory.mktemp("tiny-bert-d"))


def test_gradients_reach_the_encoder(tiny_bert_dir):
    from influcoder import InfluenceEncoder

    enc = InfluenceEncoder.from_pretrained(tiny_bert_dir, projection_dim=8)
    enc.train()
    q = enc.embed(["what is the capital", "name a prime"], side="query")
    p = enc.embed(["paris", "blue cat", "2 3 and 5"], side="pool")
    loss, _ = distill_loss(q @ p.T, torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]]), 0.5, 0.1)
    loss.backward()
    named = dict(enc.model.named_parameters())
    grads = {n: p.grad for n, p in named.items()}
    assert all(g is not None for n, g in grads.items() if "pooler" not in n)  # BERT pooler is unused by mean pooling
    emb = [n for n in named if "word_embeddings" in n][0]
    layer0 = [n for n in named if "layer.0.attention" in n and n.endswith("weight")][0]
    assert grads[emb].abs().sum() > 0 and grads[layer0].abs().sum() > 0


# ------------------------------------------------------------------------------------------ split / sampling
def test_split_disjoint_seeded_and_sized():
    s = split_indices(100, 40, 0.2, 10, seed=3)
    assert len(s.val_pool) == 20 and len(s.val_queries) == 10
    assert not set(s.val_pool) & set(s.train_pool) and not set(s.val_queries) & set(s.train_queries)
    assert sorted(np.concatenate([s.val_pool, s.train_pool])) == list(range(100))
    assert sorted(np.concatenate([s.val_queries, s.train_queries])) == list(range(40))
    s2 = split_indices(100, 40, 0.2, 10, seed=3)
    assert (s.val_pool == s2.val_pool).all() and (s.val_queries == s2.val_queries).all()
    assert not (split_indices(100, 40, 0.2, 10, seed=4).val_pool == s.val_pool).all()
    with pytest.raises(UserError, match="held-out pool"):
        split_indices(10, 40, 9, 10, seed=0)


def test_hard_candidates_come_from_top_k():
    rng = np.random.default_rng(0)
    labels = np.random.default_rng(1).normal(size=(60, 5)).astype(np.float32)
    chunk = np.arange(10)
    qs = np.array([1, 3])
    got = sample_candidates(rng, chunk, qs, labels, 0.5, 4, {})
    assert len(got) == 10 and len(set(got.tolist())) == 10
    tops = set(np.argsort(-labels[:, 1])[:4]) | set(np.argsort(-labels[:, 3])[:4])
    hard = got[:5]
    assert set(hard.tolist()) <= tops
    assert (sample_candidates(rng, chunk, qs, labels, 0.0, 4, {}) == chunk).all()


def test_config_validation():
    base = dict(pool_data="p", query_data="q", labels="l.npy", out="o")
    DistillConfig(**base)
    for bad in [dict(alpha=1.5), dict(tau=0), dict(candidates=1), dict(val_pool=2.5), dict(select_metric="x"),
                dict(epochs=0), dict(hard_fraction=2), dict(pooling="sum")]:
        with pytest.raises(UserError):
            DistillConfig(**base, **bad)
    d = DistillConfig(**base).to_dict()
    assert DistillConfig.from_dict(d) == DistillConfig(**base)
    with pytest.raises(UserError, match="unknown"):
        DistillConfig.from_dict({**d, "nope": 1})


# ------------------------------------------------------------------------------------------ end to end
WORDS = ["red", "blue", "cat", "dog", "rain", "night", "prime", "water", "paris", "mass"]


def _write_problem(root: Path, n_pool: int = 40, n_query: int = 12, seed: int = 0) -> tuple[Path, Path, Path]:
    """Records + a learnable label file: influence = shared word count − response length term."""
    rng = np.random.default_rng(seed)
    pool, queries = [], []
    for i in range(n_pool):
        ws = rng.choice(WORDS, size=3, replace=False)
        pool.append({"id": f"p{i}", "prompt": f"say {ws[0]} {ws[1]}", "response": " ".join([ws[2]] * int(rng.integers(1, 6)))})
    for j in range(n_query):
        ws = rng.choice(WORDS, size=2, replace=False)
        queries.append({"id": f"q{j}", "prompt": f"what is {ws[0]}", "response": str(ws[1])})
    M = np.zeros((n_pool, n_query), dtype=np.float32)
    for i, p in enumerate(pool):
        pw = set((p["prompt"] + " " + p["response"]).split())
        for j, q in enumerate(queries):
            qw = set((q["prompt"] + " " + q["response"]).split())
            M[i, j] = len(pw & qw) - 0.1 * len(p["response"].split()) + 0.01 * rng.normal()
    pf, qf = root / "pool.jsonl", root / "queries.jsonl"
    # the files list rows in another order than the labels, plus an extra row: mapping must go by id
    pf.write_text("".join(json.dumps(r) + "\n" for r in pool[::-1] + [{"id": "extra", "prompt": "x", "response": "y"}]))
    qf.write_text("".join(json.dumps(r) + "\n" for r in queries))
    lf = root / "labels.npy"
    np.save(lf, M)
    write_meta(lf, {"pool_ids": [r["id"] for r in pool], "query_ids": [r["id"] for r in queries],
                    "teacher": {"model": "tiny-teacher", "model_hash": "abc", "lora": {"rank": 8},
                                "projection": {"kind": "countsketch", "dim": 64}}})
    return pf, qf, lf


def _cfg(tmp: Path, tiny: Path, pf, qf, lf, out: str, **kw) -> DistillConfig:
    base = dict(pool_data=str(pf), query_data=str(qf), labels=str(lf), out=str(tmp / out), encoder=str(tiny),
                epochs=2, queries_per_batch=4, candidates=6, val_pool=10, val_queries=4, lr=1e-3, seed=0,
                max_length=32, tau=0.5, prior_warmup_steps=0, prior_trees=False)  # tests of these set them themselves
    base.update(kw)
    return DistillConfig(**base)


def test_end_to_end_train_load_and_sentence_transformers(tmp_path, tiny_bert_dir):
    from sentence_transformers import SentenceTransformer

    from influcoder import InfluenceEncoder
    from influcoder.data.records import read_records

    pf, qf, lf = _write_problem(tmp_path)
    # a plain bi-encoder (no pool prior): its folder must give sentence-transformers' own embeddings exactly
    out = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "enc", projection_dim=16, query_prefix="q: ", pool_prior=False),
                progress=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows[0]["model"] == "untrained"
    assert rows[2]["loss"] != rows[0]["loss"]  # training moved the model
    assert rows[2]["train_loss"] < rows[1]["train_loss"] + 0.05
    for r in rows:
        for k in ("per_anchor_spearman", "aggregated_spearman", "query_specific_spearman", "loss"):
            assert np.isfinite(r[k])
    assert json.loads((out / "distill_config.json").read_text())["epochs"] == 2
    split = json.loads((out / "split.json").read_text())
    assert not set(split["val_pool_ids"]) & set(split["train_pool_ids"])
    assert not set(split["val_query_ids"]) & set(split["train_query_ids"])
    assert len(split["val_pool_ids"]) == 10 and len(split["val_query_ids"]) == 4

    enc = InfluenceEncoder.from_pretrained(out)
    md = enc.metadata
    assert md["teacher"]["decoder"] == "tiny-teacher" and md["teacher"]["decoder_hash"] == "abc"
    assert md["teacher"]["lora"] == {"rank": 8} and md["teacher"]["projection"]["dim"] == 64
    assert md["labels"]["sha256"] == load_labels(lf).fingerprint()["sha256"]
    assert md["training_config"]["seed"] == 0 and md["selection"]["metric"] == "per_anchor_spearman"
    best = rows[md["selection"]["best_epoch"]]
    assert md["validation"]["per_anchor_spearman"] == pytest.approx(best["per_anchor_spearman"])
    assert best["per_anchor_spearman"] == max(r["per_anchor_spearman"] for r in rows)

    recs, _ = read_records(pf, __import__("influcoder.data.records", fromlist=["FieldSpec"]).FieldSpec())
    e = enc.encode(recs)
    assert e.shape == (len(recs), 16)
    st = SentenceTransformer(str(out), device="cpu")
    from influcoder.data.records import record_to_text

    texts = [record_to_text(r) for r in recs]
    np.testing.assert_allclose(st.encode(texts), e, atol=1e-6)
    np.testing.assert_allclose(st.encode(texts, prompt_name="query"), enc.encode(recs, side="query"), atol=1e-6)
    # the saved weights are the best epoch's: re-scoring the held-out block reproduces its metrics
    from influcoder.student.losses import evaluate_matrix

    L = load_labels(lf)
    pi = [L.pool_ids.index(i) for i in split["val_pool_ids"]]
    qi = [L.query_ids.index(i) for i in split["val_query_ids"]]
    by_id = {r.id: r for r in recs}
    qrecs = {r.id: r for r in read_records(qf, __import__("influcoder.data.records", fromlist=["FieldSpec"]).FieldSpec())[0]}
    P = enc.encode([by_id[i] for i in split["val_pool_ids"]])
    Q = enc.encode([qrecs[i] for i in split["val_query_ids"]], side="query")
    m = evaluate_matrix(P @ Q.T, np.asarray(L.matrix)[np.ix_(pi, qi)], 0.5, 0.5)
    assert m["per_anchor_spearman"] == pytest.approx(best["per_anchor_spearman"], abs=1e-4)


def test_training_never_reads_held_out_labels(tmp_path, tiny_bert_dir):
    """Changing every label that involves a held-out pool row or a held-out query (outside the validation
    block) must leave the trained weights bit-identical; changing a training label must not."""
    from safetensors.numpy import load_file

    pf, qf, lf = _write_problem(tmp_path)
    cfg = _cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "a", epochs=1, hard_fraction=0.3, hard_top_k=3, prior_trees=True)
    s = split_indices(40, 12, cfg.val_pool, cfg.val_queries, cfg.seed)
    out_a = train(cfg, progress=False)

    M = np.load(lf)
    M2 = M.copy()
    M2[np.ix_(s.val_pool, s.train_queries)] = 100.0 * np.random.default_rng(5).normal(size=(len(s.val_pool), len(s.train_queries)))
    M2[np.ix_(s.train_pool, s.val_queries)] = -50.0
    lf2 = tmp_path / "labels2.npy"
    np.save(lf2, M2.astype(np.float32))
    write_meta(lf2, json.loads((tmp_path / "labels.meta.json").read_text()))
    out_b = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf2, "b", epochs=1, hard_fraction=0.3, hard_top_k=3, prior_trees=True),
                  progress=False)

    M3 = M.copy()
    M3[s.train_pool[0], s.train_queries] *= -5
    lf3 = tmp_path / "labels3.npy"
    np.save(lf3, M3.astype(np.float32))
    write_meta(lf3, json.loads((tmp_path / "labels.meta.json").read_text()))
    out_c = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf3, "c", epochs=1, hard_fraction=0.3, hard_top_k=3, select_metric="loss"), progress=False)
    out_a2 = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "a2", epochs=1, hard_fraction=0.3, hard_top_k=3, select_metric="loss"), progress=False)

    wa, wb = load_file(str(out_a / "model.safetensors")), load_file(str(out_b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    ra = [json.loads(x) for x in (out_a / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (out_b / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in ra if r["model"] == "trained"] == [r["train_loss"] for r in rb if r["model"] == "trained"]
    # the boosted pool prior is fitted on training labels only (its weight on the validation block) as well
    from influcoder.student.encoder import PRIOR_TREES_FILE

    assert (out_a / PRIOR_TREES_FILE).exists() == (out_b / PRIOR_TREES_FILE).exists()
    if (out_a / PRIOR_TREES_FILE).exists():
        ta, tb = load_file(str(out_a / PRIOR_TREES_FILE)), load_file(str(out_b / PRIOR_TREES_FILE))
        assert all(np.array_equal(ta[k], tb[k]) for k in ta)
    assert [r.get("kappa") for r in ra if r["model"] == "prior trees"] == [r.get("kappa") for r in rb if r["model"] == "prior trees"]
    assert any(r["model"] == "prior trees" for r in ra)
    # sanity that the comparison can fail: a changed training label changes the trajectory
    rc = [json.loads(x) for x in (out_c / "metrics.jsonl").read_text().splitlines()]
    ra2 = [json.loads(x) for x in (out_a2 / "metrics.jsonl").read_text().splitlines()]
    assert rc[1]["train_loss"] != ra2[1]["train_loss"]


def test_time_budget_stops_early(tmp_path, tiny_bert_dir):
    pf, qf, lf = _write_problem(tmp_path)
    out = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "tb", epochs=5, max_train_seconds=1e-6), progress=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and rows[1]["partial"] and rows[1]["steps_this_epoch"] == 0
    md = json.loads((out / "influcoder_encoder.json").read_text())
    assert md["stopped_by_time_budget"] and md["steps"] == 0


def test_missing_id_is_clear_error(tmp_path, tiny_bert_dir):
    pf, qf, lf = _write_problem(tmp_path)
    lines = pf.read_text().splitlines()
    pf.write_text("\n".join(l for l in lines if '"p7"' not in l) + "\n")
    with pytest.raises(UserError, match=r"pool.jsonl: 1 of the label file's 40 pool ids.*p7"):
        train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "x"), progress=False)
    assert not (tmp_path / "x").exists()


def test_cli_train(tmp_path, tiny_bert_dir):
    from typer.testing import CliRunner

    from influcoder.app.cli import app

    pf, qf, lf = _write_problem(tmp_path)
    args = ["train", "--pool-data", str(pf), "--query-data", str(qf), "--labels", str(lf), "--encoder", str(tiny_bert_dir),
            "--out", str(tmp_path / "cli"), "--epochs", "1", "--seed", "1", "--val-pool", "10", "--val-queries", "4",
            "--candidates", "6", "--queries-per-batch", "4", "--max-length", "32", "--preset", "prompt-response", "--quiet"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    md = json.loads((tmp_path / "cli" / "influcoder_encoder.json").read_text())
    assert md["training_config"]["seed"] == 1 and md["training_config"]["epochs"] == 1
    r = CliRunner().invoke(app, args[:-3] + ["--pool-preset", "nonexistent"])
    assert r.exit_code != 0


def test_cli_missing_labels_exits_2(tmp_path):
    import subprocess
    import sys

    pf, qf, _ = _write_problem(tmp_path)
    r = subprocess.run([sys.executable, "-m", "influcoder", "train", "--pool-data", str(pf), "--query-data", str(qf),
                        "--labels", str(tmp_path / "none.npy"), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "none.npy" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_real_minilm_trains_a_few_steps(tmp_path):
    from influcoder import InfluenceEncoder
    from influcoder.core.models import ModelNotAvailable, resolve_encoder

    try:
        resolve_encoder("minilm-l6")
    except ModelNotAvailable as e:
        pytest.skip(str(e))
    pf, qf, lf = _write_problem(tmp_path, n_pool=24, n_query=8)
    out = train(DistillConfig(pool_data=str(pf), query_data=str(qf), labels=str(lf), out=str(tmp_path / "m"),
                              encoder="minilm-l6", epochs=1, queries_per_batch=4, candidates=6, val_pool=8,
                              val_queries=3, max_length=32), progress=False)
    enc = InfluenceEncoder.from_pretrained(out)
    # the defaults: pool prior (two score coordinates), the lower 4 of 6 layers frozen and cached
    assert enc.embedding_dim == 384 and enc.dim == 386 and enc.metadata["base_encoder"] == "minilm-l6"
    assert enc.metadata["frozen_layers"] == 4 and enc.metadata["pool_prior"]
    assert enc.encode(["hello"]).shape == (1, 386)


# ------------------------------------------------------------------------------------------ cheap-training levers
def test_layer_cache_matches_full_forward(tiny_bert_dir):
    """The cached path (frozen lower layers run once, top layers on the cache) gives the full forward's
    embeddings, with padding from batches of different lengths and a side prefix."""
    from influcoder import InfluenceEncoder
    from influcoder.student.layer_cache import LayerCache

    enc = InfluenceEncoder.from_pretrained(tiny_bert_dir, projection_dim=8, query_prefix="q: ")
    enc.eval()
    texts = ["hello world this is a longer text than the others", "hi", "paris is the capital", "2 3 5 7 11 13"]
    for k in (1, 2):
        c = LayerCache(enc, k)
        c.add("q", texts, "query", batch_size=3)
        with torch.no_grad():
            ref = enc.embed([texts[i] for i in (3, 0, 1)], side="query")
            got = c.embed("q", [3, 0, 1])
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        wrong = enc.embed([texts[i] for i in (3, 0, 1)], side="pool")  # the prefix matters: can fail
        assert (wrong - got).abs().max() > 1e-3


def test_layer_cache_matches_full_forward_real_minilm():
    """The packaged MiniLM (all-MiniLM-L6-v2): the cached path equals the full forward, with padding, for
    every number of frozen layers, under float32 and under the device's bf16 autocast (same autocast on both
    sides). Guards the mask the cache builds against the installed transformers (issue 20: a private mask
    method changed signature and broke training)."""
    from influcoder import InfluenceEncoder
    from influcoder.student.layer_cache import LayerCache
    from influcoder.core.models import ModelNotAvailable, resolve_encoder

    try:
        resolve_encoder("minilm-l6")
    except ModelNotAvailable as e:
        pytest.skip(str(e))
    enc = InfluenceEncoder.from_pretrained("minilm-l6", max_length=64)
    enc.eval()
    texts = ["Write a haiku about rain on a tin roof at night, with a title.\nRain taps the tin roof " * 2,
             "hi", "What is 2 + 3?\n5", "Name the capital of France.\nParis is the capital of France."]
    idx = [2, 0, 3, 1]
    for k in (1, 4, 5):
        c = LayerCache(enc, k)
        c.add("pool", texts, "pool", batch_size=3)
        with torch.no_grad():
            ref = enc.embed([texts[i] for i in idx], side="pool")
            got = c.embed("pool", idx)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            ref16 = enc.embed([texts[i] for i in idx], side="pool").float()
            got16 = c.embed("pool", idx).float()
        assert (got16 - ref16).abs().max() < 2e-2  # bf16 rounding only (both far from float32's 1e-5)
    # a negative control: a wrong mask (no padding masked) changes the padded rows
    c = LayerCache(enc, 4)
    c.add("pool", texts, "pool", batch_size=3)
    import influcoder.student.layer_cache as lc

    orig = lc._mask_fn
    try:
        lc._mask_fn = lambda: (lambda config, inputs_embeds, attention_mask: None)
        with torch.no_grad():
            bad = c.embed("pool", idx)
    finally:
        lc._mask_fn = orig
    assert (bad - ref).abs().max() > 1e-3


def test_freeze_layers_trains_only_the_top(tmp_path, tiny_bert_dir):
    from safetensors.numpy import load_file

    from influcoder.student.layer_cache import freeze_lower

    pf, qf, lf = _write_problem(tmp_path)
    out = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "fz", epochs=2, freeze_layers=1), progress=False)
    w0 = load_file(str(Path(tiny_bert_dir) / "model.safetensors"))
    w1 = load_file(str(out / "model.safetensors"))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] == rows[-1]["train_loss"] and len(rows) == 3

    def same(sub):
        ks = [k for k in w1 if sub in k]
        assert ks, sub
        return all(np.array_equal(w1[k], w0[[j for j in w0 if j.endswith(k.split("auto_model.")[-1]) or j == k][0]]) for k in ks)

    best = json.loads((out / "influcoder_encoder.json").read_text())["selection"]["best_epoch"]
    if best > 0:  # the saved weights moved only above the frozen layer
        assert same("layer.0.") and same("word_embeddings")
        assert not same("layer.1.")
    from influcoder import InfluenceEncoder

    with pytest.raises(UserError, match="freeze_layers must be in"):
        freeze_lower(InfluenceEncoder.from_pretrained(tiny_bert_dir), 99)


def test_centred_pearson_and_pool_mean_term():
    pred = torch.tensor([[1.0, 2.0, 3.0], [11.0, 12.0, 13.0]])
    true = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    # flattened Pearson is hurt by the row offset; centring rows removes it
    assert float(pearson_loss(pred, true)) > 0.5
    assert float(pearson_loss(pred, true, center_rows=True)) == pytest.approx(0.0, abs=1e-6)
    # hand value: centred rows (-1,0,1),(−1,0,1) vs true (-1,0,1),(1,0,-1) → r = 0
    true2 = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    assert float(pearson_loss(pred, true2, center_rows=True)) == pytest.approx(1.0, abs=1e-6)
    # pool-mean term: predicted column means (6,7,8) vs true pool means (3,2,1): Pearson −1 → term 2, weighted
    l0, p0 = distill_loss(pred, true, 0.5, 0.5)
    l1, p1 = distill_loss(pred, true, 0.5, 0.5, pool_mean=torch.tensor([3.0, 2.0, 1.0]), pool_mean_weight=0.25)
    assert float(p1["pool_mean"]) == pytest.approx(2.0, abs=1e-6)
    assert float(l1) == pytest.approx(float(l0) + 0.25 * 2.0, abs=1e-6)


def test_patience_stops_training(tmp_path, tiny_bert_dir):
    pf, qf, lf = _write_problem(tmp_path)
    # lr tiny: validation cannot improve by chance for long; patience 1 stops after the first non-improving epoch
    out = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "pt", epochs=8, patience=1, lr=1e-9), progress=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    md = json.loads((out / "influcoder_encoder.json").read_text())
    assert len(rows) < 9 and md["stopped_early"] and md["epochs_run"] == len(rows) - 1
    best = max(range(len(rows)), key=lambda i: (rows[i]["per_anchor_spearman"], -i))
    assert len(rows) - 1 == best + 1  # stopped exactly one epoch after the best


def test_pool_prior_saves_and_scores_as_one_inner_product(tmp_path, tiny_bert_dir):
    """With a prior, encode() gives unit vectors (pool [aE(p), s·r, √(1−a²−s²r²)], query [aE(q), s, 0]) whose
    inner product is a²·(cos + b(p)) exactly — so a FAISS inner-product index ranks by cos + b — and the
    prior survives save/load."""
    import shutil

    from influcoder import InfluenceEncoder
    from influcoder.student.prior import build_prior

    enc = InfluenceEncoder.from_pretrained(tiny_bert_dir)
    enc.prior = build_prior(enc.embedding_dim, 8, seed=1)
    with torch.no_grad():
        enc.prior.mlp[2].weight.normal_()  # a non-trivial prior (it starts at zero)
        enc.prior.raw_w.fill_(1.3)
    enc.save(tmp_path / "e", {"base_encoder": "tiny"})
    enc2 = InfluenceEncoder.from_pretrained(tmp_path / "e")
    assert enc2.prior is not None and enc2.dim == enc2.embedding_dim + 2 and enc2.metadata["prior"]["hidden"] == 8
    texts = ["paris", "blue cat sat", "2 3 and 5", "hello there", "a b c d e f"]
    P, Q = enc2.encode(texts[:4]), enc2.encode(texts[4:], side="query")
    np.testing.assert_allclose(np.linalg.norm(P, axis=1), 1.0, atol=1e-5)  # unit vectors: normalising is a no-op
    np.testing.assert_allclose(np.linalg.norm(Q, axis=1), 1.0, atol=1e-5)
    plain = InfluenceEncoder.from_pretrained(tiny_bert_dir)
    Ep, Eq = plain.encode(texts[:4]), plain.encode(texts[4:], side="query")
    with torch.no_grad():
        b = enc.prior_scores(torch.from_numpy(Ep), enc.length_features(texts[:4])).numpy()
        w = float(enc.prior.weight)
    assert np.abs(b).max() > 1e-3 and w == pytest.approx(np.log1p(np.exp(1.3)), rel=1e-5)
    want = Eq @ Ep.T + b[None, :]
    np.testing.assert_allclose(Q @ P.T, want / (1 + w), atol=1e-5)
    np.testing.assert_allclose(enc2.similarity(Q, P) / enc2.score_scale(), want, atol=1e-4)
    # the length features are the untruncated token counts (log1p), response = whole text for strings
    lf = enc.length_features(texts[:2])
    n = [len(enc.model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts[:2]]
    np.testing.assert_allclose(lf, np.log1p(np.array([n, n]).T), atol=1e-6)
    # without its prior file the folder is a plain bi-encoder again (the file is what carries b)
    shutil.copytree(tmp_path / "e", tmp_path / "plain")
    (tmp_path / "plain" / "influcoder_prior.safetensors").unlink()
    assert InfluenceEncoder.from_pretrained(tmp_path / "plain").dim == enc.embedding_dim


def test_pool_prior_is_trained(tmp_path, tiny_bert_dir):
    """The prior's weights are optimised with the encoder (its last layer leaves zero) and saved with it."""
    from safetensors.torch import load_file

    pf, qf, lf = _write_problem(tmp_path)
    # a pool factor in the labels that only the prior can take up quickly; select on training progress (loss)
    M = np.load(lf)
    M = M + 3.0 * np.linspace(-1, 1, M.shape[0])[:, None].astype(np.float32)
    np.save(lf, M.astype(np.float32))
    seen = {}
    import influcoder.student.distill as D

    orig = D.distill_loss

    def spy(pred, true, *a, **k):
        seen["n"] = seen.get("n", 0) + 1
        return orig(pred, true, *a, **k)

    D.distill_loss = spy
    try:
        out = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "pr", epochs=2, pool_prior=True, prior_hidden=8,
                         lr=1e-2), progress=False)
    finally:
        D.distill_loss = orig
    assert seen["n"] > 0
    md = json.loads((out / "influcoder_encoder.json").read_text())
    w = load_file(str(out / "influcoder_prior.safetensors"))
    assert md["selection"]["best_epoch"] > 0 and md["pool_prior"]
    assert float(w["mlp.2.weight"].abs().sum()) > 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[md["selection"]["best_epoch"]]["aggregated_spearman"] > rows[0]["aggregated_spearman"]


# ------------------------------------------------------------------------------------------ checkpoint / resume
@pytest.mark.parametrize("kl_over", ["batch", "pool"])
def test_train_resumes_from_the_last_epoch_checkpoint_with_the_same_result(tmp_path, tiny_bert_dir, monkeypatch, kl_over):
    """A run killed after epoch 1 (simulated: the process dies right after the checkpoint is written) and
    rerun with the same config into the same folder ends with the same weights and metrics as a run
    never interrupted; the rerun trains only epochs 2 and 3; the checkpoint is removed at the end. With the
    listwise KL the embedding bank is part of the state."""
    from influcoder.student import distill

    pf, qf, lf = _write_problem(tmp_path)
    ref = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "ref", epochs=3, kl_over=kl_over), progress=False)

    class Killed(BaseException):
        pass

    real_save = distill._save_checkpoint
    epochs_saved = []

    def save_then_die(out, key, state):
        real_save(out, key, state)
        epochs_saved.append(state["epoch"])
        if state["epoch"] == 1:
            raise Killed()

    monkeypatch.setattr(distill, "_save_checkpoint", save_then_die)
    cfg = _cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "killed", epochs=3, kl_over=kl_over)
    with pytest.raises(Killed):
        train(cfg, progress=False)
    out = Path(cfg.out)
    assert (out / distill.CHECKPOINT_DIR / "state.pt").exists() and not (out / "metrics.jsonl").exists()
    logs = []
    train(cfg, progress=False, log=logs.append)
    assert epochs_saved == [1, 2, 3]  # epoch 1 was not trained again
    assert any("resuming from the checkpoint of epoch 1" in line for line in logs)
    assert not (out / distill.CHECKPOINT_DIR).exists() and not (out / "metrics.jsonl.tmp").exists()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    for a, b in zip(rows, ref_rows):
        for k in ("per_anchor_spearman", "loss", "train_loss"):
            if k in b:
                assert a[k] == pytest.approx(b[k], abs=1e-6), (a["epoch"], k)
    from safetensors.torch import load_file

    wa, wb = load_file(str(out / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_checkpoint_of_another_config_is_not_resumed(tmp_path, tiny_bert_dir, monkeypatch):
    from influcoder.student import distill

    pf, qf, lf = _write_problem(tmp_path)
    cfg = _cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "o", epochs=2)

    class Killed(BaseException):
        pass

    real_save = distill._save_checkpoint

    def die(out, key, state):
        real_save(out, key, state)
        raise Killed()

    monkeypatch.setattr(distill, "_save_checkpoint", die)
    with pytest.raises(Killed):
        train(cfg, progress=False)
    monkeypatch.setattr(distill, "_save_checkpoint", real_save)
    logs = []
    train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "o", epochs=2, lr=2e-3), progress=False, log=logs.append)
    assert any("another config" in line for line in logs)
    assert [json.loads(x)["epoch"] for x in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]


def test_rerun_into_a_folder_killed_mid_epoch_finishes(tmp_path, tiny_bert_dir):
    """The folder of a run killed with -9 before any checkpoint (config, split and a partial metrics log):
    the same command finishes instead of ending in FileNotFoundError on metrics.jsonl.tmp."""
    pf, qf, lf = _write_problem(tmp_path)
    cfg = _cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "o", epochs=1)
    out = Path(cfg.out)
    out.mkdir()
    (out / "distill_config.json").write_text(json.dumps(cfg.to_dict()))
    (out / "metrics.jsonl.tmp").write_text('{"epoch": 0}\n')
    train(cfg, progress=False)
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]


# ------------------------------------------------------------------------------------------ known-answer task
EPOCHS = 8
PAIRS = [("red", "blue"), ("cat", "dog"), ("rain", "night"), ("prime", "water"), ("paris", "mass")]
PAIR_OF = {w: k for k, p in enumerate(PAIRS) for w in p}


def _pair_task(root: Path, n_pool: int, n_query: int, seed: int, prefix: str) -> tuple[list[dict], list[dict], np.ndarray]:
    """Pool and query records each about one topic word; influence 1 when the two words are in the same pair
    (``red``/``blue``, ``cat``/``dog``, ...), else 0. Half of the influential pairs share no word, so lexical
    overlap alone (what a random mean-pooled encoder sees) cannot find them."""
    rng = np.random.default_rng(seed)
    words = [w for p in PAIRS for w in p]
    fill = ["ok", "so", "hmm", "well", "yes"]
    pool = [{"id": f"{prefix}p{i}", "prompt": f"tell me about {w} {rng.choice(fill)}", "response": f"{w} {rng.choice(fill)}"}
            for i, w in enumerate(rng.choice(words, size=n_pool))]
    queries = [{"id": f"{prefix}q{j}", "prompt": f"what of {w}", "response": f"{rng.choice(fill)} {w}"}
               for j, w in enumerate(rng.choice(words, size=n_query))]
    topic = lambda r: r["response"].split()[0] if r["id"][len(prefix)] == "p" else r["response"].split()[1]
    M = np.array([[float(PAIR_OF[topic(p)] == PAIR_OF[topic(q)]) for q in queries] for p in pool], dtype=np.float32)
    return pool, queries, M


def test_trained_student_beats_the_untrained_encoder_on_a_known_rule(tmp_path, tiny_bert_dir):
    """Distilled on labels from a known rule, the student must rank a fresh block (drawn with another seed,
    outside training and distill's own validation block) clearly better than the encoder it started from.
    Per-anchor Spearman against the rule; a student that learnt nothing, or whose best epoch is the untrained
    one, stays at the starting 0.29."""
    from influcoder import InfluenceEncoder
    from influcoder.core import metrics as M
    from influcoder.data.records import Record

    pool, queries, lab = _pair_task(tmp_path, 80, 24, seed=0, prefix="tr-")
    pf, qf, lf = tmp_path / "pool.jsonl", tmp_path / "q.jsonl", tmp_path / "labels.npy"
    pf.write_text("".join(json.dumps(r) + "\n" for r in pool))
    qf.write_text("".join(json.dumps(r) + "\n" for r in queries))
    np.save(lf, lab)
    write_meta(lf, {"pool_ids": [r["id"] for r in pool], "query_ids": [r["id"] for r in queries],
                    "teacher": {"model": "rule", "model_hash": "-"}})
    out = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "enc", epochs=EPOCHS, val_pool=16, val_queries=6, lr=3e-3,
                     tau=0.1, max_length=16, candidates=12, queries_per_batch=6), progress=False)

    tp, tq, truth = _pair_task(tmp_path, 40, 12, seed=1, prefix="te-")
    rp = [Record(r["id"], r["prompt"], r["response"]) for r in tp]
    rq = [Record(r["id"], r["prompt"], r["response"]) for r in tq]

    def per_anchor(enc):
        with torch.no_grad():
            return M.per_anchor_spearman(enc.encode(rp) @ enc.encode(rq, side="query").T, truth)

    before = per_anchor(InfluenceEncoder.from_pretrained(tiny_bert_dir))
    after = per_anchor(InfluenceEncoder.from_pretrained(out))
    # measured: untrained 0.286, trained 0.65-0.67 over distill seeds 0-2 (rule itself: 1.0)
    assert after > before + 0.25 and after > 0.55, (before, after)


# ------------------------------------------------------------------------------------------ prior warm-up
def test_prior_warm_up_learns_a_known_pool_factor_and_keeps_the_best_state():
    """On fixed random embeddings (cosine carries nothing) with labels = a function of the pool rows'
    length features + noise, the prior alone must reach the pool factor's ranking; the validation callback
    picks the state it keeps."""
    from influcoder.core import metrics as M
    from influcoder.student.prior import warm_up_prior
    from influcoder.student.prior import build_prior

    rng = np.random.default_rng(0)
    n_p, n_q, d = 120, 30, 8
    EP = rng.normal(size=(n_p, d)).astype(np.float32)
    EP /= np.linalg.norm(EP, axis=1, keepdims=True)
    EQ = rng.normal(size=(n_q, d)).astype(np.float32)
    EQ /= np.linalg.norm(EQ, axis=1, keepdims=True)
    lens = rng.uniform(0, 5, size=(n_p, 2)).astype(np.float32)
    factor = np.sin(lens[:, 0]) - 0.5 * lens[:, 1]
    L = (factor[:, None] + 0.05 * rng.normal(size=(n_p, n_q))).astype(np.float32)
    tr, va = np.arange(90), np.arange(90, n_p)
    prior = build_prior(d, 32, seed=0)

    def scores(p):
        with torch.no_grad():
            b = p(torch.cat([torch.from_numpy(EP[va]), torch.from_numpy(lens[va])], 1)).numpy()
        return EP[va] @ EQ.T + b[:, None]

    before = M.per_anchor_spearman(scores(prior), L[va])
    seen = []

    def validate(p):
        v = M.per_anchor_spearman(scores(p), L[va])
        seen.append(v)
        return v

    hist = warm_up_prior(prior, EP[tr], EQ, lens[tr], L[tr], steps=400, queries_per_batch=8, candidates=16,
                         lr=1e-2, alpha=0.5, tau=0.1, seed=0, validate=validate, eval_every=50)
    after = M.per_anchor_spearman(scores(prior), L[va])
    assert [h["step"] for h in hist] == [0, 50, 100, 150, 200, 250, 300, 350, 400]
    assert abs(before) < 0.3 and after > 0.8, (before, after)
    assert after == pytest.approx(max(seen))  # the best validated state is the one kept


def test_prior_warm_up_in_train_is_logged_and_needs_a_prior(tmp_path, tiny_bert_dir):
    pf, qf, lf = _write_problem(tmp_path)
    M_ = np.load(lf)
    np.save(lf, (M_ + 3.0 * np.linspace(-1, 1, M_.shape[0])[:, None]).astype(np.float32))
    out = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "w", epochs=1, pool_prior=True, prior_hidden=8,
                     prior_warmup_steps=60, prior_warmup_eval=20, lr=1e-6), progress=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["model"] for r in rows] == ["untrained", "prior warm-up", "trained"]
    assert rows[1]["aggregated_spearman"] > rows[0]["aggregated_spearman"] + 0.1
    md = json.loads((out / "influcoder_encoder.json").read_text())
    assert md["epochs_run"] == 1 and md["prior_warmup"]["prior_warmup_steps"] == 60
    # the untrained numbers stay the untrained encoder's, not the warmed-up prior's
    assert md["validation_untrained"]["aggregated_spearman"] == pytest.approx(rows[0]["aggregated_spearman"])
    # without a prior there is nothing to warm up: the (default) warm-up is skipped, not an error
    out2 = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "x", epochs=1, pool_prior=False, prior_warmup_steps=60,
                      prior_refit_steps=60), progress=False)
    rows2 = [json.loads(x) for x in (out2 / "metrics.jsonl").read_text().splitlines()]
    assert [r["model"] for r in rows2] == ["untrained", "trained"]


def test_prior_refit_after_training_is_kept_only_where_validation_improves(tmp_path, tiny_bert_dir):
    from influcoder import InfluenceEncoder
    from influcoder.core import metrics as M
    from influcoder.data.records import read_records

    pf, qf, lf = _write_problem(tmp_path)
    M_ = np.load(lf)
    np.save(lf, (M_ + 3.0 * np.linspace(-1, 1, M_.shape[0])[:, None]).astype(np.float32))
    out = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "r", epochs=1, pool_prior=True, prior_hidden=8,
                     prior_refit_steps=80, prior_warmup_eval=20, lr=1e-6, prior_lr=1e-6), progress=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["model"] for r in rows] == ["untrained", "trained", "prior refit"]
    md = json.loads((out / "influcoder_encoder.json").read_text())
    # the epoch barely moved anything (lr 1e-6); the refit (lr 1e-6 too: its own steps use prior_lr) cannot
    # lose validation: its starting state is one of the states it chooses from
    assert md["validation"]["per_anchor_spearman"] >= rows[1]["per_anchor_spearman"] - 1e-9
    assert md["prior_refit"]["prior_refit_steps"] == 80
    # what is saved scores the validation block as reported
    split = json.loads((out / "split.json").read_text())
    pool = {r.id: r for r in read_records(str(pf), None)[0]}
    qs = {r.id: r for r in read_records(str(qf), None)[0]}
    enc = InfluenceEncoder.from_pretrained(out)
    vp, vq = [pool[i] for i in split["val_pool_ids"]], [qs[j] for j in split["val_query_ids"]]
    lab = load_labels(lf)
    truth = np.asarray(lab.matrix)[np.ix_([lab.pool_ids.index(i) for i in split["val_pool_ids"]],
                                          [lab.query_ids.index(j) for j in split["val_query_ids"]])]
    S = enc.encode(vp) @ enc.encode(vq, side="query").T
    assert M.per_anchor_spearman(S, truth) == pytest.approx(md["validation"]["per_anchor_spearman"], abs=1e-4)


def test_training_scale_is_learned_but_changes_no_score(tmp_path, tiny_bert_dir):
    """γ (the loss's γ·(cos + b)) moves in training, scoring does not depend on it, and a prior file saved
    without it (before it existed) still loads."""
    from safetensors.torch import load_file, save_file

    from influcoder import InfluenceEncoder
    from influcoder.student.encoder import PRIOR_FILE

    pf, qf, lf = _write_problem(tmp_path)
    M_ = np.load(lf)
    np.save(lf, (M_ + 3.0 * np.linspace(-1, 1, M_.shape[0])[:, None]).astype(np.float32))
    out = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "g", epochs=2, pool_prior=True, prior_hidden=8,
                     lr=1e-2, score_scale_lr=5e-2), progress=False)
    assert json.loads((out / "influcoder_encoder.json").read_text())["selection"]["best_epoch"] > 0
    w = load_file(str(out / PRIOR_FILE))
    assert abs(float(torch.nn.functional.softplus(w["raw_scale"])) - 1.0) > 1e-3  # it was trained
    enc = InfluenceEncoder.from_pretrained(out)
    texts = ["say a b\nb b", "what is c\nd"]
    before = enc.encode(texts)
    with torch.no_grad():
        enc.prior.raw_scale.fill_(3.0)
    assert np.array_equal(enc.encode(texts), before)
    save_file({k: v for k, v in w.items() if k != "raw_scale"}, str(out / PRIOR_FILE))
    old = InfluenceEncoder.from_pretrained(out)
    assert np.allclose(old.encode(texts), before, atol=1e-6)
    assert float(old.prior.scale) == pytest.approx(1.0)


def test_set_dropout_reaches_every_dropout_layer_and_the_attention(tiny_bert_dir):
    """With p = 0 a train-mode forward equals the eval-mode one; with the model's own dropout it does not."""
    from influcoder import InfluenceEncoder
    from influcoder.student.distill import set_dropout

    enc = InfluenceEncoder.from_pretrained(str(tiny_bert_dir), max_length=32)
    recs = ["say a b\nb b", "what is c\nd"]
    set_dropout(enc, 0.5)
    enc.train()
    torch.manual_seed(0)
    with torch.no_grad():
        noisy = enc.embed(recs, side="pool")
    enc.eval()
    with torch.no_grad():
        clean = enc.embed(recs, side="pool")
    assert not torch.allclose(noisy, clean, atol=1e-4)
    n = set_dropout(enc, 0.0)
    assert n >= 3 and all(m.p == 0.0 for m in enc.model.modules() if isinstance(m, torch.nn.Dropout))
    enc.train()
    with torch.no_grad():
        assert torch.allclose(enc.embed(recs, side="pool"), clean, atol=1e-6)


def _mean_start_cos(out: Path, tiny: Path, pf) -> float:
    from influcoder import InfluenceEncoder
    from influcoder.data.records import FieldSpec, read_records

    recs, _ = read_records(pf, FieldSpec.from_names(preset="prompt-response"))
    a = InfluenceEncoder.from_pretrained(str(out)).text_embeddings(recs, side="pool")
    b = InfluenceEncoder.from_pretrained(str(tiny), max_length=32).text_embeddings(recs, side="pool")
    return float((a * b).sum(axis=1).mean())


def test_anchor_term_keeps_the_student_near_its_start(tmp_path, tiny_bert_dir):
    pf, qf, lf = _write_problem(tmp_path)
    kw = dict(epochs=3, pool_prior=False, lr=5e-3, patience=None, dropout=0.0, select_metric="loss")
    free = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "free", **kw), progress=False)
    held = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "held", anchor_weight=50.0, **kw), progress=False)
    c_free, c_held = _mean_start_cos(free, tiny_bert_dir, pf), _mean_start_cos(held, tiny_bert_dir, pf)
    assert c_free < 0.99  # training moved the free student
    assert c_held > c_free + 0.5 * (1 - c_free)  # the anchored one stayed much closer


def test_label_noise_changes_training_and_is_seeded(tmp_path, tiny_bert_dir):
    from safetensors.torch import load_file

    pf, qf, lf = _write_problem(tmp_path)
    kw = dict(epochs=1, pool_prior=False, dropout=0.0, select_metric="loss", patience=None)

    def weights(name, **extra):
        out = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, name, **kw, **extra), progress=False)
        md = json.loads((out / "influcoder_encoder.json").read_text())
        assert md["selection"]["best_epoch"] == 1, md["validation"]
        return {k: v for k, v in load_file(str(next(out.rglob("model.safetensors")))).items()}

    a, b, c = weights("a"), weights("b", label_noise=0.5), weights("c", label_noise=0.5)
    assert all(torch.equal(b[k], c[k]) for k in b)  # same seed, same noise
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_regularisation_fields_are_validated():
    base = dict(pool_data="p", query_data="q", labels="l", out="o")
    for bad in (dict(dropout=1.0), dict(dropout=-0.1), dict(anchor_weight=-1.0), dict(label_noise=-0.01)):
        with pytest.raises(UserError):
            DistillConfig(**base, **bad)


def test_live_bank_replaces_the_step_rows_and_carries_their_gradient():
    from influcoder.student.losses import live_bank

    torch.manual_seed(0)
    bank = torch.randn(7, 4)
    ep = torch.randn(3, 4, requires_grad=True)
    cands = np.array([5, 2, 5])  # a repeated row: its last live embedding is the one kept
    mixed = live_bank(bank, ep, cands)
    ref = [bank[i] for i in range(7)]
    for k, c in enumerate(cands):
        ref[c] = ep[k]
    assert torch.equal(mixed, torch.stack(ref))
    W = torch.randn(7, 4)
    (mixed * W).sum().backward()
    assert torch.equal(ep.grad[0], torch.zeros(4)) and torch.equal(ep.grad[1], W[2]) and torch.equal(ep.grad[2], W[5])
    assert torch.equal(bank, bank.clone()) and not bank.requires_grad


def test_kl_term_can_run_over_other_scores_than_the_block():
    torch.manual_seed(1)
    pred, true = torch.randn(4, 6), torch.randn(4, 6)
    kp, kt = torch.randn(4, 20), torch.randn(4, 20)
    loss, parts = distill_loss(pred, true, 0.3, 0.2, kl_pred=kp, kl_true=kt)
    assert float(loss) == pytest.approx(0.3 * float(pearson_loss(pred, true)) + 0.7 * float(kl_loss(kp, kt, 0.2)), abs=1e-6)
    assert float(parts["kl"]) == pytest.approx(float(kl_loss(kp, kt, 0.2)))
    with pytest.raises(ValueError):
        distill_loss(pred, true, kl_pred=kp)


def test_listwise_kl_scores_each_query_against_every_training_pool_row(tmp_path, tiny_bert_dir, monkeypatch):
    """kl_over="pool": the first step's KL sees each query's cosine with *every* training pool example, as a
    fresh encoder embeds them all (the bank starts at the starting encoder; no dropout, float32, so the live rows
    equal the bank's), against the labels of every training pool row for that query; the Pearson term keeps
    the B × C block."""
    from influcoder.student import distill
    from influcoder.student.encoder import InfluenceEncoder
    from influcoder.teacher.labels import load_labels
    from influcoder.data.records import FieldSpec, read_records

    pf, qf, lf = _write_problem(tmp_path)
    seen = []
    real = distill.distill_loss

    def spy(pred, true, *a, **kw):
        if len(a) == 7:  # the training step's call (validation calls it with alpha and tau only)
            seen.append((pred.detach().clone(), true.clone(), *(x.detach().clone() if x is not None else None for x in a[-2:])))
        return real(pred, true, *a, **kw)

    monkeypatch.setattr(distill, "distill_loss", spy)
    cfg = _cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "lw", epochs=1, kl_over="pool", pool_prior=False, dropout=0.0,
               precision="float32", freeze_layers=0, patience=None)
    out = train(cfg, progress=False)
    split = json.loads((out / "split.json").read_text())
    labels = load_labels(lf)
    prow = {i: k for k, i in enumerate(labels.pool_ids)}
    qcol = {i: k for k, i in enumerate(labels.query_ids)}
    L = np.asarray(labels.matrix)[np.ix_([prow[i] for i in split["train_pool_ids"]], [qcol[j] for j in split["train_query_ids"]])]
    recs = {r.id: r for r in read_records(pf, FieldSpec.from_names(preset="prompt-response"))[0]}
    qrecs = {r.id: r for r in read_records(qf, FieldSpec.from_names(preset="prompt-response"))[0]}
    fresh = InfluenceEncoder.from_pretrained(str(tiny_bert_dir), max_length=32, seed=0)
    fresh.eval()
    with torch.no_grad():
        EP = fresh.embed([recs[i] for i in split["train_pool_ids"]], side="pool").float()
        EQ = fresh.embed([qrecs[j] for j in split["train_query_ids"]], side="query").float()
    pred, true, kl_pred, kl_true = seen[0]
    assert pred.shape == (4, 6) and kl_pred.shape == kl_true.shape == (4, len(split["train_pool_ids"]))
    # which training queries the step drew: the rows of the full cosine matrix the KL scores match
    full = EQ @ EP.T
    rows = [int(torch.argmin((full - r[None, :]).abs().amax(dim=1))) for r in kl_pred]
    assert torch.allclose(kl_pred, full[rows], atol=1e-5)
    assert np.allclose(kl_true.numpy(), L[:, rows].T)
    assert all(s[2] is not None for s in seen)
    # later steps score against the bank, refreshed by earlier steps' rows: not the starting embeddings any more
    assert not torch.allclose(seen[-1][2], (EQ @ EP.T)[[int(torch.argmin((full - r[None, :]).abs().amax(dim=1))) for r in seen[-1][2]]], atol=1e-5)


def test_kl_over_is_validated():
    with pytest.raises(UserError):
        DistillConfig(pool_data="p", query_data="q", labels="l", out="o", kl_over="all")


# ------------------------------------------------------------------------------------ boosted pool prior
def test_tree_ensemble_predicts_exactly_as_scikit_learn_and_round_trips():
    from sklearn.ensemble import GradientBoostingRegressor

    from influcoder.student.prior_trees import TreeEnsemble, fit_trees

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 12)).astype(np.float32)
    y = np.sin(X[:, 0]) + (X[:, 3] > 0.5) * 2.0 + 0.1 * rng.normal(size=300)
    Xt = rng.normal(size=(200, 12)).astype(np.float32)
    Xt[:5] = X[:5]  # rows on training values, where x == threshold decides the branch
    trees, model = fit_trees(X, y, seed=3, n_trees=50)
    assert np.allclose(trees.predict(Xt), model.predict(Xt), rtol=0, atol=1e-12)
    plain = GradientBoostingRegressor(n_estimators=30, max_depth=3, learning_rate=0.1, random_state=0).fit(X, y)
    assert np.allclose(TreeEnsemble.from_sklearn(plain).predict(Xt), plain.predict(Xt), rtol=0, atol=1e-12)
    lo, hi = trees.bounds()
    big = rng.normal(scale=100.0, size=(500, 12))
    p = trees.predict(big)
    assert lo <= p.min() and p.max() <= hi and lo < hi
    back = TreeEnsemble.from_tensors(trees.to_tensors())
    assert np.array_equal(back.predict(Xt), trees.predict(Xt))
    with pytest.raises(ValueError):
        trees.predict(Xt[:, :5])


def test_style_features_hand_values():
    from influcoder.student.prior_trees import STYLE_FEATURES, style_features
    from influcoder.data.records import Record

    f = style_features([Record(id="a", prompt="Is Jupiter a planet?", response="Jupiter is a planet."),
                        Record(id="b", prompt="2+2?", response=" 4 "), "x = f(1);\nok"])
    assert f.shape == (3, len(STYLE_FEATURES)) and f.dtype == np.float32
    d = {n: f[:, k] for k, n in enumerate(STYLE_FEATURES)}
    assert d["response_prompt_word_overlap"][0] == pytest.approx(1.0) and d["response_prompt_word_overlap"][1] == 0.0
    assert list(d["response_is_number"]) == [0.0, 1.0, 0.0]
    assert d["response_ends_with_period"][0] == 1.0 and d["response_ends_with_period"][2] == 0.0
    assert d["response_code_char_share"][2] == pytest.approx(4 / 12) and d["response_newline_share"][2] == pytest.approx(1 / 12)
    assert d["log1p_response_words"][0] == pytest.approx(math.log1p(4)) and d["response_digit_share"][1] == pytest.approx(1 / 3)


def _encoder_with_trees(tiny_bert_dir, kappa=0.7):
    from influcoder.student.encoder import InfluenceEncoder
    from influcoder.student.prior import build_prior
    from influcoder.student.prior_trees import STYLE_FEATURES, fit_trees

    enc = InfluenceEncoder.from_pretrained(str(tiny_bert_dir), max_length=32, seed=0)
    enc.prior = build_prior(enc.embedding_dim, 8, seed=1)
    with torch.no_grad():
        enc.prior.mlp[2].weight.normal_()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, enc.embedding_dim + 2 + len(STYLE_FEATURES))).astype(np.float32)
    trees, _ = fit_trees(X, X[:, -1] * 0.5 + rng.normal(size=80) * 0.1, seed=0, n_trees=20)
    enc.set_prior_trees(trees, kappa, trees.bounds())
    return enc


def test_boosted_prior_scores_as_one_inner_product_and_survives_save_and_load(tmp_path, tiny_bert_dir):
    from influcoder.student.encoder import PRIOR_TREES_FILE, InfluenceEncoder
    from influcoder.data.records import Record

    enc = _encoder_with_trees(tiny_bert_dir)
    pool = [Record(id=f"p{i}", prompt=f"say {w}", response=r) for i, (w, r) in
            enumerate([("alpha", "42"), ("beta", "beta is the answer."), ("gamma", "x = [1, 2]\nprint(x)"), ("delta", "ok")])]
    queries = ["what is alpha", "count to three"]
    P, Q = enc.encode(pool), enc.encode_query(queries)
    # slow reference from the parts: cos + w·tanh(MLP) + κ·clip(g)
    EP, EQ = enc.text_embeddings(pool), enc.text_embeddings(queries, side="query")
    F = enc.prior_features(pool)
    with torch.no_grad():
        b_mlp = enc.prior(enc.prior_input(torch.from_numpy(EP), torch.from_numpy(F))).numpy()
    X = np.hstack([EP, F])
    lo, hi = enc.prior_trees_clip
    g = enc.prior_trees_kappa * np.clip(enc.prior_trees.predict(X), lo, hi)
    assert np.abs(g).max() > 1e-3
    ref = EQ @ EP.T + (b_mlp + g)[None, :]
    assert np.allclose(Q @ P.T, enc.score_scale() * ref, atol=1e-5)
    assert np.allclose(np.linalg.norm(P, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        assert np.allclose(enc.prior_scores(torch.from_numpy(EP), torch.from_numpy(F)).numpy(), b_mlp + g, atol=1e-5)
    with pytest.raises(ValueError):  # the two length features alone cannot feed the trees
        enc.tree_scores(EP, enc.length_features(pool))
    out = enc.save(tmp_path / "enc")
    assert (out / PRIOR_TREES_FILE).exists()
    md = json.loads((out / "influcoder_encoder.json").read_text())
    assert md["prior"]["trees"]["kappa"] == pytest.approx(0.7) and "kappa" in md["prior"]["score"]
    back = InfluenceEncoder.from_pretrained(str(out))
    assert np.allclose(back.encode(pool), P, atol=1e-6) and np.allclose(back.encode_query(queries), Q, atol=1e-6)
    # κ is part of the weights, so the encoder's fingerprint changes with it
    from influcoder.student.loading import encoder_fingerprint

    f1 = encoder_fingerprint(out)
    back.set_prior_trees(back.prior_trees, 0.3, back.prior_trees_clip)
    back.save(out)
    assert encoder_fingerprint(out) != f1
    back = InfluenceEncoder.from_pretrained(str(out))
    # removing the trees and saving again leaves no stale trees file behind
    back.set_prior_trees(None, 0.0, (0.0, 0.0))
    back.save(out)
    assert not (out / PRIOR_TREES_FILE).exists()
    assert "trees" not in json.loads((out / "influcoder_encoder.json").read_text())["prior"]


def test_boosted_prior_is_fitted_in_train_and_learns_a_pool_factor_of_form(tmp_path, tiny_bert_dir):
    """Labels whose pool factor is the response's form (a bare number: +1): the trees, fitted after training on
    the training pool rows, rank held-out pool rows by it; the choice of κ (0 among the candidates) is logged."""
    from influcoder.student.encoder import InfluenceEncoder
    from influcoder.data.records import FieldSpec, read_records

    rng = np.random.default_rng(0)
    pool, queries = [], []
    for i in range(60):
        ws = rng.choice(WORDS, size=2, replace=False)
        resp = str(int(rng.integers(1, 99))) if i % 2 else f"the answer is {ws[1]} {ws[0]}."
        pool.append({"id": f"p{i}", "prompt": f"say {ws[0]}", "response": resp})
    for j in range(12):
        queries.append({"id": f"q{j}", "prompt": f"what is {rng.choice(WORDS)}", "response": "7"})
    M = np.array([[1.0 * (i % 2) + 0.05 * rng.normal() for _ in queries] for i in range(60)], dtype=np.float32)
    pf, qf, lf = tmp_path / "pool.jsonl", tmp_path / "q.jsonl", tmp_path / "labels.npy"
    pf.write_text("".join(json.dumps(r) + "\n" for r in pool))
    qf.write_text("".join(json.dumps(r) + "\n" for r in queries))
    np.save(lf, M)
    write_meta(lf, {"pool_ids": [r["id"] for r in pool], "query_ids": [r["id"] for r in queries]})
    logs = []
    out = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "trees", epochs=1, val_pool=20, pool_prior=True, prior_trees=True),
                progress=False, log=logs.append)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    tr = [r for r in rows if r.get("model") == "prior trees"]
    assert len(tr) == 1 and [c["lambda"] for c in tr[0]["candidates"]][0] == 0.0 and len(tr[0]["candidates"]) == 6
    assert any("boosted pool prior" in line for line in logs)
    enc = InfluenceEncoder.from_pretrained(str(out))
    assert enc.prior_trees is not None and enc.prior_trees_kappa > 0
    split = json.loads((out / "split.json").read_text())
    recs = {r.id: r for r in read_records(pf, FieldSpec.from_names(preset="prompt-response"))[0]}
    val = [recs[i] for i in split["val_pool_ids"]]
    g = enc.tree_scores(enc.text_embeddings(val), enc.prior_features(val))
    truth = np.array([int(r.id[1:]) % 2 for r in val])
    assert g[truth == 1].min() > g[truth == 0].max()
    # without the trees the same run saves none
    out2 = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "notrees", epochs=1, val_pool=20, pool_prior=True,
                      prior_trees=False), progress=False)
    assert InfluenceEncoder.from_pretrained(str(out2)).prior_trees is None
    assert not any(r.get("model") == "prior trees" for r in map(json.loads, (out2 / "metrics.jsonl").read_text().splitlines()))


def test_boosted_prior_with_no_spread_is_not_attached(tmp_path, tiny_bert_dir, monkeypatch):
    """Trees that predict one value for every validation row (nothing to split on) add nothing: κ stays 0."""
    from influcoder.student import prior_trees
    from influcoder.student.encoder import InfluenceEncoder

    real = prior_trees.fit_trees

    def constant(X, y, **kw):
        return real(X, np.full_like(np.asarray(y, dtype=np.float64), 0.3), **kw)

    monkeypatch.setattr(prior_trees, "fit_trees", constant)
    pf, qf, lf = _write_problem(tmp_path)
    out = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "flat", epochs=1, pool_prior=True, prior_trees=True), progress=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    tr = [r for r in rows if r["model"] == "prior trees"][0]
    assert tr["kappa"] == 0.0 and len(tr["candidates"]) == 1
    assert InfluenceEncoder.from_pretrained(str(out)).prior_trees is None


def test_encoder_method_without_prior_is_the_bare_embeddings_cosine(tmp_path, tiny_bert_dir):
    """EncoderMethod(prior=False), a diagnostic row: the cosine of the student's embeddings without its pool prior
    (the same weights; only the prior's two coordinates left out)."""
    from influcoder import InfluenceEncoder
    from influcoder.eval.baselines import EncoderMethod
    from influcoder.student.prior import build_prior
    from influcoder.data.records import Record

    enc = InfluenceEncoder.from_pretrained(tiny_bert_dir)
    enc.prior = build_prior(enc.embedding_dim, 8, seed=1)
    with torch.no_grad():
        enc.prior.mlp[2].weight.normal_()
        enc.prior.raw_w.fill_(1.3)
    enc.save(tmp_path / "e", {"base_encoder": "tiny"})
    pool = [Record(f"p{i}", f"prompt {i}", t) for i, t in enumerate(["paris", "blue cat sat", "2 3 and 5", "hello"])]
    queries = [Record("q0", "ask", "a b c d e f"), Record("q1", "ask", "cat")]
    with_prior = EncoderMethod(str(tmp_path / "e")).scores(pool, queries)
    bare = EncoderMethod(str(tmp_path / "e"), prior=False).scores(pool, queries)
    plain = InfluenceEncoder.from_pretrained(tiny_bert_dir)  # the same weights without the prior
    Ep, Eq = plain.encode(pool), plain.encode(queries, side="query")
    np.testing.assert_allclose(bare, Ep @ Eq.T, atol=1e-5)
    assert not np.allclose(with_prior, bare, atol=1e-3)


def _dense_targets(root: Path, lf: Path, k: int, pf: Path | None = None, qf: Path | None = None) -> Path:
    """A dense-target file for the label file's ids. With the records files: a fixed linear map of each text's
    word counts (so the targets are learnable from the text); without: random coordinates."""
    from influcoder.teacher.labels import load_labels
    from influcoder.data.records import FieldSpec, read_records

    L = load_labels(lf)
    rng = np.random.default_rng(0)
    if pf is None:
        T = rng.normal(size=(len(L.pool_ids) + len(L.query_ids), k))
    else:
        spec = FieldSpec.from_names(preset="prompt-response")
        recs = {r.id: r for f in (pf, qf) for r in read_records(f, spec)[0]}
        W = rng.normal(size=(len(WORDS), k))
        counts = np.array([[f"{recs[i].prompt} {recs[i].response}".split().count(w) for w in WORDS]
                           for i in L.pool_ids + L.query_ids], dtype=float)
        T = counts @ W + 0.05 * rng.normal(size=(len(counts), k))
    tf = root / "targets.npy"
    np.save(tf, T.astype(np.float32))
    write_meta(tf, {"kind": "dense-targets", "pool_ids": L.pool_ids, "query_ids": L.query_ids, "k": k})
    return tf


def test_dense_target_alone_pulls_every_embedding_onto_its_target(tmp_path, tiny_bert_dir):
    """rank_weight 0, dense_weight 1, targets a function of the text and labels their cosine: the trained
    student's pool embeddings (training rows) are far closer to their own unit targets than the untrained
    encoder's, its validation ranking improves although no label was read, and the epoch rows log the dense loss."""
    from influcoder import InfluenceEncoder
    from influcoder.teacher.labels import load_dense_targets
    from influcoder.data.records import FieldSpec, read_records

    from influcoder.teacher.labels import load_labels

    pf, qf, lf = _write_problem(tmp_path)
    tf = _dense_targets(tmp_path, lf, 4, pf, qf)
    L, T0 = load_labels(lf), np.load(tf)  # the teacher: the cosine of the targets, as ⟨ĉ_p, ĉ_q⟩ approximates it
    U = T0 / np.linalg.norm(T0, axis=1, keepdims=True)
    np.save(lf, np.ascontiguousarray(U[:len(L.pool_ids)] @ U[len(L.pool_ids):].T, dtype=np.float32))
    kw = dict(epochs=6, pool_prior=False, lr=2e-2, patience=None, dropout=0.0, projection_dim=8, freeze_layers=0,
              dense_targets=str(tf), dense_weight=1.0, rank_weight=0.0, queries_per_batch=8)
    out = train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "dense", **kw), progress=False)
    split = json.loads((out / "split.json").read_text())
    T = load_dense_targets(tf)
    spec = FieldSpec.from_names(preset="prompt-response")
    recs = {r.id: r for r in read_records(pf, spec)[0]}

    def align(enc) -> float:
        ids = split["train_pool_ids"]
        E = enc.text_embeddings([recs[i] for i in ids], side="pool")[:, :4]
        t = T.rows(ids, "pool")
        return float((E * (t / np.linalg.norm(t, axis=1, keepdims=True))).sum(axis=1).mean())

    start = InfluenceEncoder.from_pretrained(str(tiny_bert_dir), projection_dim=8, max_length=32, seed=0)
    trained = InfluenceEncoder.from_pretrained(str(out))
    hist = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    dense_rows = [r["train_loss_dense"] for r in hist if r.get("model") == "trained"]
    assert len(dense_rows) == 6 and dense_rows[-1] < 0.6 * dense_rows[0], dense_rows
    assert align(trained) > align(start) + 0.3, (align(start), align(trained))
    md = json.loads((out / "influcoder_encoder.json").read_text())
    assert md["validation"]["per_anchor_spearman"] > md["validation_untrained"]["per_anchor_spearman"] + 0.15
    assert md["dense_targets"]["sha256"] and md["training_config"]["dense_weight"] == 1.0


def test_dense_target_errors_are_clear(tmp_path, tiny_bert_dir):
    pf, qf, lf = _write_problem(tmp_path)
    base = dict(pool_data="p", query_data="q", labels="l", out="o")
    with pytest.raises(UserError, match="needs dense_targets"):
        DistillConfig(**base, dense_weight=1.0)
    with pytest.raises(UserError, match="nothing to train on"):
        DistillConfig(**base, rank_weight=0.0)
    tf = _dense_targets(tmp_path, lf, 16)
    with pytest.raises(UserError, match="k = 16 dense coordinates need an embedding of at least that dimension, the student's is 8"):
        train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "small", pool_prior=False, projection_dim=8,
                   dense_targets=str(tf), dense_weight=1.0), progress=False)
    from influcoder.teacher.labels import load_labels

    L = load_labels(lf)
    short = tmp_path / "short.npy"
    np.save(short, np.ones((len(L.pool_ids) - 1 + len(L.query_ids), 4), np.float32))
    write_meta(short, {"kind": "dense-targets", "pool_ids": L.pool_ids[1:], "query_ids": L.query_ids, "k": 4})
    with pytest.raises(UserError, match=f"short.npy: no dense target for pool id '{L.pool_ids[0]}'"):
        train(_cfg(tmp_path, tiny_bert_dir, pf, qf, lf, "short", pool_prior=False, projection_dim=8,
                   dense_targets=str(short), dense_weight=1.0, val_pool=0.05), progress=False)
