"""Exact-query scoring's pieces against slow, obviously-correct references (numpy SVD, scikit-learn Ridge), and the
encoder's response-keeping text against the tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from influcoder.student.exact_query import ExactQueryModel, coordinates, fit_ridge_head, form_features, principal_basis, unit_rows
from influcoder.data.records import Record


def _grads(n=60, d=500, rank=12, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, rank)) * np.linspace(5, 0.5, rank)) @ rng.standard_normal((rank, d)) \
        + 0.01 * rng.standard_normal((n, d))


def test_principal_basis_is_the_svds_top_subspace():
    U = unit_rows(_grads())
    assert np.allclose(np.linalg.norm(U, axis=1), 1.0, atol=1e-6)
    for k in (1, 5, 12):
        V, s = principal_basis(U, k)
        assert V.shape == (500, k) and np.allclose(V.T @ V, np.eye(k), atol=1e-5)
        _, S, Vt = np.linalg.svd(U.astype(np.float64), full_matrices=False)
        np.testing.assert_allclose(s, S[:k], rtol=1e-6)
        # same subspace (the projector does not depend on signs or on rotations inside ties)
        np.testing.assert_allclose(V @ V.T, Vt[:k].T @ Vt[:k], atol=1e-5)
        np.testing.assert_allclose(coordinates(U, V), U @ V, atol=1e-5)
    # a full-rank basis keeps every inner product: the teacher's cosine exactly
    V, _ = principal_basis(U, 12)
    C = coordinates(U, V)
    np.testing.assert_allclose(C @ C.T, U @ U.T, atol=2e-3)
    with pytest.raises(ValueError, match="k must be between"):
        principal_basis(U, 61)
    with pytest.raises(ValueError, match="span only"):
        principal_basis(U[:3].repeat(5, axis=0), 4)


def test_ridge_head_matches_scikit_learn():
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    X = rng.standard_normal((80, 7)) * [1, 10, 0.1, 1, 1, 3, 1] + 2
    X[:, 4] = 1.0  # a constant feature: standardised to zero, not divided by 0
    C = X @ rng.standard_normal((7, 5)) + rng.standard_normal((80, 5))
    for alpha in (0.1, 10.0, 1000.0):
        h = fit_ridge_head(X, C, alpha)
        sc = StandardScaler().fit(X)
        Z = sc.transform(X)
        ref = Ridge(alpha=alpha).fit(Z, C)
        Xn = rng.standard_normal((9, 7))
        np.testing.assert_allclose(h.predict(Xn), ref.predict(sc.transform(Xn)), rtol=1e-5, atol=1e-5)


def test_model_round_trips_and_scores_by_one_inner_product(tmp_path):
    U = unit_rows(_grads())
    V, _ = principal_basis(U, 8)
    X = np.random.default_rng(2).standard_normal((60, 6))
    m = ExactQueryModel(V=V, head=fit_ridge_head(X, coordinates(U, V), 1.0), encoder="minilm-l6", info={"basis": "train"})
    m2 = ExactQueryModel.load(m.save(tmp_path / "eq"))
    np.testing.assert_array_equal(m2.V, m.V)
    np.testing.assert_allclose(m2.pool_coordinates(X), m.pool_coordinates(X), rtol=1e-6)
    G = _grads(seed=3)[:4] * 7.0  # any scale: rows are normalised
    np.testing.assert_allclose(m2.query_coordinates(G), unit_rows(G) @ V, atol=1e-5)
    assert m2.describe()["k"] == 8 and m2.describe()["basis"] == "train"


def test_form_features():
    recs = [Record(id="a", prompt="What is 2+2?", response="4"), Record(id="b", prompt="", response="Hello there.\nBye.")]
    F = form_features(recs)
    assert F.shape == (2, 10) and F[0, 1] == 1.0 and F[1, 1] == 0.0  # a bare number
    assert F[1, 8] == 0.0 and F[0, 8] == pytest.approx(np.log1p(4))  # prompt words: What, is, 2, 2


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from test_embed import make_tiny_encoder
    from transformers import AutoTokenizer

    d = make_tiny_encoder(tmp_path_factory.mktemp("enc") / "e")
    return AutoTokenizer.from_pretrained(str(d))


def test_budget_text_keeps_the_response_and_cuts_the_prompt_from_the_left(tok):
    from influcoder.student.texts import budget_text

    def n_tokens(t):
        return len(tok(t)["input_ids"])  # with [CLS] / [SEP]

    rng = np.random.default_rng(0)
    for _ in range(40):
        prompt = " ".join(rng.choice(["alpha", "beta", "x=1;", "Paris", "42"], size=int(rng.integers(0, 40))))
        response = " ".join(rng.choice(["yes", "no", "def f():", "7"], size=int(rng.integers(1, 30))))
        rec = Record(id="r", prompt=prompt, response=response)
        for L in (8, 32, 64, 128):
            text, seen = budget_text(rec, tok, L)
            assert n_tokens(text) <= L
            r_tokens = len(tok(response, add_special_tokens=False)["input_ids"])
            if r_tokens <= L - 2:
                assert seen == "full" and text.endswith(response)
                kept = text[: len(text) - len(response)].removesuffix("\n")
                assert prompt.endswith(kept)  # what is left of the prompt is its end
                # nothing more of the prompt would have fitted
                if kept != prompt:
                    more = prompt[: len(prompt) - len(kept)].rstrip().rsplit(" ", 1)[-1] + " " + kept
                    assert n_tokens(more + "\n" + response) > L or not more.strip()
            else:
                assert seen == "part" and response.startswith(text) and n_tokens(text) == L
    # today's text cut from the right loses the answer after a long prompt; budget_text does not
    rec = Record(id="q", prompt="word " * 200, response="the answer is 7")
    text, seen = budget_text(rec, tok, 64)
    assert seen == "full" and text.endswith("the answer is 7")


def test_the_encoder_keeps_the_response_and_records_the_contract(tmp_path):
    """Two records that differ only in their response after a long prompt: the legacy right cut gave them
    bit-identical embeddings; the input contract reads both responses. The mode is saved with the encoder, an
    encoder saved before it existed keeps the legacy cut, and a plain string is refused where a pool prior
    needs the response."""
    import json

    from test_embed import make_tiny_encoder

    from influcoder.student.texts import TEXT_MODE, TEXT_MODE_LEGACY
    from influcoder.student.encoder import InfluenceEncoder
    from influcoder.student.prior import build_prior
    enc = InfluenceEncoder.from_pretrained(str(make_tiny_encoder(tmp_path / "e")), max_length=64)
    assert enc.text_mode == TEXT_MODE == "response-kept"
    a = Record(id="a", prompt="alpha beta " * 100, response="the answer is 7")
    b = Record(id="b", prompt=a.prompt, response="no idea, sorry")
    def ids(texts):  # the token ids the model reads (sentence-transformers' own tokenisation and truncation)
        return enc.model.tokenize(texts)["input_ids"].tolist()

    ta, tb = enc.texts([a, b])
    assert ta.endswith("\nthe answer is 7") and tb.endswith("\nno idea, sorry") and ids([ta]) != ids([tb])
    assert len(ids([ta])[0]) <= 64
    np.testing.assert_allclose(enc.encode([a, b]), enc.encode([ta, tb]), atol=1e-6)  # encode reads those texts
    ea, eb = enc.encode([a, b])
    assert enc.response_seen([a, b]) == {"full": 1.0, "part": 0.0, "none": 0.0, "n": 2}
    # the same record as one flattened string is read as it is (cut from the right: the answer is lost)
    from influcoder.data.records import record_to_text

    flat = [record_to_text(a), record_to_text(b)]
    assert ids(flat[:1]) == ids(flat[1:])
    # saved and reloaded: the mode travels; an old folder (metadata without it) reads as before
    d = enc.save(tmp_path / "saved", metadata={"note": "x"})
    assert json.loads((d / "influcoder_encoder.json").read_text())["text"] == {"mode": TEXT_MODE}
    again = InfluenceEncoder.from_pretrained(str(d), max_length=64)
    np.testing.assert_allclose(again.encode([a, b]), np.stack([ea, eb]), atol=1e-6)
    meta = json.loads((d / "influcoder_encoder.json").read_text())
    del meta["text"]
    (d / "influcoder_encoder.json").write_text(json.dumps(meta))
    old = InfluenceEncoder.from_pretrained(str(d), max_length=64)
    assert old.text_mode == TEXT_MODE_LEGACY
    assert old.texts([a, b]) == flat  # what the legacy cut did: identical tokens for both
    assert old.response_seen([a, b])["none"] == 1.0
    # a pool prior reads the response: a plain string on the pool side is a text-only row, and says so; the
    # query side reads strings silently (no prior there)
    import warnings

    from influcoder.student.encoder import TextOnlyRowWarning

    enc.prior = build_prior(enc.embedding_dim, 8)
    with pytest.warns(TextOnlyRowWarning, match=r"1 pool item\(s\) \(the first: item 1\) are plain strings"):
        enc.encode([a, "some text"], side="pool")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert enc.encode(["some text"], side="query").shape[0] == 1
        enc.encode([a], side="pool")


def test_check_reference_refuses_gradients_of_another_teacher():
    """The one check both the scorer (new queries) and `influcoder exact-query` use: every reference key must agree."""
    from influcoder.core.errors import UserError
    from influcoder.student.exact_query import REFERENCE_KEYS, check_reference

    ref = {k: f"{k}-a" for k in REFERENCE_KEYS}
    check_reference(dict(ref, n=3), ref, "these")  # other manifest fields do not matter
    for k in REFERENCE_KEYS:
        with pytest.raises(UserError, match=f"these differ from the basis's gradients in '{k}'"):
            check_reference({**ref, k: "other"}, ref, "these")
