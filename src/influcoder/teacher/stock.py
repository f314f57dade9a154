"""Stage 1: stock per-example LoRA gradients of a decoder, projected, into a resumable store.

``stock(StockConfig(...))`` is what ``influcoder stock`` runs. Pass 1 streams the file, validates and
tokenises every record (bad input stops the run before any compute) and keeps only ids and source
rows. Pass 2 streams it again shard by shard: tokenise the shard (response-only labels), compute exact
per-example gradients batch by batch (sorted by length, packed by tokens), project them (CountSketch
by default) and write the shard. Memory: the model, one batch and one shard, whatever the data size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .distributed import context
from ..core.errors import UserError
from ..core.fileio import atomic_save_npy
from .config import StockConfig
from .gradients import LoraGradients
from .projection import make_projector
from ..data.records import InvalidRow, Record, RecordError, file_fingerprint, iter_records
from .store import StoreWriter
from .tokenization import Encoded, collate, encode_record, pack_by_tokens

__all__ = ["StockConfig", "stock", "warm_up_adapter", "LOSS_DESCRIPTION"]

LOSS_DESCRIPTION = "mean cross-entropy over the example's own response tokens (prompt and padding labels -100); batch loss = sum of per-example losses"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class _Plan:
    """What pass 1 keeps of the data: ids and source rows of the valid records, never their tokens
    (except the first few for a warm-up), so memory does not grow with the data's text."""

    ids: list[str]
    rows: np.ndarray
    invalid: list[InvalidRow]
    first: list[Encoded]


def _encode_or_skip(cfg: StockConfig, tokenizer, r: Record, invalid: list[InvalidRow]) -> Encoded | None:
    try:
        return encode_record(tokenizer, r, cfg.max_length, cfg.chat_template)
    except RecordError as err:
        if not cfg.data.skip_invalid:
            raise
        invalid.append(InvalidRow(err.path, err.row if err.row is not None else r.row, err.field, err.problem))
        return None


def _validate(cfg: StockConfig, tokenizer, keep_first: int = 0) -> _Plan:
    """Pass 1: stream every row, validate and tokenise it (bad input stops here, before any compute)."""
    invalid: list[InvalidRow] = []
    ids, rows, first = [], [], []
    for r in iter_records(cfg.data.path, cfg.field_spec(), skip_invalid=cfg.data.skip_invalid, invalid=invalid):
        e = _encode_or_skip(cfg, tokenizer, r, invalid)
        if e is None:
            continue
        ids.append(r.id)
        rows.append(r.row)
        if len(first) < keep_first:
            first.append(e)
        if cfg.data.limit is not None and len(ids) >= cfg.data.limit:
            break
    if not ids:
        raise UserError(f"{cfg.data.path}: no valid records to stock" + (f" ({len(invalid)} invalid rows)" if invalid else ""))
    return _Plan(ids, np.asarray(rows, dtype=np.int64), invalid, first)


def _shards(cfg: StockConfig, tokenizer, plan: _Plan, shard_size: int, wanted: list[int]):
    """Pass 2: stream the file again and yield ``(shard, records, encodings)`` for each wanted shard, in
    order; rows of other shards are parsed but not tokenised. Holds one shard of records at a time."""
    wanted_set = set(wanted)
    n = len(plan.ids)
    k = 0  # index among valid records
    buf: list[Record] = []
    for r in iter_records(cfg.data.path, cfg.field_spec(), skip_invalid=True):
        if k >= n:
            break
        if r.row != plan.rows[k]:
            continue  # a row pass 1 found invalid
        shard = k // shard_size
        if shard in wanted_set:
            buf.append(r)
            if k == min(n, (shard + 1) * shard_size) - 1:
                encoded = [encode_record(tokenizer, x, cfg.max_length, cfg.chat_template) for x in buf]
                yield shard, buf, encoded
                buf = []
        k += 1
    if k < n:
        raise UserError(f"{cfg.data.path} changed while stocking: {n - k} valid rows no longer found")


def _warm_up(cfg: StockConfig, lg: LoraGradients, tokenizer, plan: _Plan, device, progress: bool = False) -> list[float]:
    """LESS-style warm-up: ``cfg.warmup_steps`` AdamW steps on the LoRA parameters over the first
    ``warmup_steps × batch_size`` valid records of ``cfg.data``, batched as stocking batches them, cycled."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    first = plan.first
    batches = [collate([first[i] for i in b], tokenizer.pad_token_id, cfg.padding_side).to(device)
               for b in pack_by_tokens([len(e) for e in first], cfg.batch_size, cfg.token_budget)]
    columns = [TextColumn("warm-up"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("warm-up", total=cfg.warmup_steps, loss="-")
        return lg.warmup(batches, cfg.warmup_steps, cfg.warmup_lr, cfg.seed,
                         on_step=lambda i, loss: bar.update(task, advance=1, loss=f"{loss:.3f}"))


def _save_adapter(lg: LoraGradients, adapter_dir: Path) -> None:
    tmp = adapter_dir.with_name(adapter_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    lg.peft.save_pretrained(tmp)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    tmp.rename(adapter_dir)


def warm_up_adapter(cfg: StockConfig, *, progress: bool = False) -> Path:
    """Only the ``--warmup-steps`` part of :func:`stock`: warm a fresh LoRA adapter up on ``cfg.data`` and save
    it as ``<out>/adapter`` (the adapter ``stock`` would save, then stock with), with ``stock_config.json`` and
    ``warmup_losses.json`` beside it. An adapter already saved there is reused. Returns the adapter folder."""
    from ..core.models import load_decoder

    if cfg.warmup_steps < 1:
        raise UserError("warm_up_adapter: warmup_steps must be ≥ 1")
    out = Path(cfg.out)
    adapter_dir = out / "adapter"
    if (adapter_dir / "adapter_config.json").exists() and (out / "warmup_losses.json").exists():
        return adapter_dir
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer, _ = load_decoder(cfg.model)
    device = context(cfg.device).device
    model.to(device)
    plan = _validate(cfg, tokenizer, keep_first=cfg.warmup_steps * cfg.batch_size)
    lg = LoraGradients(model, cfg.lora_settings(), dtype=_precision(cfg, device))
    losses = _warm_up(cfg, lg, tokenizer, plan, device, progress=progress)
    _save_adapter(lg, adapter_dir)
    (out / "stock_config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    (out / "warmup_losses.json").write_text(json.dumps(losses))
    return adapter_dir


def _precision(cfg: StockConfig, device) -> str:
    """The compute precision ``cfg.dtype`` resolves to on ``device`` (said once per process)."""
    from ..core.hardware import announce, resolve_precision

    dtype = resolve_precision(cfg.dtype, str(device))
    announce("stock", str(device), dtype, cfg.dtype)
    return dtype


def stock(cfg: StockConfig, *, progress: bool = True, on_shard: Callable[[int], None] | None = None) -> Path:
    """Build (or resume) the store described by ``cfg``; returns its folder."""
    from ..core.models import load_decoder, state_dict_hash

    t_start = time.perf_counter()
    ctx = context(cfg.device)  # torchrun: each rank stocks shards i with i % world_size == rank
    out = Path(cfg.out)
    if cfg.overwrite and out.exists() and ctx.is_main:
        shutil.rmtree(out)
    model, tokenizer, resolved = load_decoder(cfg.model)
    model_hash = state_dict_hash(model)
    model.to(ctx.device)
    plan = _validate(cfg, tokenizer, keep_first=cfg.warmup_steps * cfg.batch_size)
    invalid = plan.invalid
    ctx.barrier()
    out.mkdir(parents=True, exist_ok=True)
    if invalid and ctx.is_main:
        with open(out / "invalid.jsonl", "w") as f:
            for row in invalid:
                f.write(json.dumps(dataclasses.asdict(row)) + "\n")

    adapter = cfg.adapter
    adapter_dir = out / "adapter"
    if cfg.warmup_steps and not ctx.is_main:
        ctx.barrier()  # rank 0 warms up and saves the adapter; every other rank loads exactly that
        adapter = str(adapter_dir)
    elif cfg.warmup_steps and (adapter_dir / "adapter_config.json").exists():
        adapter = str(adapter_dir)  # resumed run: reuse the warmed-up adapter saved before the kill
    dtype = _precision(cfg, ctx.device)
    lg = LoraGradients(model, cfg.lora_settings(), dtype=dtype, adapter_path=adapter)
    warmup_losses = None
    if cfg.warmup_steps and adapter is None:
        warmup_losses = _warm_up(cfg, lg, tokenizer, plan, ctx.device, progress=progress and ctx.is_main)
        _save_adapter(lg, adapter_dir)
    if cfg.warmup_steps and ctx.is_main:
        ctx.barrier()
    projector = make_projector(lg.dim, cfg.projection_config())
    layout = lg.layout()
    header = {
        "model": cfg.model,
        "model_path": resolved,
        "model_hash": model_hash,
        "adapter_hash": lg.adapter_hash(),
        "lora": {**cfg.lora_settings().to_dict(), "includes_lora_a": lg.includes_lora_a,
                 "adapter": adapter, "warmup_steps": cfg.warmup_steps, "warmup_lr": cfg.warmup_lr if cfg.warmup_steps else None},
        "projection": cfg.projection_config().to_dict() | {"output_dim": projector.output_dim},
        "gradient_dim": lg.dim,
        "layout_hash": hashlib.sha256(json.dumps(layout).encode()).hexdigest(),
        "dtype": dtype,  # the resolved compute precision (cfg.dtype may be auto)
        "loss": LOSS_DESCRIPTION,
        "data": file_fingerprint(cfg.data.path),
        "fields": dataclasses.asdict(cfg.field_spec()),
        "max_length": cfg.max_length,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)) if cfg.chat_template is None else cfg.chat_template,
        "n_invalid": len(invalid),
    }
    writer = StoreWriter(out, header, plan.ids, cfg.shard_size, cfg.store_dtype,
                         rank=ctx.rank, world_size=ctx.world_size, barrier=ctx.barrier)
    if ctx.is_main:
        (out / "layout.json").write_text(json.dumps(layout))
        (out / "stock_config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    (out / "losses").mkdir(exist_ok=True)
    todo = writer.todo()
    n_todo = sum(writer.shard_rows(i)[1] - writer.shard_rows(i)[0] for i in todo)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("stocking"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]} ex/s"), TextColumn("ETA"), TimeRemainingColumn()]
    t0 = time.perf_counter()
    done_rows = 0
    tokens = 0
    with Progress(*columns, disable=not (progress and ctx.is_main), transient=False) as bar:
        task = bar.add_task("stock", total=n_todo, rate="-")
        for shard, shard_records, enc in _shards(cfg, tokenizer, plan, cfg.shard_size, todo):
            start, stop = writer.shard_rows(shard)
            rows = np.zeros((stop - start, projector.output_dim), dtype=np.float32)
            shard_losses = np.zeros(stop - start, dtype=np.float32)
            for b in pack_by_tokens([len(e) for e in enc], cfg.batch_size, cfg.token_budget):
                batch = collate([enc[i] for i in b], tokenizer.pad_token_id, cfg.padding_side).to(ctx.device)
                pieces, loss = lg.pieces(batch)
                projected = projector.project_pieces(pieces)
                norms = projected.norm(dim=1)
                for j, i in enumerate(b):
                    if not torch.isfinite(norms[j]) or float(norms[j]) == 0.0:
                        r = shard_records[i]
                        raise UserError(f"{cfg.data.path}, row {r.row} (id '{r.id}'): gradient is {'zero' if torch.isfinite(norms[j]) else 'not finite'}; refusing to store it")
                    shard_losses[i] = float(loss[j])
                rows[b] = projected.cpu().numpy()
                tokens += batch.n_tokens
                done_rows += len(b)
                rate = done_rows / max(time.perf_counter() - t0, 1e-9)
                bar.update(task, advance=len(b), rate=f"{rate:.2f}")
            atomic_save_npy(out / "losses" / f"loss-{shard:05d}.npy", shard_losses)
            writer.write_shard(shard, rows)
            if on_shard is not None:
                on_shard(shard)
    elapsed = time.perf_counter() - t0
    writer.finish({
        "examples_per_s_last_run": (done_rows / elapsed) if done_rows else None,
        "rows_computed_last_run": done_rows,
        "tokens_last_run": tokens,
        "seconds_last_run": round(time.perf_counter() - t_start, 2),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "warmup_losses": warmup_losses,
        "rank": ctx.rank,
    })
    return out
