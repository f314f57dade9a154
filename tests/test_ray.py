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


RCFG = RayConfig(num_actors=2, cpus_per_actor=1, rows_per_batch=7, read_blocks=3)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_embed_ray_equals_local(ray_local, encoder, alpaca_files, tmp_path, fmt):
    data = str(alpaca_files[fmt])
    local = open_embeddings(embed_file(EmbedConfig(encoder=encoder, data=data, out=str(tmp_path / "local"),
                                                   preset="alpaca", dtype="float32", batch_size=5, shard_size=11),
                                       progress=False))
    remote = open_ray_embeddings(embed_with_ray(EmbedConfig(encoder=encoder, data=data, out=str(tmp_path / "ray"),
                                                            preset="alpaca", dtype="float32", batch_size=4), RCFG))
    assert len(local) == N
    assert remote.ids == local.ids
    assert remote.rows.tolist() == local.rows.tolist()
    np.testing.assert_allclose(remote.matrix, local.matrix(), atol=2e-5)
    assert remote.manifest["encoder"]["fingerprint"] == local.fingerprint
    assert remote.manifest["fields"] == local.manifest["fields"]
    # an embedding that differs at all from its neighbours: the comparison is not vacuous
    assert np.abs(local.matrix()[0] - local.matrix()[1]).max() > 1e-3


def test_embed_ray_float16_and_limit(ray_local, encoder, alpaca_files, tmp_path):
    data = str(alpaca_files["jsonl"])
    local = open_embeddings(embed_file(EmbedConfig(encoder=encoder, data=data, out=str(tmp_path / "local"),
                                                   preset="alpaca", limit=12), progress=False))
    remote = open_ray_embeddings(embed_with_ray(EmbedConfig(encoder=encoder, data=data, out=str(tmp_path / "ray"),
                                                            preset="alpaca", limit=12), RCFG))
    assert remote.manifest["dtype"] == "float16" and remote.ids == local.ids and len(remote.ids) == 12
    np.testing.assert_allclose(remote.matrix, local.matrix(), atol=2e-3)


@pytest.mark.parametrize("aggregate", ["mean", "max"])
def test_filter_ray_same_ranking(ray_local, encoder, alpaca_files, tmp_path, aggregate):
    data = str(alpaca_files["jsonl"])
    common = dict(encoder=encoder, data=data, queries=str(alpaca_files["queries"]), preset="alpaca",
                  query_preset="alpaca", aggregate=aggregate, fraction=0.2, batch_size=4)
    local = filter_pool(FilterConfig(out=str(tmp_path / "local"), **common), progress=False)
    remote = filter_with_ray(FilterConfig(out=str(tmp_path / "ray"), **common), RCFG)
    lr = [json.loads(x) for x in (local / "ranked.jsonl").read_text().splitlines()]
    rr = [json.loads(x) for x in (remote / "ranked.jsonl").read_text().splitlines()]
    assert len(lr) == len(rr) == N
    np.testing.assert_allclose([r["score"] for r in rr], [r["score"] for r in lr], atol=2e-5)
    # same ranking: identical order wherever local scores are not within tolerance of a tie
    ls = np.array([r["score"] for r in lr])
    if np.all(np.abs(np.diff(ls)) > 1e-4):
        assert [r["id"] for r in rr] == [r["id"] for r in lr]
    else:
        assert sorted(r["id"] for r in rr[:6]) == sorted(r["id"] for r in lr[:6])
    assert [r["selected"] for r in rr] == [r["selected"] for r in lr]
    assert (remote / "filtered.jsonl").read_text() == (local / "filtered.jsonl").read_text()
    ids, rows, scores = read_ray_scores(remote)
    assert len(ids) == N and np.all(np.diff(rows) > 0)


def test_invalid_row_named(ray_local, encoder, tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n')
    with pytest.raises(UserError, match=r"row 1.*response"):
        embed_with_ray(EmbedConfig(encoder=encoder, data=str(p), out=str(tmp_path / "o")), RCFG)
    out = embed_with_ray(EmbedConfig(encoder=encoder, data=str(p), out=str(tmp_path / "o2"), skip_invalid=True), RCFG)
    got = open_ray_embeddings(out)
    assert got.ids == ["0"] and (out / "invalid.jsonl").exists()


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


def test_cli_ray_option(ray_local, encoder, alpaca_files, tmp_path):
    """`--ray` with no value (followed by another option) runs on the Ray instance already started here, and
    `embed --ray` / `filter --ray` write what the API writes."""
    from typer.testing import CliRunner

    from influcoder.cli import app

    data = str(alpaca_files["jsonl"])
    r = CliRunner().invoke(app, ["embed", "--encoder", encoder, "--data", data, "--out", str(tmp_path / "e"),
                                 "--ray", "--ray-actors", "1", "--preset", "alpaca", "--float32"])
    assert r.exit_code == 0, r.output
    got = open_ray_embeddings(tmp_path / "e")
    assert len(got.ids) == N and got.manifest["dtype"] == "float32"
    r = CliRunner().invoke(app, ["filter", "--encoder", encoder, "--data", data, "--queries", str(alpaca_files["queries"]),
                                 "--preset", "alpaca", "--query-preset", "alpaca", "--out", str(tmp_path / "f"),
                                 "--fraction", "0.1", "--ray", "local", "--ray-actors", "1"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "f" / "report.json").read_text())
    assert rep["n_pool"] == N and rep["n_selected"] == 3 and rep["ray"]["address"] == "local"
