"""The main job (`make demo` / `influcoder demo`): the pipeline end to end on the packaged models and real data.

Steps (stocking and embedding resume from what a previous run left):
  1. mix a real training pool (Alpaca / Dolly / Code-Alpaca) and BBH queries from ``$INFLUCODER_DATA``;
  2. stock LoRA gradients of SmolLM2-135M-Instruct for both (CountSketch);
  3. compute cosine influence labels (the teacher);
  4. distil them into the MiniLM encoder (held-out pool and queries for validation);
  5. embed the pool with the trained encoder and index it with FAISS;
  6. attribute: for a few held-out queries, the top training examples by the encoder, next to the teacher's.
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
    pool_size: int = 160
    """Training-pool examples to stock."""
    n_queries: int = 40
    """BBH queries to stock."""
    encoder: str = "minilm-l6"
    """Student encoder to distil into."""
    epochs: int = 3
    """Distillation epochs."""
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


def queries_by_id(path: Path) -> dict[str, dict]:
    """Rows of a mixed JSONL file by id."""
    return {r["id"]: r for r in map(json.loads, Path(path).read_text().splitlines())}


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

    from .attribute import AttributeConfig, run_attribute
    from .distill import DistillConfig, train
    from .embed import EmbedConfig, embed_file
    from .index import IndexConfig, build_index

    console.rule("stage 3: distil the influence rankings into an encoder")
    t = time.perf_counter()
    encoder_dir = train(DistillConfig(pool_data=str(pool_file), query_data=str(query_file), labels=str(labels_path),
                                      out=str(work / "encoder"), encoder=cfg.encoder, epochs=cfg.epochs, seed=cfg.seed),
                        log=console.print)
    timings["train_s"] = time.perf_counter() - t
    enc_meta = json.loads((Path(encoder_dir) / "influcoder_encoder.json").read_text()) if (Path(encoder_dir) / "influcoder_encoder.json").exists() else {}

    console.rule("stage 4: embed and index the pool")
    t = time.perf_counter()
    emb_dir = embed_file(EmbedConfig(encoder=str(encoder_dir), data=str(pool_file), out=str(work / "embeddings"), overwrite=True))
    index_dir = build_index(IndexConfig(embeddings=str(emb_dir), out=str(work / "index"), overwrite=True), progress=False)
    timings["embed_index_s"] = time.perf_counter() - t

    console.rule("stage 5: attribute held-out queries with the encoder")
    split = json.loads((Path(encoder_dir) / "split.json").read_text()) if (Path(encoder_dir) / "split.json").exists() else {}
    held_out = split.get("val_query_ids") or labels.query_ids
    shown = held_out[: cfg.show_queries]
    t = time.perf_counter()
    held_file = write_mix([queries_by_id(query_file)[q] for q in shown], work / "demo_queries.jsonl")
    rows, _ = run_attribute(AttributeConfig(encoder=str(encoder_dir), index=str(index_dir), queries=str(held_file),
                                            top_k=cfg.top_k, data=str(pool_file), out=str(work / "attribution.jsonl")))
    timings["attribute_s"] = time.perf_counter() - t

    pool = queries_by_id(pool_file)
    queries = queries_by_id(query_file)
    for qid in shown:
        j = labels.query_ids.index(qid)
        col = np.asarray(labels.matrix[:, j])
        teacher_top = np.argsort(-col, kind="stable")[: cfg.top_k]
        mine = [r for r in rows if r["query_id"] == qid]
        table = Table(title=f"held-out query {qid}: {queries[qid]['prompt'][:90]!r}", show_lines=False)
        table.add_column("rank")
        table.add_column("encoder (score: training example)")
        table.add_column("teacher, gradient cosine (score: training example)")
        for r in range(cfg.top_k):
            e = mine[r] if r < len(mine) else None
            i = teacher_top[r]
            pid = labels.pool_ids[i]
            table.add_row(str(r + 1),
                          f"{e['score']:+.3f} {e['id']}: {pool[e['id']]['prompt'][:50]!r}" if e else "",
                          f"{col[i]:+.3f} {pid}: {pool[pid]['prompt'][:50]!r}")
        console.print(table)
    summary = {
        "workdir": str(work),
        "pool_store": str(pool_store),
        "query_store": str(query_store),
        "labels": str(labels_path),
        "encoder": str(encoder_dir),
        "encoder_validation_trained": enc_meta.get("validation"),
        "encoder_validation_untrained": enc_meta.get("validation_untrained"),
        "embeddings": str(emb_dir),
        "index": str(index_dir),
        "attribution": str(work / "attribution.jsonl"),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    console.rule("artefacts")
    for k, v in summary.items():
        console.print(f"{k}: {v}")
    return summary
