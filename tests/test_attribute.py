"""attribute / filter / OOD: results equal brute-force cosine, output formats, encoder mismatch refused,
command-line texts, OOD flags."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from test_embed import make_rows, other_encoder, tiny_encoder, write_jsonl  # noqa: F401  (fixtures)


@pytest.fixture
def built(tmp_path, tiny_encoder):
    from influcoder.search.embed import EmbedConfig, embed_file
    from influcoder.search.index import IndexConfig, build_index

    pool = write_jsonl(tmp_path / "pool.jsonl", make_rows(40))
    queries = write_jsonl(tmp_path / "queries.jsonl", make_rows(4, seed=5))
    emb = embed_file(EmbedConfig(str(tiny_encoder), str(pool), str(tmp_path / "emb"), dtype="float32"), progress=False)
    idx = build_index(IndexConfig(str(emb), str(tmp_path / "idx")))
    return pool, queries, emb, idx


def brute(encoder_dir, pool_rows, query_items):
    from influcoder.student.encoder import InfluenceEncoder
    from influcoder.data.records import Record

    enc = InfluenceEncoder.from_pretrained(str(encoder_dir))
    P = enc.encode([Record(r["id"], r["prompt"], r["response"]) for r in pool_rows], side="pool")
    Q = enc.encode(query_items, side="query")
    return P @ Q.T  # pool × query cosine


def test_the_queries_data_spec_is_read_with_its_limit_and_skip_invalid(tmp_path, tiny_encoder, built):
    """attribute and filter read their queries as the data spec says: limit and skip_invalid apply (the flags
    --queries.limit / --queries.skip-invalid reach them)."""
    from influcoder.data.records import DataSpec
    from influcoder.search.attribute import AttributeConfig, attribute
    from influcoder.search.filter import FilterConfig, filter_pool

    pool, queries, emb, idx = built
    bad = tmp_path / "queries_bad.jsonl"
    bad.write_text('{"id": "broken"}\n' + queries.read_text())
    spec = DataSpec(str(bad), limit=2, skip_invalid=True)
    recs = attribute(AttributeConfig(str(tiny_encoder), str(idx), queries=spec, top_k=3, ood={"enabled": False}))
    first_two = [json.loads(l)["id"] for l in queries.read_text().splitlines()[:2]]
    assert sorted({r["query_id"] for r in recs}) == sorted(first_two) and len(recs) == 2 * 3
    out = filter_pool(FilterConfig(str(tiny_encoder), str(tmp_path / "f"), data=str(pool), pool_embeddings=str(emb),
                                   queries=spec, ood={"enabled": False}), progress=False)
    assert json.loads((out / "report.json").read_text())["n_queries"] == 2


def test_attribute_equals_bruteforce_and_writes_jsonl_and_csv(tmp_path, tiny_encoder, built):
    from influcoder.search.attribute import AttributeConfig, attribute
    from influcoder.data.records import Record, record_to_text

    pool, queries, _, idx = built
    prow = [json.loads(l) for l in pool.read_text().splitlines()]
    qrow = [json.loads(l) for l in queries.read_text().splitlines()]
    out = tmp_path / "attr.jsonl"
    recs = attribute(AttributeConfig(str(tiny_encoder), str(idx), queries=str(queries), top_k=5, out=str(out),
                                     ood={"enabled": False}))
    assert [json.loads(l) for l in out.read_text().splitlines()] == recs
    S = brute(tiny_encoder, prow, [Record(r["id"], r["prompt"], r["response"]) for r in qrow])
    texts = {r["id"]: record_to_text(Record(r["id"], r["prompt"], r["response"])) for r in prow}
    assert len(recs) == 4 * 5
    for j, q in enumerate(qrow):
        got = [r for r in recs if r["query_id"] == q["id"]]
        assert [r["rank"] for r in got] == [1, 2, 3, 4, 5]
        best = np.sort(S[:, j])[::-1][:5]
        np.testing.assert_allclose([r["score"] for r in got], best, atol=1e-4)
        ids = [p["id"] for p in prow]
        for r in got:
            assert abs(S[ids.index(r["id"]), j] - r["score"]) < 1e-4
            assert r["text"] == texts[r["id"]] and r["row"] == ids.index(r["id"])
    attribute(AttributeConfig(str(tiny_encoder), str(idx), queries=str(queries), top_k=5, out=str(tmp_path / "a.csv"),
                              csv=True, ood={"enabled": False}))
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    assert [(r["query_id"], int(r["rank"]), r["id"]) for r in rows] == [(r["query_id"], r["rank"], r["id"]) for r in recs]
    np.testing.assert_allclose([float(r["score"]) for r in rows], [r["score"] for r in recs], rtol=1e-6)


def test_encoder_mismatch_is_refused(tmp_path, tiny_encoder, other_encoder, built):
    from influcoder.search.attribute import AttributeConfig, attribute
    from influcoder.search.filter import FilterConfig, filter_pool
    from influcoder.search.embed import EmbedConfig, embed_file
    from influcoder.core.errors import UserError

    pool, queries, emb, idx = built
    with pytest.raises(UserError, match="not the encoder the index"):
        attribute(AttributeConfig(str(other_encoder), str(idx), queries=str(queries)))
    # query embeddings made with another encoder
    qemb = embed_file(EmbedConfig(str(other_encoder), str(queries), str(tmp_path / "qemb"), side="query"), progress=False)
    with pytest.raises(UserError, match="made with encoder"):
        attribute(AttributeConfig(str(tiny_encoder), str(idx), queries=str(qemb)))
    with pytest.raises(UserError, match="made with encoder"):
        filter_pool(FilterConfig(str(other_encoder), str(tmp_path / "f"), data=str(pool), pool_embeddings=str(emb),
                                 queries=str(queries)), progress=False)


def test_query_text_on_command_line(tmp_path, tiny_encoder, built):
    from typer.testing import CliRunner

    from influcoder.app.cli import app

    _, _, _, idx = built
    out = tmp_path / "a.jsonl"
    r = CliRunner().invoke(app, ["attribute", "--encoder", str(tiny_encoder), "--index", str(idx), "--query-text",
                                 "alpha beta", "--query-text", "python code", "--top-k", "3", "--out", str(out), "--no-ood"])
    assert r.exit_code == 0, r.output
    recs = [json.loads(l) for l in out.read_text().splitlines()]
    assert {r["query_id"] for r in recs} == {"text:0", "text:1"} and len(recs) == 6
    assert recs[0]["query_text"] == "alpha beta"


def test_bad_query_file_names_file_row_field(tmp_path, tiny_encoder, built):
    from influcoder.search.attribute import AttributeConfig, attribute
    from influcoder.data.records import RecordError

    _, _, _, idx = built
    rows = make_rows(3)
    rows[2]["prompt"] = 7
    bad = write_jsonl(tmp_path / "q.jsonl", rows)
    with pytest.raises(RecordError, match=r"q\.jsonl, row 2, field 'prompt'"):
        attribute(AttributeConfig(str(tiny_encoder), str(idx), queries=str(bad)))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "json"])
@pytest.mark.parametrize("aggregate", ["mean", "max"])
def test_filter_scores_and_filtered_copy(tmp_path, tiny_encoder, fmt, aggregate):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from influcoder.search.filter import FilterConfig, filter_pool
    from influcoder.data.records import Record, iter_rows

    rows = [{k: v for k, v in r.items()} for r in make_rows(30)]
    qrows = make_rows(3, seed=7)
    src = tmp_path / f"pool.{fmt}"
    if fmt == "jsonl":
        write_jsonl(src, rows)
    elif fmt == "csv":
        with open(src, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), src)
    else:
        src.write_text(json.dumps({"examples": rows}))
    qf = write_jsonl(tmp_path / "q.jsonl", qrows)
    out = tmp_path / "out"
    filter_pool(FilterConfig(str(tiny_encoder), str(out), data=str(src), queries=str(qf), aggregate=aggregate,
                             fraction=0.2, ood={"enabled": False}), progress=False)
    S = brute(tiny_encoder, rows, [Record(r["id"], r["prompt"], r["response"]) for r in qrows])
    expect = S.mean(1) if aggregate == "mean" else S.max(1)
    scores = [json.loads(l) for l in (out / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 30 and set(scores[0]) == {"id", "score"}
    assert all(a["score"] >= b["score"] for a, b in zip(scores, scores[1:]))
    ids = [r["id"] for r in rows]
    for s in scores:  # float16 storage of the pool embeddings
        assert abs(s["score"] - expect[ids.index(s["id"])]) < 2e-3
    top = {s["id"] for s in scores[:6]}
    kept = [obj for _, obj in iter_rows(out / f"filtered.{fmt}")]
    assert len(kept) == 24 and not top & {str(r["id"]) for r in kept}
    assert set(kept[0]) == set(rows[0])  # all original fields, same format
    ranked = [json.loads(l) for l in (out / "ranked.jsonl").read_text().splitlines()]
    assert [r["rank"] for r in ranked] == list(range(1, 31)) and sum(r["selected"] for r in ranked) == 6
    # --keep with a threshold keeps exactly the examples above it
    t = scores[9]["score"]
    filter_pool(FilterConfig(str(tiny_encoder), str(tmp_path / "k"), data=str(src), queries=str(qf), aggregate=aggregate,
                             threshold=t, keep=True, ood={"enabled": False}), progress=False)
    kept = {str(obj["id"]) for _, obj in iter_rows(tmp_path / "k" / f"filtered.{fmt}")}
    assert kept == {s["id"] for s in scores if s["score"] > t}


def test_filter_pool_as_texts(tmp_path, tiny_encoder):
    from influcoder.search.filter import FilterConfig, filter_pool

    out = filter_pool(FilterConfig(str(tiny_encoder), str(tmp_path / "o"), pool_texts=["alpha beta", "cat dog", "rain"],
                                   query_texts=["alpha"], fraction=1 / 3, ood={"enabled": False}), progress=False)
    kept = [json.loads(l) for l in (out / "filtered.jsonl").read_text().splitlines()]
    assert len(kept) == 2 and set(kept[0]) == {"id", "text"}


def test_ood_flags_far_items_and_not_reference_copies(tmp_path, tiny_encoder, built):
    from influcoder.search.attribute import AttributeConfig, run_attribute
    from influcoder.search.filter import FilterConfig, filter_pool

    pool, queries, _, idx = built
    ref = write_jsonl(tmp_path / "ref.jsonl", make_rows(60, seed=11))
    ref_rows = [json.loads(l) for l in ref.read_text().splitlines()]
    far = "ZZZZZZZZZZZZZZZZZZZZZ"  # far from the reference under the tiny encoder (NN cosine ≈ 0.72 vs ≥ 0.88)
    recs, rep = run_attribute(AttributeConfig(
        str(tiny_encoder), str(idx), query_texts=[ref_rows[0]["prompt"] + "\n" + ref_rows[0]["response"], far], top_k=2,
        ood={"reference": [str(ref)]}))
    q = {r["id"]: r for r in rep["query_ood"]}
    assert q["text:0"]["nn_similarity"] > 0.999 and q["text:0"]["ood"] is False
    assert q["text:1"]["ood"] is True and q["text:1"]["nn_similarity"] < rep["ood_reference"]["query"]["threshold"]
    assert all(r["pool_nn_similarity"] is not None for r in recs)
    # filter: pool items are compared with the reference too; an explicit threshold is honoured
    pf = write_jsonl(tmp_path / "p.jsonl", ref_rows[:5] + [{"id": "far", "prompt": "", "response": far}])
    out = filter_pool(FilterConfig(str(tiny_encoder), str(tmp_path / "f"), data=str(pf), query_texts=["alpha"],
                                   ood={"reference": [str(ref)]}), progress=False)
    ood = {(r["side"], r["id"]): r for r in map(json.loads, (out / "ood.jsonl").read_text().splitlines())}
    assert ood[("pool", "far")]["ood"] is True
    assert all(not ood[("pool", r["id"])]["ood"] for r in ref_rows[:5])
    rep = json.loads((out / "report.json").read_text())
    assert rep["pool_ood"] >= 1 and rep["ood_reference"]["pool"]["calibrated"] is True


def test_ood_without_reference_says_so(tmp_path, tiny_encoder, built):
    from influcoder.search.attribute import AttributeConfig, run_attribute

    _, queries, _, idx = built
    recs, rep = run_attribute(AttributeConfig(str(tiny_encoder), str(idx), queries=str(queries), top_k=1))
    assert recs[0]["query_ood"] is None and any("--reference" in n for n in rep["notes"])


def test_reference_found_in_encoder_metadata(tmp_path):
    from influcoder.search.ood import find_reference_data

    p = write_jsonl(tmp_path / "pool.jsonl", make_rows(3))
    q = write_jsonl(tmp_path / "q.jsonl", make_rows(3))
    meta = {"training": {"config": {"pool_data": str(p), "query_data": str(q), "query_preset": "bbh"}}}
    found = find_reference_data(meta)
    assert [f for f, _ in found["pool"]] == [str(p)] and found["query"][0][1].prompt == ("input",)


def test_reference_data_read_with_the_field_mapping_the_encoder_was_trained_with(tmp_path):
    """An encoder trained with --pool-prompt-field etc.: its saved typed data specs (and, for older
    encoders, the training config's field options) give the reference files their own field mapping."""
    from influcoder.search.ood import find_reference_data
    from influcoder.student.config import DistillConfig
    from influcoder.student.distill import _data_specs
    from influcoder.data.records import DataSpec, read_records

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"key": f"k{i}", "question": f"q {i}", "answer": f"a {i}"}) + "\n" for i in range(3)))
    queries = tmp_path / "queries.json"
    queries.write_text(json.dumps([{"input": "x", "target": "y"}, {"input": "z", "target": "w"}]))
    cfg = DistillConfig(pool_data=DataSpec(str(pool), prompt_field="question", response_field="answer", id_field="key"),
                        query_data=DataSpec(str(queries), preset="bbh"), labels="l.npy", out="o")
    legacy = {"pool_data": str(pool), "query_data": str(queries), "pool_prompt_field": "question",  # older encoders
              "pool_response_field": "answer", "pool_id_field": "key", "query_preset": "bbh"}
    for meta in ({"data_specs": _data_specs(cfg)}, {"training_config": cfg.to_dict()}, {"training_config": legacy}):
        found = find_reference_data(meta)
        (ppath, pspec), = found["pool"]
        (qpath, qspec), = found["query"]
        recs, _ = read_records(ppath, pspec)
        assert [r.id for r in recs] == ["k0", "k1", "k2"] and recs[0].prompt == "q 0" and recs[0].response == "a 0"
        qrecs, _ = read_records(qpath, qspec)
        assert [r.response for r in qrecs] == ["y", "w"]


def test_filter_reuses_its_own_pool_store(tmp_path, tiny_encoder):
    """`filter --pool-embeddings` reads the store an earlier filter (or `embed`) wrote and gives the same
    report and outputs without embedding the pool again."""
    from influcoder.search.filter import FilterConfig, filter_pool

    pool = write_jsonl(tmp_path / "pool.jsonl", make_rows(25))
    queries = write_jsonl(tmp_path / "q.jsonl", make_rows(3, seed=4))
    first = filter_pool(FilterConfig(str(tiny_encoder), str(tmp_path / "a"), data=str(pool), queries=str(queries),
                                     ood={"reference": [str(pool)]}), progress=False)
    again = filter_pool(FilterConfig(str(tiny_encoder), str(tmp_path / "b"), data=str(pool), queries=str(queries),
                                     pool_embeddings=str(first / "pool_embeddings"), ood={"reference": [str(pool)]}),
                        progress=False)
    assert not (again / "pool_embeddings").exists()
    for name in ("scores.jsonl", "ranked.jsonl", "ood.jsonl", "filtered.jsonl"):
        assert (again / name).read_text() == (first / name).read_text(), name
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (first, again))
    assert ra["pool_ood"] == rb["pool_ood"] and ra["ood_reference"] == rb["ood_reference"] and ra["n_pool"] == 25
