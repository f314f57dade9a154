"""FAISS index: exact search equals brute-force cosine (ids and scores, tie-aware), approximate kinds and
their recall check, save/reopen, encoder mismatch refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_embed import make_rows, other_encoder, tiny_encoder, write_jsonl  # noqa: F401  (fixtures)


def assert_topk_matches_bruteforce(scores, pos, matrix, queries, k, tol=1e-5):
    """Tie-aware: the k returned scores equal the k best brute-force scores, every returned row really has
    its returned score, and every row strictly better than the k-th best is returned."""
    brute = queries @ matrix.T
    for qi in range(len(queries)):
        b = brute[qi]
        best = np.sort(b)[::-1][:k]
        np.testing.assert_allclose(scores[qi], best, atol=tol)
        np.testing.assert_allclose(b[pos[qi]], scores[qi], atol=tol)
        assert len(set(pos[qi].tolist())) == k
        must = set(np.nonzero(b > best[-1] + tol)[0].tolist())
        assert must <= set(pos[qi].tolist())


@pytest.fixture
def store_with_ties(tmp_path, tiny_encoder):
    from influcoder.search.embed import EmbedConfig, embed_file, open_embeddings

    rows = make_rows(80)
    for i in range(5):  # exact duplicates under other ids → identical embeddings → tied scores
        rows.append({**rows[i], "id": f"dup{i}"})
    f = write_jsonl(tmp_path / "pool.jsonl", rows)
    return open_embeddings(embed_file(EmbedConfig(str(tiny_encoder), str(f), str(tmp_path / "emb"), shard_size=16),
                                      progress=False))


def test_exact_index_equals_bruteforce_cosine(tmp_path, store_with_ties):
    from influcoder.search.index import IndexConfig, build_index, exact_search, open_index

    s = store_with_ties
    idx = open_index(build_index(IndexConfig(str(s.root), str(tmp_path / "idx"))))
    m = s.matrix()
    rng = np.random.default_rng(0)
    queries = np.concatenate([m[:5], m[[10, 20]] + 0.01 * rng.standard_normal((2, s.dim)).astype(np.float32)])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores, pos = idx.search(queries, 10)
    assert_topk_matches_bruteforce(scores, pos, m, queries, 10)
    # row i and dup{i} have identical embeddings: exactly tied scores; ties are ordered by position
    for i in range(5):
        d = s.ids.index(f"dup{i}")
        assert (m[i] == m[d]).all()
        for a, b in zip(range(9), range(1, 10)):
            if scores[i][a] == scores[i][b]:
                assert pos[i][a] < pos[i][b]
    # the numpy reference (ties broken by position) agrees, tie-aware
    ref_s, ref_p = exact_search(queries, m, 10)
    assert_topk_matches_bruteforce(ref_s, ref_p, m, queries, 10)
    np.testing.assert_allclose(ref_s, scores, atol=1e-5)
    assert idx.ids == s.ids and (idx.rows == s.rows).all()
    meta = json.loads((tmp_path / "idx" / "index_meta.json").read_text())
    assert meta["encoder"]["fingerprint"] == s.fingerprint and meta["kind"] == "flat"


@pytest.mark.parametrize("kind", ["ivf-flat", "ivf-pq", "hnsw"])
def test_approximate_indexes_and_check(tmp_path, store_with_ties, kind):
    from influcoder.search.index import IndexConfig, build_index, open_index

    s = store_with_ties
    cfg = IndexConfig(str(s.root), str(tmp_path / kind), kind=kind, nlist=2, nprobe=2, pq_m=8, pq_bits=4,
                      check=True, check_queries=30, check_k=5)
    idx = open_index(build_index(cfg))
    c = idx.meta["check"]
    assert c["queries"] == 30 and c["k"] == 5
    # the reported recall equals a brute-force count: the same 30 stored rows as queries (own row dropped),
    # approximate top-5 vs exact cosine, a hit when the returned row's true score reaches the exact 5th score
    m = s.matrix()
    qrows = np.sort(np.random.default_rng(cfg.seed + 1).choice(len(m), size=30, replace=False))
    _, approx = idx.search(m[qrows], 6)
    hits = 0
    for q, row in zip(qrows, approx):
        got = [r for r in row.tolist() if r != q][:5]
        true = m @ m[q]
        true[q] = -np.inf
        kth = np.sort(true)[::-1][4]
        hits += sum(1 for r in got if r >= 0 and true[r] >= kth - 1e-5)
    assert c["recall"] == pytest.approx(hits / (5 * 30))
    if kind != "ivf-pq":  # nprobe = nlist and a tiny HNSW graph are exact here
        assert c["recall"] == 1.0
        m = s.matrix()
        scores, pos = idx.search(m[:4], 5)
        assert_topk_matches_bruteforce(scores, pos, m, m[:4], 5, tol=1e-4)


def test_recall_check_is_sensitive(tmp_path):
    """A deliberately poor IVF (1 of 64 cells probed) on random vectors must report recall well below 1."""
    from influcoder.search.embed import normalise
    from influcoder.search.index import IndexConfig, build_faiss, check_recall

    x = normalise(np.random.default_rng(0).standard_normal((4000, 16)))
    idx = build_faiss(x, IndexConfig("-", "-", kind="ivf-flat", nlist=64, nprobe=1, train_size=4000))
    c = check_recall(idx, x, x[:100], 10, exclude=np.arange(100))
    assert c["recall"] < 0.8


def test_index_errors(tmp_path, store_with_ties):
    from influcoder.core.errors import UserError
    from influcoder.search.index import IndexConfig, build_index, open_index

    with pytest.raises(UserError, match="kind"):
        IndexConfig("a", "b", kind="annoy")
    with pytest.raises(UserError, match="not an embedding store"):
        build_index(IndexConfig(str(tmp_path), str(tmp_path / "i")))
    with pytest.raises(UserError, match="not an index folder"):
        open_index(tmp_path)
    build_index(IndexConfig(str(store_with_ties.root), str(tmp_path / "i")))
    with pytest.raises(UserError, match="already exists"):
        build_index(IndexConfig(str(store_with_ties.root), str(tmp_path / "i")))
    with pytest.raises(UserError, match="divide"):
        build_index(IndexConfig(str(store_with_ties.root), str(tmp_path / "j"), kind="ivf-pq", nlist=2, pq_m=5))


def test_cli_index_check(tmp_path, store_with_ties):
    from typer.testing import CliRunner

    from influcoder.app.cli import app

    r = CliRunner().invoke(app, ["index", "--embeddings", str(store_with_ties.root), "--out", str(tmp_path / "i"),
                                 "--kind", "hnsw", "--check", "--check-queries", "20"])
    assert r.exit_code == 0, r.output
    line = next(l for l in r.stdout.splitlines() if l.startswith("{"))
    assert json.loads(line)["recall"] == 1.0


def test_index_refuses_an_unfinished_store(tmp_path, tiny_encoder):
    from influcoder.search.embed import EmbedConfig, EmbeddingStoreError, embed_file
    from influcoder.search.index import IndexConfig, build_index

    class Stop(Exception):
        pass

    f = write_jsonl(tmp_path / "pool.jsonl", make_rows(30))
    with pytest.raises(Stop):
        embed_file(EmbedConfig(str(tiny_encoder), str(f), str(tmp_path / "emb"), shard_size=10), progress=False,
                   on_shard=lambda i: (_ for _ in ()).throw(Stop()))
    with pytest.raises(EmbeddingStoreError, match="incomplete.*influcoder embed"):
        build_index(IndexConfig(str(tmp_path / "emb"), str(tmp_path / "idx")))
    assert not (tmp_path / "idx").exists()
