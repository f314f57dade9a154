"""The main job's code path end to end (mix → stock → influence → train → embed → index → attribute),
on tiny random decoder/encoder fixtures and the real shared data, so `make demo` cannot silently rot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from test_embed import make_tiny_encoder


def test_demo_pipeline_on_tiny_models(tiny_model_dir, tmp_path, monkeypatch):
    data = Path(os.environ.get("INFLUCODER_DATA", "../shared/data"))
    if not (data / "alpaca").exists():
        pytest.skip(f"{data} not found")
    from influcoder.demo import DemoConfig, run_demo

    enc = make_tiny_encoder(tmp_path / "enc")
    cfg = DemoConfig(workdir=str(tmp_path / "demo"), decoder=str(tiny_model_dir), encoder=str(enc), pool_size=24,
                     n_queries=10, epochs=1, proj_dim=64, max_length=128, dtype="float32", show_queries=2, top_k=2)
    summary = run_demo(cfg)
    for key in ("pool_store", "query_store", "labels", "encoder", "embeddings", "index", "attribution"):
        assert Path(summary[key]).exists(), key
    rows = [json.loads(l) for l in Path(summary["attribution"]).read_text().splitlines()]
    assert len(rows) == 2 * 2 and {r["rank"] for r in rows} == {1, 2}
    split = json.loads((Path(summary["encoder"]) / "split.json").read_text())
    assert {r["query_id"] for r in rows} <= set(split["val_query_ids"])  # shown queries are held out
    assert summary["encoder_validation_trained"] and summary["encoder_validation_untrained"]
