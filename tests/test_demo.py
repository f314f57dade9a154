"""The main job's code path (the shipped demo config through the pipeline) end to end, on tiny random
decoder/encoder fixtures and the real shared data, so `make demo` cannot silently rot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from test_embed import make_tiny_encoder


def test_demo_pipeline_on_tiny_models(tiny_model_dir, tmp_path):
    data = Path(os.environ.get("INFLUCODER_DATA", "../shared/data"))
    if not (data / "alpaca").exists():
        pytest.skip(f"{data} not found")
    from influcoder.run.demo import run_demo

    enc = make_tiny_encoder(tmp_path / "enc")
    m = run_demo({"out": str(tmp_path / "demo"), "mix": {"pool_n": 40, "queries_n": 12},
                  "sample": {"n_stock": 12, "holdout_pool": 8, "holdout_queries": 4},
                  "teacher": {"model": str(tiny_model_dir), "proj_dim": 64, "max_length": 128, "dtype": "float32"},
                  "student": {"encoder": str(enc), "epochs": 1}, "attribute": {"top_k": 2}}, progress=False)
    root = Path(m["root"])
    for key in ("encoder", "embeddings", "index", "labels", "report", "attribution"):
        assert m[key] and (root / m[key]).exists(), key
    rows = [json.loads(line) for line in (root / m["attribution"]).read_text().splitlines()]
    assert len(rows) == 12 * 2 and {r["rank"] for r in rows} == {1, 2}
    assert json.loads((root / "index" / "index_meta.json").read_text())["n"] == 40
    rep = json.loads((root / "report" / "fidelity.json").read_text())
    assert rep["block"] == {**rep["block"], "n_pool": 8, "n_queries": 4} and rep["verdict"]["line"]
