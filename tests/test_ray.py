"""Ray backend: ``embed --ray`` writes the local embedding store (same manifest header, ids, rows and
embeddings; indexable, attributable, resumable after a kill) and ``filter --ray`` writes the local filter's
outputs field by field, on 30 real Alpaca rows (JSONL with a blank line, and Parquet) and on tiny random
encoders (no downloads).

One local 2-CPU Ray instance for the whole module (start-up takes seconds). Skipped when ray is not
installed or the shared data folder is absent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray not installed (pip install influcoder[ray])")

from test_embed import make_tiny_encoder  # noqa: E402

from influcoder.search.attribute import AttributeConfig, run_attribute
from influcoder.search.filter import FilterConfig, filter_pool  # noqa: E402
from influcoder.search.embed import EmbedConfig, embed_file, open_embeddings  # noqa: E402
from influcoder.core.errors import UserError  # noqa: E402
from influcoder.data.records import DataSpec  # noqa: E402
from influcoder.search.index import IndexConfig, build_index  # noqa: E402
from influcoder.search.ray_backend import RayConfig, embed_with_ray, filter_with_ray  # noqa: E402

DATA = Path(os.environ.get("INFLUCODER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
ALPACA = DATA / "alpaca" / "alpaca_en_demo.json"
N = 30


@pytest.fixture(scope="module")
def ray_local():
    # Ray starts its workers at niceness 15 by default: on a shared machine they then starve behind every
    # normal-priority job (the test hangs for tens of minutes); give them the test's own priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "300")  # a loaded machine starts the raylet slowly
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> str:
    return str(make_tiny_encoder(tmp_path_factory.mktemp("ray-enc") / "tiny-encoder"))


@pytest.fixture(scope="module")
def alpaca_files(tmp_path_factory) -> dict[str, Path]:
    """30 real Alpaca rows as JSONL (with a blank line, so row numbers ≠ line count) and as Parquet."""
    if not ALPACA.exists():
        pytest.skip(f"{ALPACA} not found (set INFLUCODER_DATA)")
    rows = json.loads(ALPACA.read_text())[:N]
    d = tmp_path_factory.mktemp("ray-data")
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines.insert(7, "")  # a blank line: ids (row numbers) must still agree with the local reader
    (d / "pool.jsonl").write_text("\n".join(lines) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), d / "pool.parquet", row_group_size=8)
    queries = json.loads(ALPACA.read_text())[N : N + 4]
    (d / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    return {"jsonl": d / "pool.jsonl", "parquet": d / "pool.parquet", "queries": d / "queries.jsonl"}


RCFG = RayConfig(num_actors=2, cpus_per_actor=1, rows_per_batch=7, read_blocks=3)  # a pool of 2 actors
RCFG1 = RayConfig(num_actors=1, cpus_per_actor=1, rows_per_batch=7, read_blocks=3)
# Each Ray run starts actor processes that import torch (slow on a loaded machine): one run uses a pool of
# 2 actors (shards finish out of order), the others one actor.

# Manifest entries that describe a run, not the store's content
RUN_KEYS = {"stats", "shards", "influcoder_version"}


def assert_same_store(a, b, atol):
    """Two embedding stores hold the same content: header, ids, rows, shard layout and embeddings."""
    ha = {k: v for k, v in a.manifest.items() if k not in RUN_KEYS}
    hb = {k: v for k, v in b.manifest.items() if k not in RUN_KEYS}
    assert ha == hb
    assert [(s["index"], s["start"], s["stop"]) for s in a.manifest["shards"]] == \
        [(s["index"], s["start"], s["stop"]) for s in b.manifest["shards"]]
    assert a.ids == b.ids and a.rows.tolist() == b.rows.tolist()
    np.testing.assert_allclose(a.matrix(), b.matrix(), atol=atol)


class Killed(Exception):
    pass


def test_embed_ray_is_the_local_store_and_indexes_and_attributes_the_same(ray_local, encoder, alpaca_files, tmp_path):
    """embed --ray → index → attribute equals embed → index → attribute."""
    data = str(alpaca_files["jsonl"])
    common = dict(encoder=encoder, data=DataSpec(data, preset="alpaca"), dtype="float32", batch_size=5, shard_size=11)
    local = open_embeddings(embed_file(EmbedConfig(out=str(tmp_path / "local"), **common), progress=False))
    remote = open_embeddings(embed_with_ray(EmbedConfig(out=str(tmp_path / "ray"), **common), RCFG), verify=True)
    assert len(local) == N and len(local.manifest["shards"]) == 3
    assert remote.rows[-1] == N  # the blank line counts as a row, as in records.iter_rows
    assert_same_store(remote, local, atol=2e-5)
    assert np.abs(local.matrix()[0] - local.matrix()[1]).max() > 1e-3  # the comparison is not vacuous
    assert json.loads((tmp_path / "ray" / "ray_config.json").read_text())["num_actors"] == 2
    results = {}
    for name in ("local", "ray"):
        idx = build_index(IndexConfig(str(tmp_path / name), str(tmp_path / f"idx-{name}")))
        recs, report = run_attribute(AttributeConfig(encoder, str(idx), queries=DataSpec(str(alpaca_files["queries"]),
                                                                                     preset="alpaca"), top_k=5, out=str(tmp_path / f"{name}.jsonl"),
                                                     ood={"enabled": False}))
        results[name] = recs
    lr, rr = results["local"], results["ray"]
    assert len(lr) == 4 * 5
    assert [(r["query_id"], r["rank"], r["id"], r["row"], r["text"]) for r in rr] == \
        [(r["query_id"], r["rank"], r["id"], r["row"], r["text"]) for r in lr]
    np.testing.assert_allclose([r["score"] for r in rr], [r["score"] for r in lr], atol=1e-5)


def test_embed_ray_parquet_float16_limit_and_resume_after_kill(ray_local, encoder, alpaca_files, tmp_path):
    """A Ray run killed after 2 of 5 shards resumes from them: only the other 3 are computed, and the
    store equals an uninterrupted local one."""
    data = str(alpaca_files["parquet"])
    common = dict(encoder=encoder, data=DataSpec(data, preset="alpaca", limit=23), shard_size=5)
    cfg = EmbedConfig(out=str(tmp_path / "ray"), **common)
    seen = []

    def die_after_two(i):
        seen.append(i)
        if len(seen) == 2:
            raise Killed

    with pytest.raises(Killed):
        embed_with_ray(cfg, RCFG1, on_shard=die_after_two)
    m = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert not m["complete"] and sorted(s["index"] for s in m["shards"]) == sorted(seen)
    with pytest.raises(UserError, match="incomplete"):
        open_embeddings(tmp_path / "ray")
    # a shard file written but never listed (killed between rename and manifest) is recomputed, not trusted
    missing = sorted(set(range(5)) - set(seen))
    (tmp_path / "ray" / "shards" / f"shard-{missing[0]:05d}.npy").write_bytes(b"garbage")
    computed = []
    remote = open_embeddings(embed_with_ray(cfg, RCFG1, on_shard=computed.append), verify=True)
    assert sorted(computed) == missing
    local = open_embeddings(embed_file(EmbedConfig(out=str(tmp_path / "local"), **common), progress=False))
    assert remote.manifest["dtype"] == "float16" and len(remote) == 23
    assert_same_store(remote, local, atol=2e-3)
    # a finished store is not recomputed
    embed_with_ray(cfg, RCFG1, on_shard=lambda i: pytest.fail("recomputed a finished store"))


def test_filter_ray_writes_the_local_outputs(ray_local, encoder, alpaca_files, tmp_path):
    data = str(alpaca_files["jsonl"])
    ref = tmp_path / "reference.jsonl"  # OOD reference: the encoder's "training data"
    ref.write_text("".join(json.dumps(r) + "\n" for r in json.loads(ALPACA.read_text())[40:60]))
    common = dict(encoder=encoder, data=DataSpec(data, preset="alpaca"),
                  queries=DataSpec(str(alpaca_files["queries"]), preset="alpaca"), aggregate="max", fraction=0.2, batch_size=4,
                  ood={"reference": [str(ref)], "reference_preset": "alpaca"})
    local = filter_pool(FilterConfig(out=str(tmp_path / "local"), **common), progress=False)
    remote = filter_with_ray(FilterConfig(out=str(tmp_path / "ray"), **common), RCFG1)
    lrep, rrep = (json.loads((d / "report.json").read_text()) for d in (local, remote))
    assert lrep["ood_reference"]["pool"]["n"] == 20 and lrep["n_pool"] == N
    assert rrep.pop("ray") == RCFG1.to_dict()
    assert set(rrep) == set(lrep)
    for key in lrep:
        if key == "seconds":
            continue
        if key == "outputs":
            assert [Path(p).relative_to(remote) for p in rrep[key]] == [Path(p).relative_to(local) for p in lrep[key]]
        elif key == "config":
            assert {**rrep[key], "out": None} == {**lrep[key], "out": None}
        elif key == "score_quantiles":
            np.testing.assert_allclose(list(rrep[key].values()), list(lrep[key].values()), atol=1e-5)
            assert list(rrep[key]) == list(lrep[key])
        elif key == "ood_reference":
            for side in lrep[key]:
                for k, v in lrep[key][side].items():
                    assert rrep[key][side][k] == pytest.approx(v, abs=1e-6), (side, k)
        else:
            assert rrep[key] == lrep[key], key
    for name in ("scores.jsonl", "ranked.jsonl", "ood.jsonl"):
        lr = [json.loads(x) for x in (local / name).read_text().splitlines()]
        rr = [json.loads(x) for x in (remote / name).read_text().splitlines()]
        assert len(lr) == len(rr) >= N
        for a, b in zip(rr, lr):
            assert set(a) == set(b)
            for k in b:
                if isinstance(b[k], float):
                    assert a[k] == pytest.approx(b[k], abs=1e-5), (name, k)
                else:
                    assert a[k] == b[k], (name, k)
    scores = [json.loads(x)["score"] for x in (local / "scores.jsonl").read_text().splitlines()]
    assert np.ptp(scores) > 0.01  # the scores spread: the comparison is not vacuous
    k = int(round(0.2 * N))
    if scores[k - 1] - scores[k] > 1e-5:  # the selection boundary is not a tie
        assert (remote / "filtered.jsonl").read_text() == (local / "filtered.jsonl").read_text()
    assert_same_store(open_embeddings(remote / "pool_embeddings"), open_embeddings(local / "pool_embeddings"), atol=2e-3)


def test_invalid_rows(ray_local, encoder, tmp_path):
    from influcoder.data.records import RecordError

    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n{"id": "0", "prompt": "d", "response": "e"}\n'
                 '{"prompt": "f", "response": "g"}\n')
    out = embed_with_ray(EmbedConfig(encoder=encoder, data=DataSpec(str(p), skip_invalid=True), out=str(tmp_path / "o")), RCFG1)
    got = open_embeddings(out)
    assert got.ids == ["0", "3"] and got.rows.tolist() == [0, 3]  # row 1 has no response; row 2 repeats id "0"
    bad = [json.loads(x) for x in (out / "invalid.jsonl").read_text().splitlines()]
    assert [(b["row"], b["field"]) for b in bad] == [(1, "response"), (2, "id")]
    local = embed_file(EmbedConfig(encoder=encoder, data=DataSpec(str(p), skip_invalid=True), out=str(tmp_path / "loc")), progress=False)
    assert (local / "invalid.jsonl").read_text() == (out / "invalid.jsonl").read_text()
    # without --skip-invalid the first bad row is an error naming file, row and field (as locally), and
    # nothing is written
    for run in (lambda o: embed_with_ray(EmbedConfig(encoder=encoder, data=str(p), out=o), RCFG1),
                lambda o: embed_file(EmbedConfig(encoder=encoder, data=str(p), out=o), progress=False)):
        with pytest.raises(RecordError, match=r"bad\.jsonl, row 1, field 'response'"):
            run(str(tmp_path / "none"))
        assert not (tmp_path / "none").exists()
    # a line that is not JSON stops both paths even with --skip-invalid (records.iter_rows does)
    p.write_text('{"prompt": "a", "response": "b"}\nnot json\n')
    with pytest.raises(RecordError, match=r"row 1: invalid JSON"):
        embed_with_ray(EmbedConfig(encoder=encoder, data=DataSpec(str(p), skip_invalid=True), out=str(tmp_path / "j")), RCFG1)


def test_cli_ray_option(ray_local, encoder, alpaca_files, tmp_path):
    """`--ray ADDRESS` runs `embed` on Ray (the instance started here); `--ray` with no value before another
    option takes the default address and leaves that option alone."""
    from typer.testing import CliRunner

    from influcoder.app.cli import app

    data = str(alpaca_files["jsonl"])
    for ray_args, address in ((["--ray", "--ray-actors", "0"], "local"), (["--ray-actors", "0", "--ray"], "local"),
                              (["--ray", "auto", "--ray-actors", "0"], "auto"), (["--ray=ray://h:1", "--ray-actors", "0"], "ray://h:1")):
        r = CliRunner().invoke(app, ["embed", "--encoder", encoder, "--data", data, "--out", str(tmp_path / "e"),
                                     "--preset", "alpaca"] + ray_args)
        # RayConfig rejects 0 actors, so nothing runs; the message shows --ray-actors was parsed as an option
        assert isinstance(r.exception, UserError) and "num_actors must be" in str(r.exception), (ray_args, r.output)
    from influcoder.search.ray_backend import RayConfig as RC

    seen = []
    orig = RC.__post_init__
    try:
        RC.__post_init__ = lambda self: (seen.append(self.address), orig(self))[1]
        for ray_args, address in ((["--ray", "--ray-actors", "0"], "local"), (["--ray-actors", "0", "--ray"], "local"),
                                  (["--ray", "auto", "--ray-actors", "0"], "auto"),
                                  (["--ray=ray://h:1", "--ray-actors", "0"], "ray://h:1")):
            CliRunner().invoke(app, ["embed", "--encoder", encoder, "--data", data, "--out", str(tmp_path / "e")] + ray_args)
            assert seen[-1] == address, ray_args
    finally:
        RC.__post_init__ = orig
    r = CliRunner().invoke(app, ["embed", "--encoder", encoder, "--data", data, "--preset", "alpaca", "--out",
                                 str(tmp_path / "e"), "--shard-size", "16", "--ray", "local", "--ray-actors", "1"])
    assert r.exit_code == 0, r.output
    s = open_embeddings(tmp_path / "e")
    assert len(s) == N and len(s.manifest["shards"]) == 2 and s.manifest["stats"]["ray_actors"] == 1


def test_core_does_not_import_ray(tmp_path):
    code = ("import sys, influcoder, influcoder.app.cli, influcoder.search.embed, influcoder.search.attribute, influcoder.app.cli_attribute; "
            "print('ray' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_missing_ray_one_sentence(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from influcoder.search.ray_backend import require_ray\n"
            "from influcoder.core.errors import UserError\n"
            "try:\n    require_ray()\nexcept UserError as e:\n    print(e)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install influcoder[ray]" in r.stdout



def test_embed_ray_with_an_exact_query_model(ray_local, encoder, alpaca_files, tmp_path):
    """An exact-query model folder is an encoder to Ray too: embed --ray writes the local store (pool vectors =
    the head's predicted coordinates, unit, k + 2 wide)."""
    from influcoder.student.encoder import InfluenceEncoder
    from influcoder.student.exact_query import ExactQueryModel, fit_ridge_head, pool_features
    from influcoder.data.records import read_records, PRESETS

    recs, _ = read_records(alpaca_files["jsonl"], PRESETS["alpaca"])
    X = pool_features(InfluenceEncoder.from_pretrained(encoder, max_length=64), recs[:20])
    rng = np.random.default_rng(0)
    V = np.linalg.qr(rng.normal(size=(50, 6)))[0].astype(np.float32)
    model = ExactQueryModel(V=V, head=fit_ridge_head(X, rng.normal(size=(20, 6)) * 0.3, 1.0), encoder=encoder,
                            info={"max_length": 64})
    mdir = model.save(tmp_path / "eq")
    common = dict(encoder=str(mdir), data=DataSpec(str(alpaca_files["jsonl"]), preset="alpaca"), dtype="float32", batch_size=5,
                  shard_size=11)
    local = open_embeddings(embed_file(EmbedConfig(out=str(tmp_path / "local"), **common), progress=False))
    remote = open_embeddings(embed_with_ray(EmbedConfig(out=str(tmp_path / "ray"), **common), RCFG1), verify=True)
    assert local.dim == 8 and local.manifest["encoder"]["path"] == str(mdir)
    assert_same_store(remote, local, atol=2e-5)
    want = model.pool_coordinates(pool_features(InfluenceEncoder.from_pretrained(encoder, max_length=64), recs))
    np.testing.assert_allclose(local.matrix()[:, :6], want, atol=1e-5)
