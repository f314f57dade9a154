"""``influcoder stock``, ``influcoder influence`` and ``influcoder targets``."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from .options import data_aliases, quiet_param

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    from ..core.config import command_from
    from ..teacher.config import InfluenceConfig, TargetsConfig

    quiet = quiet_param("No progress bar or messages.")
    app.command("stock")(_stock_command())
    app.command("influence")(command_from(InfluenceConfig, _influence, extra=[quiet]))
    app.command("targets")(command_from(TargetsConfig, _targets, extra=[quiet]))


def _stock(values: dict, extras: dict):
    from ..core.config import config_from_flags
    from ..teacher.config import StockConfig
    from ..teacher.stock import stock

    cfg = config_from_flags(StockConfig, values)
    path = stock(cfg, progress=not extras["quiet"])
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 reports for everyone
    from ..teacher.store import open_store

    s = open_store(path)
    stats = s.manifest.get("stats", {})
    ranks = stats.get("ranks") or [stats]
    rate = sum(r.get("examples_per_s_last_run") or 0 for r in ranks)
    peak = max((r.get("peak_rss_mb") or 0) for r in ranks)
    console.print(f"stored {len(s)} × {s.dim} gradients in {path} ({rate:.2f} ex/s over {len(ranks)} process(es), peak {peak} MB per process)")
    if s.manifest.get("n_invalid"):
        console.print(f"[yellow]{s.manifest['n_invalid']} invalid rows skipped; see {path / 'invalid.jsonl'}[/]")


def _stock_command():
    """``influcoder stock``: flags generated from :class:`influcoder.teacher.config.StockConfig`'s fields."""
    from ..core.config import command_from
    from ..teacher.config import StockConfig

    quiet = quiet_param()
    shown = ("model", "data__path", "out", "data__preset", "data__prompt_field", "data__response_field", "projection",
             "proj_dim", "max_length", "batch_size", "dtype", "device", "warmup_steps")
    return command_from(StockConfig, _stock, extra=[quiet], shown=shown, aliases=data_aliases("data", "data"), doc=(
        "Stock per-example LoRA gradients (response tokens only), projected, into a resumable store."))


def _influence(values: dict, extras: dict):
    from ..core.config import config_from_flags
    from ..teacher.config import InfluenceConfig
    from ..teacher.influence import compute_influence

    cfg = config_from_flags(InfluenceConfig, values)
    path = compute_influence(Path(cfg.pool), Path(cfg.query), Path(cfg.out), pool_block=cfg.block, query_block=cfg.block,
                             progress=not extras["quiet"])
    console.print(f"wrote {path} and {path.with_name(path.stem + '.meta.json').name}")


def _targets(values: dict, extras: dict):
    import json

    from ..core.config import config_from_flags
    from ..core.errors import UserError
    from ..teacher.config import TargetsConfig
    from ..teacher.influence import compute_dense_targets

    cfg = config_from_flags(TargetsConfig, values)
    bp = bq = None
    if cfg.basis_ids is not None:
        try:
            doc = json.loads(Path(cfg.basis_ids).read_text())
            bp, bq = list(doc["train_pool_ids"]), list(doc["train_query_ids"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{cfg.basis_ids}: not a split file with train_pool_ids and train_query_ids ({e})") from None
    path = compute_dense_targets(Path(cfg.pool), Path(cfg.query), Path(cfg.out), cfg.k, basis_pool_ids=bp,
                                 basis_query_ids=bq)
    if not extras["quiet"]:
        console.print(f"wrote {path} and {path.with_name(path.stem + '.meta.json').name}")
