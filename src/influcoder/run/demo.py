"""The main job as a Python call: ``run_demo(DemoConfig(...))`` is ``influcoder run demo`` (the shipped
``influcoder/configs/demo.yaml``)
with its sizes as arguments (``make demo`` runs the YAML file itself; both go through :mod:`influcoder.pipeline`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError

__all__ = ["DemoConfig", "demo_run_config", "run_demo", "DEMO_YAML"]

DEMO_YAML = Path(__file__).resolve().parent / "configs" / "demo.yaml"


@dataclass
class DemoConfig:
    """Sizes and places of the end-to-end demo (overrides of the shipped demo.yaml)."""

    workdir: str = "work/demo"
    """Run folder."""
    decoder: str = "smollm2-135m-instruct"
    """Teacher decoder."""
    pool_size: int = 600
    """Pool examples mixed from Alpaca / Dolly / Code-Alpaca (all embedded and indexed)."""
    n_stock: int = 120
    """Pool examples stocked for training (+ holdout_pool held out)."""
    holdout_pool: int = 40
    """Pool examples stocked but never trained on (the report's rows)."""
    n_queries: int = 40
    """BBH queries (all stocked)."""
    holdout_queries: int = 10
    """Queries never trained on (the report's columns)."""
    encoder: str = "minilm-l6"
    """Student encoder."""
    epochs: int = 3
    """Distillation epochs."""
    proj_dim: int = 8192
    """CountSketch dimension."""
    max_length: int = 256
    """Tokens per example."""
    dtype: str = "auto"
    """Compute precision of stocking."""
    top_k: int = 5
    """Pool examples attributed per query."""
    seed: int = 0
    """Seed of the mix, the sample, the LoRA init and the sketch."""


def demo_run_config(cfg: DemoConfig):
    """The shipped demo.yaml with ``cfg``'s values written over it."""
    from .config import RunConfig
    from ..core.config import from_dict, load_yaml, to_dict

    if not DEMO_YAML.exists():
        raise UserError(f"{DEMO_YAML}: the demo config is missing from this installation of influcoder")
    d = to_dict(load_yaml(RunConfig, DEMO_YAML))
    d["out"] = cfg.workdir
    d["mix"].update(pool_n=cfg.pool_size, queries_n=cfg.n_queries, seed=cfg.seed)
    d["sample"].update(n_stock=cfg.n_stock, holdout_pool=cfg.holdout_pool, holdout_queries=cfg.holdout_queries, seed=cfg.seed)
    d["teacher"].update(model=cfg.decoder, proj_dim=cfg.proj_dim, max_length=cfg.max_length, dtype=cfg.dtype, seed=cfg.seed)
    d["student"].update(encoder=cfg.encoder, epochs=cfg.epochs, seed=cfg.seed)
    d["attribute"].update(top_k=cfg.top_k)
    return from_dict(RunConfig, d, where=str(DEMO_YAML))


def run_demo(cfg: DemoConfig, *, progress: bool = True, log=None) -> dict:
    """Run the demo; returns the run manifest (paths relative to the run folder) with ``root`` added."""
    from ..data.mix import data_root
    from .pipeline import Pipeline

    if not (data_root() / "alpaca").exists():
        raise UserError(f"data folder {data_root()} not found: set INFLUCODER_DATA to the shared data folder")
    pipe = Pipeline(demo_run_config(cfg), progress=progress, log=log)
    return {**pipe.run(), "root": str(pipe.root)}
