"""The ground truth of an experiment: the teacher's influence recomputed on a block (exact LoRA gradients, or their
CountSketch), read from finished gradient stores, or taken at a LoRA adapter warmed up on the pool scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..data.records import Record
from .config import EvalConfig

from .context import GRADIENT_KINDS, NAME_FEATURES, Context, ids_of, key_of, method_spec, write_records_file

__all__ = ["exact_teacher", "store_rows", "with_teacher", "labels_from_stores", "lora_combos", "warmup_stock_config", "warmup_adapter", "adapter_keys", "warmed"]


def exact_teacher(ctx: Context, pool: list[Record], queries: list[Record]) -> np.ndarray:
    """Teacher influence recomputed on a block: cosine of the teacher's exact LoRA gradients (no projection),
    or of their CountSketch with ``teacher.sketch_dim``."""
    t = ctx.cfg.teacher
    rank, seed = int(t.get("rank", 8)), int(t.get("lora_seed", 0))
    logra_k = t.get("share_logra_k")
    gp = ctx.features.lora(pool, rank, seed, logra_k=logra_k)
    gq = ctx.features.lora(queries, rank, seed, logra_k=logra_k)
    P, Q = gp["unit"], gq["unit"]  # float16; cosine_matrix reads them a block at a time
    if t.get("sketch_dim"):
        from ..teacher.projection import ProjectionConfig, make_projector

        proj = make_projector(P.shape[1], ProjectionConfig("countsketch", int(t["sketch_dim"]), int(t.get("sketch_seed", 0))))
        P, Q = proj.project_rows(P), proj.project_rows(Q)
    from .baselines import cosine_matrix

    return cosine_matrix(P, Q)


def store_rows(store_ids: list[str], recs: list[Record], source: str, side: str) -> list[int]:
    """Row of each record in the teacher's label matrix, by record id; every record must be in the store."""
    where = {i: n for n, i in enumerate(store_ids)}
    missing = [r.id for r in recs if r.id not in where]
    if missing:
        raise UserError(f"ranking: {source}: {len(missing)} record(s) are not in the teacher's {side} store "
                        f"(ids {', '.join(missing[:5])}); the student's labels must come from the same teacher")
    return [where[r.id] for r in recs]


def with_teacher(ctx: Context, teacher: dict) -> Context:
    import copy

    c = copy.copy(ctx)
    c.cfg = copy.copy(ctx.cfg)
    c.cfg.teacher = teacher
    return c


def labels_from_stores(ctx: Context, teacher: dict):
    """Full label matrix between two finished gradient stores (cached .npy next to the other caches)."""
    from ..teacher.influence import compute_influence
    from ..teacher.labels import load_labels
    from ..teacher.store import open_store

    stores = []
    for k in ("pool_store", "query_store"):
        p = Path(teacher[k])
        man = p / "manifest.json"
        if not man.exists() or not json.loads(man.read_text()).get("complete"):
            raise UserError(f"{p}: gradient store is not complete (manifest.json 'complete' is not true)")
        stores.append(p)
    key = key_of({"pool": json.loads((stores[0] / "manifest.json").read_text()),
                "query": json.loads((stores[1] / "manifest.json").read_text())})
    out = ctx.work / "labels" / f"stores-{key}.npy"
    if not out.exists():
        compute_influence(open_store(stores[0]), open_store(stores[1]), out, progress=ctx.progress)
    return load_labels(out)


def lora_combos(cfg: EvalConfig) -> list[tuple[int, int]]:
    """(LoRA rank, LoRA seed) of the teacher and of every gradient method of the config."""
    from .baselines import make_method

    t = cfg.teacher
    combos = {(int(t.get("rank", 8)), int(t.get("lora_seed", 0)))}
    for spec in cfg.methods:
        if spec["kind"] in GRADIENT_KINDS:
            m = make_method(method_spec(spec), NAME_FEATURES)
            combos.add((int(m.rank), int(m.lora_seed)))
    return sorted(combos)


def warmup_stock_config(cfg: EvalConfig, data: str | Path, out: str | Path, rank: int, lora_seed: int):
    """The :class:`influcoder.teacher.stock.StockConfig` whose ``--warmup-steps`` path warms an adapter up on ``data``:
    the experiment's decoder, length and batching, ``teacher.warmup_steps`` / ``teacher.warmup_lr``."""
    from ..data.records import DataSpec
    from ..teacher.config import StockConfig

    t = cfg.teacher
    return StockConfig(model=cfg.model, data=DataSpec(str(data), preset="prompt-response"), out=str(out),
                       max_length=cfg.max_length, batch_size=cfg.batch_size, token_budget=cfg.token_budget,
                       projection="none", lora_rank=rank, seed=lora_seed, device=cfg.device, dtype=cfg.precision,
                       warmup_steps=int(t.get("warmup_steps", 0)), warmup_lr=float(t.get("warmup_lr", 2e-5)))


def warmup_adapter(ctx: Context, records: list[Record], rank: int, lora_seed: int) -> tuple[str, dict]:
    """LoRA adapter warmed up on ``records`` (stock's ``--warmup-steps`` path, :func:`influcoder.teacher.stock.warm_up_adapter`),
    cached under ``work_dir/adapters`` by its definition; also what the warm-up saw."""
    from ..teacher.stock import warm_up_adapter

    t = ctx.cfg.teacher
    steps = int(t.get("warmup_steps", 0))
    if steps * ctx.cfg.batch_size < len(records):
        raise UserError(f"config: teacher.warmup_steps {steps} × batch_size {ctx.cfg.batch_size} covers "
                        f"{steps * ctx.cfg.batch_size} of the {len(records)} rows it is warmed up on: the warm-up "
                        f"must see every row at least once (warmup_steps ≥ {-(-len(records) // ctx.cfg.batch_size)})")
    key = key_of({"model": ctx.cfg.model, "max_length": ctx.cfg.max_length, "batch_size": ctx.cfg.batch_size,
                "token_budget": ctx.cfg.token_budget, "rank": rank, "lora_seed": lora_seed, "steps": steps,
                "lr": float(t.get("warmup_lr", 2e-5)), "records": ids_of(records),
                **({} if ctx.precision == "float32" else {"precision": ctx.precision})})
    d = ctx.work / "adapters" / f"r{rank}-s{lora_seed}-{key}"
    if not (d / "adapter" / "adapter_config.json").exists():
        write_records_file(d / "data.jsonl", records)
        ctx.log(f"warm-up: LoRA r{rank} seed {lora_seed}, {steps} steps on {len(records)} rows")
        warm_up_adapter(warmup_stock_config(ctx.cfg, d / "data.jsonl", d, rank, lora_seed), progress=ctx.progress)
    losses = json.loads((d / "warmup_losses.json").read_text())
    return str(d / "adapter"), {"steps": steps, "epochs": steps * ctx.cfg.batch_size / len(records),
                                "loss_first": losses[0], "loss_last": losses[-1], "n_rows": len(records)}


def adapter_keys(features) -> dict:
    return {f"{r}-{s}": features.adapter_key(r, s) for r, s in sorted(features.adapters)}


def warmed(ctx: Context, records: list[Record]) -> tuple[Context, dict]:
    """A context whose decoder features take every LoRA gradient at adapters warmed up on ``records`` (the
    teacher's and each gradient method's (rank, seed)); unchanged without ``teacher.warmup_steps``."""
    import copy

    from .features import DecoderFeatures

    if not int(ctx.cfg.teacher.get("warmup_steps", 0)):
        return ctx, {}
    adapters, info = {}, {}
    for rank, seed in lora_combos(ctx.cfg):
        adapters[(rank, seed)], info[f"r{rank}-s{seed}"] = warmup_adapter(ctx, records, rank, seed)
    c = copy.copy(ctx)
    c.features = DecoderFeatures(ctx.cfg.model, max_length=ctx.cfg.max_length, batch_size=ctx.cfg.batch_size,
                                 token_budget=ctx.cfg.token_budget, cache_dir=ctx.work / "features",
                                 progress=ctx.progress, log=ctx.log, adapters=adapters,
                                 device=ctx.device, precision=ctx.precision)
    return c, info
