"""The main job (`make demo` / `influcoder demo`): the pipeline end to end on the packaged models and real data.

Steps (each reuses its output if a previous run left it complete):
  1. mix a real training pool (Alpaca / Dolly / Code-Alpaca) and BBH queries from ``$INFLUCODER_DATA``;
  2. stock LoRA gradients of SmolLM2-135M-Instruct for both (CountSketch);
  3. compute cosine influence labels;
  4. print, for a few queries, the most influential training examples.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from .errors import UserError
from .mix import data_root, mix_records, write_mix

__all__ = ["DemoConfig", "run_demo"]

console = Console()


@dataclass
class DemoConfig:
    """Sizes and places of the end-to-end demo."""

    workdir: str = "work/demo"
    """Where every artefact goes (stores, labels, reports)."""
    decoder: str = "smollm2-135m-instruct"
    """Teacher decoder."""
    pool_size: int = 64
    """Training-pool examples to stock."""
    n_queries: int = 8
    """BBH queries to stock."""
    proj_dim: int = 8192
    """CountSketch dimension."""
    max_length: int = 256
    """Tokens per example."""
    dtype: str = "bfloat16"
    """Compute precision of stocking (bfloat16 is faster on CPUs with AMX/AVX512-BF16)."""
    show_queries: int = 3
    """Queries whose top examples are printed."""
    top_k: int = 3
    """Examples printed per query."""
    seed: int = 0
    """Seed of the data mix, the LoRA init and the sketch."""


def _pool_sources(root: Path) -> list[str]:
    return [
        f"alpaca={root / 'alpaca' / 'alpaca_en_demo.json'}",
        f"dolly={root / 'dolly' / 'databricks-dolly-15k-safety-only.jsonl'}",
        f"alpaca={root / 'code_alpaca' / 'code_alpaca_2k.json'}",
    ]


def run_demo(cfg: DemoConfig) -> dict:
    from .influence import compute_influence
    from .labels import load_labels
    from .stock import StockConfig, stock

    root = data_root()
    if not (root / "alpaca").exists():
        raise UserError(f"data folder {root} not found: set INFLUCODER_DATA to the shared data folder")
    work = Path(cfg.workdir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    timings: dict[str, float] = {}

    t = time.perf_counter()
    pool_file = write_mix(mix_records(_pool_sources(root), cfg.pool_size, cfg.seed), work / "pool.jsonl")
    query_file = write_mix(mix_records([f"bbh={root / 'bbh' / 'bbh' / '*.json'}"], cfg.n_queries, cfg.seed), work / "queries.jsonl")
    timings["mix_s"] = time.perf_counter() - t

    common = dict(model=cfg.decoder, proj_dim=cfg.proj_dim, max_length=cfg.max_length, dtype=cfg.dtype, seed=cfg.seed)
    t = time.perf_counter()
    console.rule("stage 1: stock LoRA gradients")
    pool_store = stock(StockConfig(data=str(pool_file), out=str(work / "stores" / "pool"), **common))
    query_store = stock(StockConfig(data=str(query_file), out=str(work / "stores" / "queries"), **common))
    timings["stock_s"] = time.perf_counter() - t

    console.rule("stage 2: influence labels")
    t = time.perf_counter()
    labels_path = compute_influence(pool_store, query_store, work / "labels.npy")
    timings["influence_s"] = time.perf_counter() - t
    labels = load_labels(labels_path)

    pool = {json.loads(l)["id"]: json.loads(l) for l in pool_file.read_text().splitlines()}
    queries = {json.loads(l)["id"]: json.loads(l) for l in query_file.read_text().splitlines()}
    for j, qid in enumerate(labels.query_ids[: cfg.show_queries]):
        col = np.asarray(labels.matrix[:, j])
        top = np.argsort(-col, kind="stable")[: cfg.top_k]
        table = Table(title=f"query {qid}: {queries[qid]['prompt'][:90]!r}", show_lines=False)
        table.add_column("rank")
        table.add_column("influence")
        table.add_column("training example")
        for r, i in enumerate(top, 1):
            pid = labels.pool_ids[i]
            table.add_row(str(r), f"{col[i]:+.3f}", f"{pid}: {pool[pid]['prompt'][:80]!r}")
        console.print(table)
    summary = {
        "workdir": str(work),
        "pool_store": str(pool_store),
        "query_store": str(query_store),
        "labels": str(labels_path),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    console.rule("artefacts")
    for k, v in summary.items():
        console.print(f"{k}: {v}")
    return summary
