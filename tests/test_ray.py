"""Ray backend (issue 6): ``embed --ray`` / ``filter --ray`` on a local 2-CPU Ray instance give the same
embeddings and the same filter ranking as the local path, on 30 real Alpaca rows (JSONL and Parquet).

One Ray instance for the whole module (start-up takes seconds). Skipped when ray is not installed or
the shared data folder is absent."""

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

from influcoder.attribute import FilterConfig, filter_pool  # noqa: E402
from influcoder.embed import EmbedConfig, embed_file, open_embeddings  # noqa: E402
from influcoder.errors import UserError  # noqa: E402
from influcoder.ray_backend import (  # noqa: E402
    RayConfig,
    embed_with_ray,
    filter_with_ray,
    open_ray_embeddings,
    read_ray_scores,
)

DATA = Path(os.environ.get("INFLUCODER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
ALPACA = DATA / "alpaca" / "alpaca_en_demo.json"
N = 30


@pytest.fixture(scope="module")
def ray_local():
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
# Each Ray pipeline starts actor processes that import torch (slow on a loaded machine): 5 pipelines in all.


def test_embed_ray_equals_local_jsonl(ray_local, encoder, alpaca_files, tmp_path):
    data = str(alpaca_files["jsonl"])
    local = open_embeddings(embed_file(EmbedConfig(encoder=encoder, data=data, out=str(tmp_path / "local"),
                                                   preset="alpaca", dtype="float32", batch_size=5, shard_size=11),
                                       progress=False))
    remote = open_ray_embeddings(embed_with_ray(EmbedConfig(encoder=encoder, data=data, out=str(tmp_path / "ray"),
                                                            preset="alpaca", dtype="float32", batch_size=4), RCFG))
    assert len(local) == N
    assert remote.ids == local.ids
    assert remote.rows.tolist() == local.rows.tolist()
    assert remote.rows[-1] == N  # the blank line counts as a row, as in records.iter_rows
    np.testing.assert_allclose(remote.matrix, local.matrix(), atol=2e-5)
    assert remote.manifest["encoder"]["fingerprint"] == local.fingerprint
    assert remote.manifest["fields"] == local.manifest["fields"]
    # embeddings differ between examples: the comparison is not vacuous
    assert np.abs(local.matrix()[0] - local.matrix()[1]).max() > 1e-3


def test_embed_ray_parquet_float16_limit(ray_local, encoder, alpaca_files, tmp_path):
    data = str(alpaca_files["parquet"])
    local = open_embeddings(embed_file(EmbedConfig(encoder=encoder, data=data, out=str(tmp_path / "local"),
                                                   preset="alpaca", limit=23), progress=False))
    remote = open_ray_embeddings(embed_with_ray(EmbedConfig(encoder=encoder, data=data, out=str(tmp_path / "ray"),
                                                            preset="alpaca", limit=23), RCFG1))
    assert remote.manifest["dtype"] == "float16" and len(remote.ids) == 23
    assert remote.ids == local.ids and remote.rows.tolist() == local.rows.tolist()
    np.testing.assert_allclose(remote.matrix, local.matrix(), atol=2e-3)


def test_filter_ray_same_ranking(ray_local, encoder, alpaca_files, tmp_path):
    data = str(alpaca_files["jsonl"])
    common = dict(encoder=encoder, data=data, queries=str(alpaca_files["queries"]), preset="alpaca",
                  query_preset="alpaca", aggregate="mean", fraction=0.2, batch_size=4)
    local = filter_pool(FilterConfig(out=str(tmp_path / "local"), **common), progress=False)
    remote = filter_with_ray(FilterConfig(out=str(tmp_path / "ray"), **common), RCFG)
    lr = [json.loads(x) for x in (local / "ranked.jsonl").read_text().splitlines()]
    rr = [json.loads(x) for x in (remote / "ranked.jsonl").read_text().splitlines()]
    assert len(lr) == len(rr) == N
    local_score = {r["id"]: r["score"] for r in lr}
    np.testing.assert_allclose([r["score"] for r in rr], [local_score[r["id"]] for r in rr], atol=1e-5)
    ls = np.array([r["score"] for r in lr])
    assert np.ptp(ls) > 0.01  # the scores spread: the ranking comparison is not vacuous
    # same ranking: Ray's order never puts an example above one that scores higher locally (beyond ties of 1e-5)
    assert np.all(np.diff([local_score[r["id"]] for r in rr]) <= 1e-5)
    k = int(round(0.2 * N))
    if ls[k - 1] - ls[k] > 1e-5:  # the selection boundary is not a tie
        assert [r["id"] for r in rr if r["selected"]] == [r["id"] for r in lr if r["selected"]]
        assert (remote / "filtered.jsonl").read_text() == (local / "filtered.jsonl").read_text()
    ids, rows, scores = read_ray_scores(remote)
    assert len(ids) == N and np.all(np.diff(rows) > 0)


def test_invalid_rows(ray_local, encoder, tmp_path):
    from influcoder.ray_backend import _read_parquet_dir, _split_errors
    from influcoder.records import RecordError

    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n{"id": "0", "prompt": "d", "response": "e"}\n'
                 '{"prompt": "f", "response": "g"}\n')
    out = embed_with_ray(EmbedConfig(encoder=encoder, data=str(p), out=str(tmp_path / "o"), skip_invalid=True), RCFG1)
    got = open_ray_embeddings(out)
    assert got.ids == ["0", "3"]  # row 1 has no response; row 2 repeats id "0"
    bad = [json.loads(x) for x in (out / "invalid.jsonl").read_text().splitlines()]
    assert [(b["row"], b["field"]) for b in bad] == [(1, "response"), (2, "id")]
    # without --skip-invalid the first bad row is an error naming file, row and field (as locally)
    table = _read_parquet_dir(out / "shards", ["id", "row", "error"])
    with pytest.raises(RecordError, match=r"row 1.*response"):
        _split_errors(table, str(p), False, None)
    with pytest.raises(RecordError, match=r"row 1"):
        embed_file(EmbedConfig(encoder=encoder, data=str(p), out=str(tmp_path / "loc")), progress=False)
    assert _split_errors(table, str(p), False, 1)[0].num_rows == 1  # rows after the limit are not looked at


def test_cli_ray_option(ray_local, encoder, alpaca_files, tmp_path):
    """`--ray ADDRESS` runs `filter` on Ray (the instance started here); `--ray` with no value before another
    option takes the default address and leaves that option alone."""
    from typer.testing import CliRunner

    from influcoder.cli import app

    data = str(alpaca_files["jsonl"])
    for ray_args, address in ((["--ray", "--ray-actors", "0"], "local"), (["--ray-actors", "0", "--ray"], "local"),
                              (["--ray", "auto", "--ray-actors", "0"], "auto"), (["--ray=ray://h:1", "--ray-actors", "0"], "ray://h:1")):
        r = CliRunner().invoke(app, ["embed", "--encoder", encoder, "--data", data, "--out", str(tmp_path / "e"),
                                     "--preset", "alpaca"] + ray_args)
        # RayConfig rejects 0 actors, so nothing runs; the message shows --ray-actors was parsed as an option
        assert isinstance(r.exception, UserError) and "num_actors must be" in str(r.exception), (ray_args, r.output)
    from influcoder.ray_backend import RayConfig as RC

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
    r = CliRunner().invoke(app, ["filter", "--encoder", encoder, "--data", data, "--queries", str(alpaca_files["queries"]),
                                 "--preset", "alpaca", "--query-preset", "alpaca", "--out", str(tmp_path / "f"),
                                 "--fraction", "0.1", "--aggregate", "max", "--ray", "local", "--ray-actors", "1"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "f" / "report.json").read_text())
    assert rep["n_pool"] == N and rep["n_selected"] == 3 and rep["ray"]["address"] == "local"
    assert (tmp_path / "f" / "filtered.jsonl").read_text().count("\n") == N - 3


def test_core_does_not_import_ray(tmp_path):
    code = ("import sys, influcoder, influcoder.cli, influcoder.embed, influcoder.attribute, influcoder.cli_attribute; "
            "print('ray' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_missing_ray_one_sentence(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from influcoder.ray_backend import require_ray\n"
            "from influcoder.errors import UserError\n"
            "try:\n    require_ray()\nexcept UserError as e:\n    print(e)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install influcoder[ray]" in r.stdout

