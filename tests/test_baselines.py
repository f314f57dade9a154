"""Each baseline against a direct, obviously-correct computation on a tiny case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from influcoder.eval import baselines as B
from influcoder.eval import features as F
from influcoder.data.records import Record

from conftest import SAMPLE_ROWS


def _records(rows=SAMPLE_ROWS):
    return [Record(r["id"], r["prompt"], r["response"], row=i) for i, r in enumerate(rows)]


# ----------------------------------------------------------------------------- lexical
def test_bm25_matches_formula_loop():
    docs = [["a", "b", "a"], ["b", "c"], ["c", "c", "d", "a"]]
    qs = [["a", "c"], ["d", "d"]]
    vocab = sorted({t for d in docs + qs for t in d})
    cnt = lambda xs: np.array([[x.count(t) for t in vocab] for x in xs])
    got = B.bm25_scores(cnt(docs), cnt(qs), k1=1.2, b=0.75)
    N, avgdl = len(docs), np.mean([len(d) for d in docs])
    for i, d in enumerate(docs):
        for j, q in enumerate(qs):
            s = 0.0
            for t in q:  # repeats counted
                n_t = sum(t in dd for dd in docs)
                idf = math.log(1 + (N - n_t + 0.5) / (n_t + 0.5))
                f = d.count(t)
                s += idf * f * (1.2 + 1) / (f + 1.2 * (1 - 0.75 + 0.75 * len(d) / avgdl))
            assert got[i, j] == pytest.approx(s)


def test_bm25_and_tfidf_methods_rank_the_matching_document_first():
    pool = [Record("p0", "cats purr", "cats purr loudly"), Record("p1", "dogs bark", "dogs bark at night"),
            Record("p2", "rain", "rain falls on the roof")]
    queries = [Record("q0", "why do dogs bark", "dogs bark"), Record("q1", "roof", "rain on roof")]
    for m in (B.BM25Method(), B.TfidfMethod()):
        s = m.scores(pool, queries)
        assert s.shape == (3, 2) and s.dtype == np.float32
        assert s[:, 0].argmax() == 1 and s[:, 1].argmax() == 2
        assert "bytes_per_example" in m.cost


def test_tfidf_is_cosine_of_sklearn_vectors():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity
    from influcoder.data.records import record_to_text

    recs = _records()
    pool, queries = recs[:6], recs[6:]
    X = TfidfVectorizer(sublinear_tf=True).fit_transform([record_to_text(r) for r in pool + queries])
    np.testing.assert_allclose(B.TfidfMethod().scores(pool, queries), cosine_similarity(X[:6], X[6:]), atol=1e-6)


def test_length_and_random():
    recs = _records()
    s = B.LengthMethod().scores(recs[:4], recs[4:6])
    assert (s[:, 0] == s[:, 1]).all()
    assert s[:, 0].tolist() == [-len(r.response) for r in recs[:4]]
    r1 = B.RandomMethod(3).scores(recs[:4], recs[4:6])
    np.testing.assert_array_equal(r1, B.RandomMethod(3).scores(recs[:4], recs[4:6]))


# ----------------------------------------------------------------------------- decoder features
@pytest.fixture
def feats(tiny_model_dir, tmp_path):
    return B.DecoderFeatures(str(tiny_model_dir), max_length=64, batch_size=3, token_budget=200,
                             cache_dir=tmp_path / "cache")


def _one(model_dir, rec, max_length=64):
    """Load, encode one example without padding."""
    from influcoder.core.models import load_decoder
    from influcoder.teacher.tokenization import encode_record

    model, tok, _ = load_decoder(str(model_dir), attn_implementation="eager")
    e = encode_record(tok, rec, max_length)
    return model, tok, e


def test_repsim_and_rds_equal_per_example_reference(feats, tiny_model_dir):
    recs = _records()
    got = feats.hidden(recs)
    for i, r in enumerate(recs):
        model, _, e = _one(tiny_model_dir, r)
        with torch.no_grad():
            hs = model.get_decoder()(input_ids=torch.tensor([e.ids])).last_hidden_state[0]
        T = hs.shape[0]
        w = torch.arange(1, T + 1, dtype=torch.float32)
        np.testing.assert_allclose(got["mean"][i], hs.mean(0).numpy(), atol=1e-5)
        np.testing.assert_allclose(got["rds"][i], (hs * (w / w.sum())[:, None]).sum(0).numpy(), atol=1e-5)
    s = B.RepSimMethod(feats).scores(recs[:5], recs[5:])
    np.testing.assert_allclose(s, B.cosine_matrix(got["mean"][:5], got["mean"][5:]), atol=1e-6)
    s2 = B.RDSPlusMethod(feats).scores(recs[:5], recs[5:])
    np.testing.assert_allclose(s2, B.cosine_matrix(got["rds"][:5], got["rds"][5:]), atol=1e-6)


def _reference_grads(model_dir, rec, rank=4, seed=0, logra=None):
    """One example, no padding: autograd .grad of the LoRA B matrices and, for LoGra, of every base weight."""
    from influcoder.teacher.gradients import LoraGradients, LoraSettings
    from influcoder.teacher.tokenization import collate

    model, tok, e = _one(model_dir, rec)
    lg = LoraGradients(model, LoraSettings(rank=rank, seed=seed))
    mods = [(n, m) for n, m in lg.causal_lm.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    params = {s.name: s.module.weight for s in lg.slots}
    for p in params.values():
        p.requires_grad_(True)
    for _, m in mods:
        m.base_layer.weight.requires_grad_(True)
    batch = collate([e], tok.pad_token_id)
    out = lg.causal_lm(input_ids=batch.input_ids, use_cache=False)
    logits = out.logits[0, :-1]
    lab = batch.labels[0, 1:]
    loss = torch.nn.functional.cross_entropy(logits, lab, ignore_index=-100, reduction="mean")
    loss.backward()
    g = torch.cat([params[s.name].grad.reshape(-1) for s in lg.slots]).double()
    lg_feats = None
    if logra is not None:
        k, lseed = logra
        blocks = []
        for i, (name, m) in enumerate(mods):
            gen = torch.Generator().manual_seed(lseed * 1_000_003 + i)
            p_in = torch.randn(k, m.base_layer.in_features, generator=gen) / np.sqrt(k)
            p_out = torch.randn(k, m.base_layer.out_features, generator=gen) / np.sqrt(k)
            W = m.base_layer.weight.grad  # (out, in) = Σ_t δ_t x_tᵀ
            blocks.append((p_out @ W @ p_in.T).reshape(-1))
        lg_feats = torch.cat(blocks).double()
    return g, lg_feats


def test_lora_gradients_and_logra_equal_autograd_reference(feats, tiny_model_dir):
    recs = _records()[:5]
    got = feats.lora(recs, rank=4, seed=0, logra_k=3, logra_seed=1)
    full = got["unit"].astype(np.float64) * got["norm"][:, None]
    for i, r in enumerate(recs):
        g, lgf = _reference_grads(tiny_model_dir, r, rank=4, logra=(3, 1))
        np.testing.assert_allclose(full[i], g.numpy(), rtol=2e-3, atol=2e-3 * float(g.abs().max()))
        np.testing.assert_allclose(got["norm"][i], float(g.norm()), rtol=1e-4)
        np.testing.assert_allclose(got["logra"][i], lgf.numpy(), rtol=1e-3, atol=1e-4 * float(lgf.abs().max()))


def test_feature_cache_reuses_rows_and_keeps_order(feats, tiny_model_dir):
    recs = _records()
    a = feats.lora(recs[:4], rank=4)
    key = feats.key("lora", rank=4, seed=0, logra_k=None, logra_seed=0, full=True)
    assert feats.cache.meta[key]["count"] == 4
    b = feats.lora(list(reversed(recs[:6])), rank=4)  # only 2 new rows computed
    assert feats.cache.meta[key]["count"] == 6
    np.testing.assert_array_equal(b["unit"][::-1][:4], a["unit"])
    # a fresh object on the same folder computes nothing
    f2 = B.DecoderFeatures(str(tiny_model_dir), max_length=64, batch_size=3, token_budget=200, cache_dir=feats.cache.root)
    c = f2.lora(recs[:6], rank=4)
    assert f2.cache.meta[key]["count"] == 6
    np.testing.assert_array_equal(c["unit"], b["unit"][::-1])


def test_gradsim_is_cosine_of_rademacher_projection(feats, tiny_model_dir):
    from influcoder.teacher.projection import ProjectionConfig, make_projector

    recs = _records()
    m = B.GradSimMethod(feats, rank=4, proj_dim=64, seed=5)
    s = m.scores(recs[:6], recs[6:])
    ref = [_reference_grads(tiny_model_dir, r, rank=4)[0].float() for r in recs]
    proj = make_projector(len(ref[0]), ProjectionConfig("rademacher", 64, 5))
    P = proj.project(torch.stack(ref)).numpy()
    np.testing.assert_allclose(s, B.cosine_matrix(P[:6], P[6:]), atol=5e-3)
    # and the projection keeps it close to the exact cosine
    G = torch.stack(ref).numpy()
    assert np.corrcoef(s.ravel(), B.cosine_matrix(G[:6], G[6:]).ravel())[0, 1] > 0.8
    assert m.cost["bytes_per_example"] == 64 * 4


def test_logra_fim_equals_explicit_preconditioned_cosine(feats):
    recs = _records()
    plain = B.LoGraMethod(feats, k=2, rank=4).scores(recs[:7], recs[7:])
    fim = B.LoGraMethod(feats, k=2, rank=4, fim=True).scores(recs[:7], recs[7:])
    f = feats.lora(recs, 4, 0, logra_k=2, logra_seed=0, want_full=False)["logra"].astype(np.float64)
    P, Q = f[:7], f[7:]
    np.testing.assert_allclose(plain, B.cosine_matrix(P, Q), atol=1e-5)
    # explicit: per 4-dim module block, Minv = (F + λI)^-1 ; score = pᵀ M q / sqrt(pᵀMp qᵀMq) with block-diagonal M
    M = np.zeros((P.shape[1], P.shape[1]))
    for s in range(0, P.shape[1], 4):
        Fm = P[:, s:s + 4].T @ P[:, s:s + 4] / 7
        lam = 0.1 * np.trace(Fm) / 4
        M[s:s + 4, s:s + 4] = np.linalg.inv(Fm + lam * np.eye(4))
    num = P @ M @ Q.T
    den = np.sqrt(np.einsum("ij,jk,ik->i", P, M, P))[:, None] * np.sqrt(np.einsum("ij,jk,ik->i", Q, M, Q))[None]
    np.testing.assert_allclose(fim, num / den, atol=1e-4)


# ----------------------------------------------------------------------------- DataInf
def _explicit_datainf(P, Q, lambda_param):
    """v_qᵀ [(1/(nλ)) Σ_i (I − g_i g_iᵀ/(λ + |g_i|²))] g_p with explicit d × d matrices, one tensor."""
    n, d = P.shape
    lam = (P ** 2).mean() / lambda_param
    H = sum(np.eye(d) - np.outer(g, g) / (lam + g @ g) for g in P) / (n * lam)
    return P @ H @ Q.T


def test_datainf_matches_explicit_matrices_and_sherman_morrison():
    rng = np.random.default_rng(0)
    layers_p = [rng.normal(size=(5, 4)), rng.normal(size=(5, 3)) * 0.1]
    layers_q = [rng.normal(size=(2, 4)), rng.normal(size=(2, 3)) * 0.1]
    got = B.datainf_scores(layers_p, layers_q, lambda_param=10.0)
    ref = sum(_explicit_datainf(P, Q, 10.0) for P, Q in zip(layers_p, layers_q))
    np.testing.assert_allclose(got, ref, rtol=1e-10)
    # n = 1: DataInf's formula is the exact inverse (g gᵀ + λI)⁻¹ (Sherman–Morrison)
    g = rng.normal(size=(1, 6)); q = rng.normal(size=(3, 6))
    lam = (g ** 2).mean() / 10.0
    exact = g @ np.linalg.inv(np.outer(g[0], g[0]) + lam * np.eye(6)) @ q.T
    np.testing.assert_allclose(B.datainf_scores([g], [q]), exact, rtol=1e-8)


def test_datainf_method_uses_layout_split(feats):
    recs = _records()
    m = B.DataInfMethod(feats, rank=4)
    s = m.scores(recs[:7], recs[7:])
    g = feats.lora(recs, 4)
    full = g["unit"].astype(np.float32) * g["norm"].astype(np.float32)[:, None]
    layout = feats.lora_layout(4)
    o, Ps, Qs = 0, [], []
    for it in layout:
        d = int(np.prod(it["shape"]))
        Ps.append(full[:7, o:o + d]); Qs.append(full[7:, o:o + d]); o += d
    ref = sum(_explicit_datainf(P.astype(np.float64), Q.astype(np.float64), 10.0) for P, Q in zip(Ps, Qs))
    np.testing.assert_allclose(s, ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())


def test_make_method_and_errors(feats):
    assert B.make_method({"kind": "bm25"}).name == "bm25"
    assert B.make_method({"kind": "gradsim", "rank": 4, "name": "less"}, feats).name == "less"
    with pytest.raises(ValueError, match="unknown method"):
        B.make_method({"kind": "nope"})
    with pytest.raises(ValueError, match="needs decoder features"):
        B.make_method({"kind": "datainf"})


@pytest.mark.slow
def test_semantic_encoder_method_real_minilm():
    recs = _records()
    m = B.EncoderMethod("minilm-l6")
    s = m.scores(recs[:5], recs[5:])
    assert s.shape == (5, 5) and m.cost["bytes_per_example"] == 384 * 4
    # = cosine of the packaged sentence-transformers model's own embeddings of prompt + "\n" + response
    from sentence_transformers import SentenceTransformer

    from influcoder.core.models import resolve_encoder
    from influcoder.data.records import record_to_text

    st = SentenceTransformer(str(resolve_encoder("minilm-l6")), device="cpu")
    e = st.encode([record_to_text(r) for r in recs], normalize_embeddings=True)
    np.testing.assert_allclose(s, e[:5] @ e[5:].T, atol=1e-5)


def test_feature_cache_two_writers_keep_each_others_rows(tmp_path):
    """Two cache objects (as two processes would) filling one folder: neither drops the other's rows."""
    recs = _records()
    calls = []

    def compute(rs):
        calls.append(len(rs))
        return {"x": np.array([[len(r.response)] for r in rs], np.float32)}

    a, b = F._FeatureCache(tmp_path), F._FeatureCache(tmp_path)
    a.get("k", recs[:3], compute, ("x",))
    b.get("k", recs[3:6], compute, ("x",))
    a.get("k", recs[6:8], compute, ("x",))  # a's in-memory index is stale: it must re-read before merging
    c = F._FeatureCache(tmp_path)
    out = c.get("k", recs[:8], compute, ("x",))
    assert calls == [3, 3, 2]
    assert out["x"][:, 0].tolist() == [len(r.response) for r in recs[:8]]


def test_feature_cache_writes_in_one_millisecond_do_not_collide(tmp_path, monkeypatch):
    """Two writes by one process within the same clock tick get distinct shard files (a fast CI machine
    once overwrote the first shard with the second)."""
    recs = _records()
    monkeypatch.setattr(B.time, "time", lambda: 1_000_000.0)

    def compute(rs):
        return {"x": np.array([[len(r.response)] for r in rs], np.float32)}

    a = F._FeatureCache(tmp_path)
    a.get("k", recs[:3], compute, ("x",))
    a.get("k", recs[3:5], compute, ("x",))
    out = F._FeatureCache(tmp_path).get("k", recs[:5], compute, ("x",))
    assert out["x"][:, 0].tolist() == [len(r.response) for r in recs[:5]]


def test_feature_cache_chunks_are_saved_as_they_finish_and_a_killed_pass_resumes(tmp_path):
    """With ``chunk`` the missing rows are computed a chunk at a time and each chunk is saved before the next
    begins: a pass killed in its third chunk keeps the first two, and the rerun computes only the rest."""
    recs = _records()[:8]
    calls, logs = [], []

    def compute(rs):
        calls.append(len(rs))
        if len(calls) == 3 and boom:
            raise KeyboardInterrupt
        return {"x": np.array([[len(r.response)] for r in rs], np.float32)}

    boom = True
    with pytest.raises(KeyboardInterrupt):
        F._FeatureCache(tmp_path).get("k", recs, compute, ("x",), chunk=3, log=logs.append)
    assert calls == [3, 3, 2] and len(logs) == 2 and "6/8 rows computed" in logs[-1]
    boom = False
    out = F._FeatureCache(tmp_path).get("k", recs, compute, ("x",), chunk=3)
    assert calls == [3, 3, 2, 2]  # only the two rows of the killed chunk
    assert out["x"][:, 0].tolist() == [len(r.response) for r in recs]


def test_gradsim_projection_feeds_column_blocks_and_equals_the_whole_matrix_projected():
    """GradSimMethod.project streams the float16 gradients a column block at a time (one generation of the
    dense matrix for every row): the same as projecting the whole float32 matrix, across several blocks."""
    from influcoder.teacher.projection import BLOCK, ProjectionConfig, make_projector

    rng = np.random.default_rng(0)
    n, d = 300, 2 * BLOCK + 123
    g = rng.normal(size=(n, d)).astype(np.float32)
    norm = np.linalg.norm(g, axis=1)
    unit = (g / norm[:, None]).astype(np.float16)
    m = B.GradSimMethod(B.DecoderFeatures.__new__(B.DecoderFeatures), rank=4, proj_dim=32, seed=3)
    got = m.project({"unit": unit, "norm": norm})
    full = torch.from_numpy(unit.astype(np.float32)) * torch.from_numpy(norm).float()[:, None]
    want = make_projector(d, ProjectionConfig("rademacher", 32, 3)).project(full).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
