"""Stores: resume after kill -9 equals an uninterrupted run; corruption and incompatibility are caught."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from influcoder.teacher.influence import compute_influence
from influcoder.teacher.labels import load_labels
from influcoder.data.records import DataSpec
from influcoder.teacher.stock import StockConfig, stock
from influcoder.teacher.store import StoreError, open_store

from conftest import SAMPLE_ROWS


def _cfg(model_dir, data, out, **kw):
    data_fields = {k: kw.pop(k) for k in ("limit", "skip_invalid", "preset", "prompt_field", "response_field") if k in kw}
    base = dict(model=str(model_dir), data=DataSpec(str(data), **data_fields), out=str(out), proj_dim=32, shard_size=3,
                batch_size=4)
    base.update(kw)
    return StockConfig(**base)


def test_store_roundtrip_and_api(tiny_model_dir, sample_jsonl, tmp_path):
    out = stock(_cfg(tiny_model_dir, sample_jsonl, tmp_path / "s"), progress=False)
    s = open_store(out, verify=True)
    assert s.ids == [r["id"] for r in SAMPLE_ROWS]
    assert s.matrix.shape == (10, 32) and len(s.manifest["shards"]) == 4
    full = np.asarray(s.matrix)
    assert np.array_equal(np.concatenate([b for _, b in s.iter_blocks(4)]), full)
    assert np.array_equal(s.matrix[2:7], full[2:7]) and np.array_equal(s.matrix[[9, 0]], full[[9, 0]])
    m = s.manifest
    for key in ("model", "model_hash", "lora", "projection", "dtype", "data", "influcoder_version", "loss"):
        assert m[key], key
    assert m["data"]["sha256"] and m["projection"] == {"kind": "countsketch", "dim": 32, "seed": 0, "output_dim": 32}


def test_batching_does_not_change_the_store(tiny_model_dir, sample_jsonl, tmp_path):
    a = open_store(stock(_cfg(tiny_model_dir, sample_jsonl, tmp_path / "a", batch_size=1), progress=False))
    b = open_store(stock(_cfg(tiny_model_dir, sample_jsonl, tmp_path / "b", batch_size=8, padding_side="left"), progress=False))
    np.testing.assert_allclose(np.asarray(a.matrix), np.asarray(b.matrix), rtol=1e-4, atol=1e-6)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from influcoder.teacher.stock import StockConfig, stock
    cfg = StockConfig(model=sys.argv[1], data=sys.argv[2], out=sys.argv[3], proj_dim=32, shard_size=3, batch_size=4)
    def die(shard):
        if shard == 1:
            # leave a half-written temporary shard behind, as a kill during a write would
            open(os.path.join(sys.argv[3], "shards", "shard-00002.npy.tmp"), "wb").write(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
    stock(cfg, progress=False, on_shard=die)
    """
)


def test_kill_9_then_resume_equals_uninterrupted(tiny_model_dir, sample_jsonl, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tiny_model_dir), str(sample_jsonl), str(out)])
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(StoreError, match="incomplete"):
        open_store(out)
    partial = json.loads((out / "manifest.json").read_text())
    assert [s["index"] for s in partial["shards"]] == [0, 1] and not partial["complete"]
    stock(_cfg(tiny_model_dir, sample_jsonl, out), progress=False)  # same command again
    resumed = open_store(out, verify=True)
    clean = open_store(stock(_cfg(tiny_model_dir, sample_jsonl, tmp_path / "clean"), progress=False))
    assert resumed.ids == clean.ids
    assert np.array_equal(np.asarray(resumed.matrix), np.asarray(clean.matrix))
    assert resumed.manifest["stats"]["rows_computed_last_run"] == 4  # only shards 2 and 3 were recomputed


def test_resume_refuses_other_settings(tiny_model_dir, sample_jsonl, tmp_path):
    stock(_cfg(tiny_model_dir, sample_jsonl, tmp_path / "s"), progress=False)
    with pytest.raises(StoreError, match="other settings.*projection") as e:
        stock(_cfg(tiny_model_dir, sample_jsonl, tmp_path / "s", proj_dim=64), progress=False)
    # both versions are printed, setting by setting
    assert "projection.dim: 32 (saved) vs 64 (now)" in str(e.value)


def test_truncated_and_corrupted_shards_are_detected(tiny_model_dir, sample_jsonl, tmp_path):
    out = stock(_cfg(tiny_model_dir, sample_jsonl, tmp_path / "s"), progress=False)
    shard = out / "shards" / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    open_store(out)  # sizes still match: only the checksum can tell
    with pytest.raises(StoreError, match="shard-00001.npy: checksum mismatch"):
        open_store(out, verify=True)
    with pytest.raises(StoreError, match="checksum"):
        compute_influence(out, out, tmp_path / "l.npy", progress=False)
    shard.write_bytes(bytes(data[:-20]))
    with pytest.raises(StoreError, match="shard-00001.npy: shard is .* bytes.*truncated"):
        open_store(out)


def test_influence_matches_dense_cosine_and_refuses_mixing(tiny_model_dir, sample_jsonl, tmp_path):
    pool = stock(_cfg(tiny_model_dir, sample_jsonl, tmp_path / "p"), progress=False)
    q = stock(_cfg(tiny_model_dir, sample_jsonl, tmp_path / "q", limit=4), progress=False)
    lab = compute_influence(pool, q, tmp_path / "lab.npy", pool_block=3, query_block=2, progress=False)
    L = load_labels(lab)
    P, Q = np.asarray(open_store(pool).matrix), np.asarray(open_store(q).matrix)
    ref = (P / np.linalg.norm(P, axis=1, keepdims=True)) @ (Q / np.linalg.norm(Q, axis=1, keepdims=True)).T
    np.testing.assert_allclose(L.matrix, ref, rtol=1e-5, atol=1e-6)
    assert L.matrix.dtype == np.float32 and L.pool_ids == open_store(pool).ids and L.query_ids == open_store(q).ids
    uncached = compute_influence(pool, q, tmp_path / "lab2.npy", pool_block=3, query_block=2, query_cache_mb=0, progress=False)
    assert np.array_equal(np.load(uncached), np.asarray(L.matrix))
    other = stock(_cfg(tiny_model_dir, sample_jsonl, tmp_path / "o", seed=1, limit=4), progress=False)
    with pytest.raises(StoreError, match="different"):
        compute_influence(pool, other, tmp_path / "bad.npy", progress=False)
    assert not (tmp_path / "bad.npy").exists()


def test_skip_invalid_reports_rows(tiny_model_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    rows = SAMPLE_ROWS[:4] + [{"id": "bad", "prompt": "p", "response": ""}, {"id": "bad2", "prompt": "p"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from influcoder.data.records import RecordError

    with pytest.raises(RecordError, match="row 4, field 'response': empty response"):
        stock(_cfg(tiny_model_dir, data, tmp_path / "s"), progress=False)
    assert not (tmp_path / "s" / "manifest.json").exists()
    out = stock(_cfg(tiny_model_dir, data, tmp_path / "s", skip_invalid=True), progress=False)
    assert len(open_store(out)) == 4
    report = [json.loads(l) for l in (out / "invalid.jsonl").read_text().splitlines()]
    assert [(r["row"], r["field"]) for r in report] == [(4, "response"), (5, "response")]


def test_warmup_adapter_is_saved_reused_for_queries_and_checked(tiny_model_dir, sample_jsonl, tmp_path):
    pool = stock(_cfg(tiny_model_dir, sample_jsonl, tmp_path / "p", warmup_steps=2, warmup_lr=1e-2), progress=False)
    assert (pool / "adapter" / "adapter_config.json").exists()
    pm = open_store(pool).manifest
    assert pm["lora"]["includes_lora_a"] and pm["stats"]["warmup_losses"] and len(pm["stats"]["warmup_losses"]) == 2
    q = stock(_cfg(tiny_model_dir, sample_jsonl, tmp_path / "q", limit=3, adapter=str(pool / "adapter")), progress=False)
    assert open_store(q).manifest["adapter_hash"] == pm["adapter_hash"]
    compute_influence(pool, q, tmp_path / "l.npy", progress=False)
    fresh = stock(_cfg(tiny_model_dir, sample_jsonl, tmp_path / "f", limit=3), progress=False)
    with pytest.raises(StoreError, match="different adapter_hash"):
        compute_influence(pool, fresh, tmp_path / "bad.npy", progress=False)


def test_dense_targets_match_an_svd_reference_and_keep_inner_products(tiny_model_dir, sample_jsonl, tmp_path):
    """``influcoder targets``: coordinates in the top-k right singular vectors of the stacked unit gradients
    (numpy SVD as the slow reference; the sign of each direction is free), the basis fitted on the rows asked."""
    from influcoder.teacher.influence import compute_dense_targets
    from influcoder.teacher.labels import load_dense_targets

    pool = stock(_cfg(tiny_model_dir, sample_jsonl, tmp_path / "p"), progress=False)
    q = stock(_cfg(tiny_model_dir, sample_jsonl, tmp_path / "q", limit=4), progress=False)
    P, Q = np.asarray(open_store(pool).matrix), np.asarray(open_store(q).matrix)
    unit = lambda X: X / np.linalg.norm(X, axis=1, keepdims=True)  # noqa: E731
    Up, Uq = unit(P.astype(np.float64)), unit(Q.astype(np.float64))
    pids, qids = open_store(pool).ids, open_store(q).ids
    basis_p, basis_q = pids[:7], qids[1:3]
    T = load_dense_targets(compute_dense_targets(pool, q, tmp_path / "t.npy", 5, basis_pool_ids=basis_p,
                                                 basis_query_ids=basis_q))
    _, _, Vt = np.linalg.svd(np.concatenate([Up[:7], Uq[1:3]]), full_matrices=False)
    ref = np.concatenate([Up, Uq]) @ Vt[:5].T
    got = np.asarray(T.matrix, dtype=np.float64)
    signs = np.sign((got * ref).sum(axis=0))
    np.testing.assert_allclose(got, ref * signs, atol=1e-4)
    assert T.k == 5 and T.meta["basis_rows"]["pool_ids"] == basis_p
    np.testing.assert_allclose(T.rows([qids[2], qids[0]], "query"), got[[len(pids) + 2, len(pids)]], atol=1e-6)
    # with k = the basis rows' rank (7: the query store repeats pool rows), their inner products are the labels
    full = load_dense_targets(compute_dense_targets(pool, q, tmp_path / "f.npy", 7, basis_pool_ids=basis_p,
                                                    basis_query_ids=basis_q))
    lab = load_labels(compute_influence(pool, q, tmp_path / "l.npy", progress=False))
    np.testing.assert_allclose(full.rows(basis_p, "pool") @ full.rows(basis_q, "query").T,
                               np.asarray(lab.matrix)[:7, 1:3], atol=1e-4)
    with pytest.raises(ValueError, match="no dense target for pool id 'nope'"):
        T.rows(["nope"], "pool")
    with pytest.raises(StoreError, match="basis id 'zz'"):
        compute_dense_targets(pool, q, tmp_path / "bad.npy", 3, basis_pool_ids=["zz"])
    with pytest.raises(StoreError, match="k must be between 1 and"):
        compute_dense_targets(pool, q, tmp_path / "bad.npy", 99)
    assert not (tmp_path / "bad.npy").exists()
