"""Stage 3: distil the teacher's influence rankings into a bi-encoder (METHOD.md §2): the training loop, its
checkpoints and what it saves. Its settings are :mod:`.config`, the objective and validation metrics
:mod:`.losses`, the split and candidates :mod:`.batches`, the pool prior's warm-up and trees :mod:`.prior`.

Loss, for a B×C block (B queries, C pool candidates), predicted Î = cos(E(query), E(pool)) and true I
from the label file (pool × query, transposed to query × candidate):

    L = α·(1 − Pearson(vec Î, vec I)) + (1 − α)·mean_q KL(softmax(I_q/τ) ‖ softmax(Î_q/τ))

Validation cannot leak: before training, a held-out set of pool rows *and* a held-out set of query
columns are drawn; training only ever reads ``labels[train_pool][:, train_queries]``. Every epoch (and once
before training, "epoch 0" = the untrained encoder) the held-out pool × held-out query block is scored
with :mod:`influcoder.core.metrics`; the best epoch by ``select_metric`` is the model that is saved.

Epoch: the training pool is shuffled and cut into chunks of ``candidates`` (C); each chunk is one step
paired with the next ``queries_per_batch`` (B) queries of a shuffled, cycling query order. With
``hard_fraction`` > 0, that share of each chunk's C slots is replaced by pool examples drawn from the top
``hard_top_k`` (by true influence) of the step's queries.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.errors import UserError
from ..core.killpoints import kill_point
from ..data.records import DataSpec
from .batches import sample_candidates, split_indices
from .config import DistillConfig
from .losses import better, distill_loss, evaluate_matrix, live_bank
from .prior import embed_all, fit_prior_trees, prior_groups, warm_up_prior_phase

__all__ = ["train", "set_dropout", "CHECKPOINT_DIR"]

# ---------------------------------------------------------------------------------------------- data
def _load_side(data: DataSpec, ids: list[str], side: str):
    path = data.path
    data.field_spec()  # an unknown preset is refused before the file is looked for
    if not Path(path).exists():
        raise UserError(f"{path}: {side} data file not found")
    records, _ = data.read()
    by_id = {}
    for r in records:
        by_id.setdefault(str(r.id), r)
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise UserError(
            f"{path}: {len(missing)} of the label file's {len(ids)} {side} ids are not in this file "
            f"(first: {missing[:3]}); give the same {side} file (and field mapping) that was stocked"
        )
    return [by_id[i] for i in ids]


class _Writer:
    def __init__(self, path: Path):
        self.f = open(path, "w")

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


# ---------------------------------------------------------------------------------------------- checkpoints
CHECKPOINT_DIR = "checkpoint"
"""Sub-folder of the output folder holding the last epoch's training state (removed once training ends)."""


def set_dropout(module, p: float) -> int:
    """Set every ``torch.nn.Dropout`` inside ``module`` (an InfluenceEncoder: its transformer) to probability
    ``p`` (BERT-style attention reads its dropout module's ``p`` too); returns how many were set."""
    import torch

    n = 0
    for mod in getattr(module, "model", module).modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = p
            n += 1
    return n


def _start_embeddings(enc, cache, pool_recs, query_recs, cfg: DistillConfig, precision: str) -> dict:
    """E₀ of every training text, as the training step computes it (cached top layers or the whole encoder,
    same autocast) but in eval mode (no dropout) and without gradient: the anchor_weight term's targets."""
    import torch

    from ..core.hardware import autocast as hw_autocast

    autocast = hw_autocast(enc.device, precision)
    was = enc.model.training
    enc.eval()
    out = {}
    try:
        with torch.no_grad(), autocast:
            for side, recs in (("pool", pool_recs), ("query", query_recs)):
                parts = []
                for s in range(0, len(recs), cfg.eval_batch_size):
                    idx = list(range(s, min(len(recs), s + cfg.eval_batch_size)))
                    e = cache.embed(side, idx) if cache is not None else enc.embed([recs[i] for i in idx], side=side)
                    parts.append(e.float())
                out[side] = torch.cat(parts)
    finally:
        enc.train(was)
    return out


def _checkpoint_key(cfg: DistillConfig, labels, device: str, precision: str) -> str:
    """What a checkpoint must match to be resumed: the whole config (but ``out``) and the label file."""
    import hashlib

    d = {k: v for k, v in cfg.to_dict().items() if k != "out"}
    d["labels_sha256"] = labels.fingerprint()["sha256"]
    if cfg.dense_targets and cfg.dense_weight > 0:
        from ..teacher.labels import file_sha256

        d["dense_targets_sha256"] = file_sha256(cfg.dense_targets)
    d["resolved_device"], d["resolved_precision"] = device, precision  # `auto` may resolve otherwise elsewhere
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def _save_checkpoint(out: Path, key: str, state: dict) -> None:
    """Write the training state after an epoch atomically (temporary file, fsync, rename)."""
    import torch

    d = out / CHECKPOINT_DIR
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "state.pt.tmp"
    with open(tmp, "wb") as f:
        torch.save({"key": key, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, d / "state.pt")


def _load_checkpoint(out: Path, key: str, say: Callable[[str], None]) -> dict | None:
    """The state saved by :func:`_save_checkpoint` when it belongs to this config and labels, else None."""
    import torch

    path = out / CHECKPOINT_DIR / "state.pt"
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a damaged checkpoint is never trusted
        say(f"checkpoint {path} unreadable ({e}); training from the start")
        return None
    if state.get("key") != key:
        say(f"checkpoint {path} belongs to another config or label file; training from the start")
        return None
    say(f"resuming from the checkpoint of epoch {state['epoch']} in {path}")
    return state


def _data_specs(cfg: DistillConfig) -> dict[str, dict]:
    """The typed data specs (records.DataSpec) of the training files, saved with the encoder so later
    readers (the OOD reference of attribute/filter) read them with the same field mapping."""
    return {side: dataclasses.replace(d, path=str(Path(d.path).resolve())).to_dict()
            for side, d in (("pool", cfg.pool_data), ("query", cfg.query_data))}


def _write_metrics(out: Path, history: list[dict]) -> None:
    """metrics.jsonl written whole and atomically from the rows logged (replaces the running .tmp log)."""
    from ..core.fileio import atomic_write_text

    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    (out / "metrics.jsonl.tmp").unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- train
def train(config: DistillConfig, progress: bool = True, log: Callable[[str], None] | None = None) -> Path:
    """Train the student on the label file; return the output folder (a loadable InfluenceEncoder)."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .. import __version__
    from .encoder import InfluenceEncoder
    from ..teacher.labels import load_dense_targets, load_labels
    from ..data.records import file_fingerprint

    cfg = config
    say = log or (lambda s: None)
    out = Path(cfg.out)
    t_start = time.time()
    try:
        labels = load_labels(cfg.labels)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    n_pool = len(labels.pool_ids) if cfg.limit_pool is None else min(cfg.limit_pool, len(labels.pool_ids))
    n_query = len(labels.query_ids) if cfg.limit_queries is None else min(cfg.limit_queries, len(labels.query_ids))
    pool_ids, query_ids = labels.pool_ids[:n_pool], labels.query_ids[:n_query]
    full = np.asarray(labels.matrix[:n_pool, :n_query], dtype=np.float32)
    if not np.isfinite(full).all():
        raise UserError(f"{cfg.labels}: label matrix has non-finite values")
    pool_recs = _load_side(cfg.pool_data, pool_ids, "pool")
    query_recs = _load_side(cfg.query_data, query_ids, "query")

    split = split_indices(n_pool, n_query, cfg.val_pool, cfg.val_queries, cfg.seed)
    # the only label block training ever reads:
    train_block = np.ascontiguousarray(full[np.ix_(split.train_pool, split.train_queries)])
    val_block = np.ascontiguousarray(full[np.ix_(split.val_pool, split.val_queries)])
    dense = targets = None
    if cfg.dense_weight > 0:
        try:
            targets = load_dense_targets(cfg.dense_targets)
            dense = {"pool": targets.rows([pool_ids[i] for i in split.train_pool], "pool"),
                     "query": targets.rows([query_ids[j] for j in split.train_queries], "query")}
        except (FileNotFoundError, ValueError) as e:
            raise UserError(str(e)) from None
        for side, T in dense.items():
            n = np.linalg.norm(T, axis=1, keepdims=True)
            if not (np.isfinite(T).all() and (n > 0).all()):
                raise UserError(f"{cfg.dense_targets}: a {side} target is zero or not finite")
            dense[side] = T / n
    train_pool_recs = [pool_recs[i] for i in split.train_pool]
    train_query_recs = [query_recs[j] for j in split.train_queries]
    val_pool_recs = [pool_recs[i] for i in split.val_pool]
    val_query_recs = [query_recs[j] for j in split.val_queries]

    from ..core.hardware import announce, autocast as hw_autocast, resolve

    device, precision = resolve(cfg.device, cfg.precision)
    announce("train", device, precision, cfg.precision, say if log is not None else None)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    enc = InfluenceEncoder.from_pretrained(
        cfg.encoder, pooling=cfg.pooling, projection_dim=cfg.projection_dim, max_length=cfg.max_length,
        pool_prefix=cfg.pool_prefix, query_prefix=cfg.query_prefix, seed=cfg.seed, device=device,
    )  # the training steps run under `precision`; validation and the trees embed in float32, as before
    if dense is not None:
        if enc.embedding_dim < dense["pool"].shape[1]:
            raise UserError(f"{cfg.dense_targets}: k = {dense['pool'].shape[1]} dense coordinates need an embedding of at "
                            f"least that dimension, the student's is {enc.embedding_dim} (set projection_dim ≥ k)")
        pad = enc.embedding_dim - dense["pool"].shape[1]
        dense = {side: torch.from_numpy(np.pad(T, ((0, 0), (0, pad)))).to(device) for side, T in dense.items()}
    if cfg.dropout is not None:
        set_dropout(enc, cfg.dropout)
    if cfg.pool_prior:
        from .prior import build_prior

        enc.prior = build_prior(enc.embedding_dim, cfg.prior_hidden, seed=cfg.seed).to(device)
    pool_len = torch.from_numpy(enc.length_features(train_pool_recs)).to(device) if enc.prior is not None else None
    cache = None
    n_frozen = cfg.freeze_layers
    if n_frozen is None:
        from .layer_cache import encoder_layers

        try:
            n_frozen = max(0, len(encoder_layers(enc)) - 2)
        except UserError:
            n_frozen = 0  # not a BERT-style student: train every layer
    if n_frozen > 0:
        from .layer_cache import LayerCache, freeze_lower

        freeze_lower(enc, n_frozen)
        tc = time.time()
        cache = LayerCache(enc, n_frozen)
        cache.add("pool", enc.texts(train_pool_recs, "pool"), "pool", cfg.eval_batch_size)
        cache.add("query", enc.texts(train_query_recs, "query"), "query", cfg.eval_batch_size)
        say(f"cached the {n_frozen} frozen layers' output for {len(train_pool_recs)} pool and "
            f"{len(train_query_recs)} query texts in {time.time() - tc:.0f} s ({cache.nbytes() / 2**20:.0f} MiB)")
        kill_point("train:layer-cache")
    out.mkdir(parents=True, exist_ok=True)
    (out / "distill_config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    split_doc = {
        "seed": cfg.seed,
        "train_pool_ids": [pool_ids[i] for i in split.train_pool],
        "val_pool_ids": [pool_ids[i] for i in split.val_pool],
        "train_query_ids": [query_ids[j] for j in split.train_queries],
        "val_query_ids": [query_ids[j] for j in split.val_queries],
    }
    tmp = out / "split.json.tmp"
    tmp.write_text(json.dumps(split_doc))
    os.replace(tmp, out / "split.json")
    writer = _Writer(out / "metrics.jsonl.tmp")

    def validate() -> dict[str, float]:
        enc.eval()
        with torch.no_grad():
            P = embed_all(enc, val_pool_recs, "pool", cfg.eval_batch_size)
            Q = embed_all(enc, val_query_recs, "query", cfg.eval_batch_size)
        return evaluate_matrix(P @ Q.T, val_block, cfg.alpha, cfg.tau)

    rng = np.random.default_rng(cfg.seed + 1)
    n_tp, n_tq = len(split.train_pool), len(split.train_queries)
    C, B = min(cfg.candidates, n_tp), min(cfg.queries_per_batch, n_tq)
    steps_per_epoch = math.ceil(n_tp / C)
    updates_per_epoch = math.ceil(steps_per_epoch / cfg.grad_accum)
    total_updates = updates_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_ratio * total_updates))

    params = [p for p in enc.parameters() if p.requires_grad]
    prior_ids = {id(p) for p in enc.prior.parameters()} if enc.prior is not None else set()
    body = [p for p in params if id(p) not in prior_ids]
    decay = [p for p in body if p.ndim >= 2]
    no_decay = [p for p in body if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if prior_ids:
        groups += prior_groups(enc.prior, cfg.prior_lr if cfg.prior_lr is not None else cfg.lr, cfg.score_scale_lr)
    opt = torch.optim.AdamW(groups, lr=cfg.lr)

    def lr_at(u: int) -> float:
        if warmup and u < warmup:
            return (u + 1) / warmup
        return max(0.0, (total_updates - u) / max(1, total_updates - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)

    t0 = time.time()
    ckpt_key = _checkpoint_key(cfg, labels, device, precision)
    resumed = _load_checkpoint(out, ckpt_key, say)
    m0 = resumed["m0"] if resumed else validate()
    row0 = {"epoch": 0, "step": 0, "split": "val", "model": "untrained", **m0, "seconds": time.time() - t0}
    writer.write(row0)
    say(f"untrained: per-anchor {m0['per_anchor_spearman']:.3f}, aggregated {m0['aggregated_spearman']:.3f}, "
        f"query-specific {m0['query_specific_spearman']:.3f}, loss {m0['loss']:.4f}")
    best_val, best_epoch, best_metrics = m0[cfg.select_metric], 0, m0
    history = [row0]

    def prior_phase(model: str, key: str, steps: int, epoch: int, at_step: int) -> dict[str, float]:
        """Fit the prior alone (warm-up or refit); its validation row (``model``, ``{key}_steps``) joins the
        history. Returns its validation metrics."""
        t = time.time()
        m = warm_up_prior_phase(enc, cfg, cache, train_pool_recs, train_query_recs, val_pool_recs, val_query_recs,
                           pool_len, train_block, val_block, steps)
        history.append({"epoch": epoch, "step": at_step, "split": "val", "model": model, **m,
                        f"{key}_steps": steps, "seconds": time.time() - t})
        say(f"{model} ({steps} steps, {time.time() - t:.0f} s): per-anchor {m['per_anchor_spearman']:.3f}, "
            f"aggregated {m['aggregated_spearman']:.3f}")
        return m

    if enc.prior is not None and cfg.prior_warmup_steps and not resumed:
        m_w = prior_phase("prior warm-up", "prior_warmup", cfg.prior_warmup_steps, 0, 0)
        writer.write(history[-1])
        if better(cfg.select_metric, m_w[cfg.select_metric], best_val):
            best_val, best_metrics = m_w[cfg.select_metric], m_w
        kill_point("train:warm-up")
    best_state = copy.deepcopy(enc.state_dict())
    start = (_start_embeddings(enc, cache, train_pool_recs, train_query_recs, cfg, precision)
             if cfg.anchor_weight > 0 or cfg.kl_over == "pool" else None)
    anchors = start if cfg.anchor_weight > 0 else None
    bank = start["pool"].clone() if cfg.kl_over == "pool" else None  # latest embedding of every training pool row

    pool_mean_t = torch.from_numpy(train_block.mean(axis=1).astype(np.float32)).to(device)  # pool factor over all train queries
    since_best = 0
    top_cache: dict[int, np.ndarray] = {}
    q_order = rng.permutation(n_tq)
    q_pos = 0
    step = 0
    update = 0
    train_seconds = 0.0
    start_epoch = 1
    if resumed:  # the state after epoch resumed["epoch"]: the rest of the run is as if never interrupted
        enc.load_state_dict(resumed["model"])
        opt.load_state_dict(resumed["opt"])
        sched.load_state_dict(resumed["sched"])
        rng.bit_generator.state = resumed["rng"]
        torch.set_rng_state(resumed["torch_rng"])
        if resumed.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(resumed["cuda_rng"], torch.device(device))
        random.setstate(resumed["py_rng"])
        np.random.set_state(resumed["np_rng"])
        q_order, q_pos, step, update, train_seconds = (resumed[k] for k in ("q_order", "q_pos", "step", "update", "train_seconds"))
        best_val, best_epoch, best_metrics, best_state = (resumed[k] for k in ("best_val", "best_epoch", "best_metrics", "best_state"))
        history = resumed["history"]
        for row in history[1:]:
            writer.write(row)
        since_best = resumed.get("since_best", 0)
        if bank is not None:
            bank = resumed["bank"].to(device)
        done = history[-1].get("partial") or history[-1].get("early_stop")
        start_epoch = cfg.epochs + 1 if done else resumed["epoch"] + 1
    autocast = hw_autocast(device, precision)
    columns = [TextColumn("[bold]train[/] epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("train", total=steps_per_epoch * max(0, cfg.epochs - start_epoch + 1), epoch=start_epoch, loss=float("nan"))
        for epoch in range(start_epoch, cfg.epochs + 1):
            enc.train()
            te = time.time()
            order = rng.permutation(n_tp)
            run_loss, run_p, run_k, run_d, n_steps = 0.0, 0.0, 0.0, 0.0, 0
            opt.zero_grad(set_to_none=True)
            partial = False
            for s in range(steps_per_epoch):
                if cfg.max_train_seconds is not None and train_seconds + (time.time() - te) > cfg.max_train_seconds:
                    partial = True
                    if (s % cfg.grad_accum) != 0:  # apply the gradients already accumulated
                        if cfg.max_grad_norm > 0:
                            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                        opt.step()
                        sched.step()
                        opt.zero_grad(set_to_none=True)
                    break
                chunk = order[s * C:(s + 1) * C]
                if len(chunk) < 2:
                    chunk = np.concatenate([chunk, rng.choice(order[: s * C], 2 - len(chunk), replace=False)])
                if q_pos + B > n_tq:
                    q_order, q_pos = rng.permutation(n_tq), 0
                qs = q_order[q_pos:q_pos + B]
                q_pos += B
                cands = sample_candidates(rng, chunk, qs, train_block, cfg.hard_fraction, cfg.hard_top_k, top_cache)
                true = torch.from_numpy(train_block[np.ix_(cands, qs)].T.copy()).to(device)  # B × C
                with autocast:
                    if cache is not None:
                        eq = cache.embed("query", qs)
                        ep = cache.embed("pool", cands)
                    else:
                        eq = enc.embed([train_query_recs[j] for j in qs], side="query")
                        ep = enc.embed([train_pool_recs[i] for i in cands], side="pool")
                pred = eq.float() @ ep.float().T  # cosine (embeddings are normalised), B × C
                if enc.prior is not None:
                    pred = enc.prior.scale * (pred + enc.prior_scores(ep.float(), pool_len[cands])[None, :])
                kl_pred = kl_true = None
                if bank is not None:  # listwise KL over every training pool example
                    mixed = live_bank(bank, ep.float(), cands)
                    kl_pred = eq.float() @ mixed.T
                    if enc.prior is not None:
                        kl_pred = enc.prior.scale * (kl_pred + enc.prior_scores(mixed, pool_len)[None, :])
                    kl_true = torch.from_numpy(train_block[:, qs].T.copy()).to(device)  # B × every training pool row
                if cfg.label_noise > 0:
                    true = true + cfg.label_noise * torch.randn(true.shape).to(device)
                    if kl_true is not None:
                        kl_true = kl_true + cfg.label_noise * torch.randn(kl_true.shape).to(device)
                loss, parts = distill_loss(pred, true, cfg.alpha, cfg.tau, cfg.center_queries,
                                           pool_mean_t[cands], cfg.pool_mean_weight, kl_pred, kl_true)
                loss = cfg.rank_weight * loss
                if dense is not None:  # every text in the step regressed onto its own unit target
                    ci = torch.as_tensor(np.asarray(cands), dtype=torch.long, device=device)
                    qi = torch.as_tensor(np.asarray(qs), dtype=torch.long, device=device)
                    ld = 1.0 - torch.cat([(eq.float() * dense["query"][qi]).sum(-1),
                                          (ep.float() * dense["pool"][ci]).sum(-1)]).mean()
                    loss = loss + cfg.dense_weight * ld
                    parts["dense"] = ld.detach()
                if anchors is not None:
                    e_now = torch.cat([eq.float(), ep.float()])
                    e_start = torch.cat([anchors["query"][qs], anchors["pool"][cands]])
                    la = (1.0 - (e_now * e_start).sum(dim=-1)).mean()
                    loss = loss + cfg.anchor_weight * la
                    parts["anchor"] = la.detach()
                (loss / cfg.grad_accum).backward()
                if bank is not None:
                    bank[torch.as_tensor(np.asarray(cands), dtype=torch.long, device=bank.device)] = ep.detach().float()
                step += 1
                last = s == steps_per_epoch - 1
                if (s + 1) % cfg.grad_accum == 0 or last:
                    if cfg.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                    update += 1
                    kill_point("train:step", update)
                run_loss += float(loss.detach())
                run_p += float(parts["pearson"])
                run_k += float(parts["kl"])
                run_d += float(parts.get("dense", 0.0))
                n_steps += 1
                bar.update(task, advance=1, epoch=epoch, loss=run_loss / n_steps)
            tv = time.time()
            train_seconds += tv - te
            m = validate()
            row = {"epoch": epoch, "step": step, "split": "val", "model": "trained", **m, "partial": partial,
                   "steps_this_epoch": n_steps, "train_loss": run_loss / max(1, n_steps), "train_loss_pearson": run_p / max(1, n_steps),
                   "train_loss_kl": run_k / max(1, n_steps),
                   **({"train_loss_dense": run_d / max(1, n_steps)} if dense is not None else {}), "lr": sched.get_last_lr()[0],
                   "train_seconds": tv - te, "val_seconds": time.time() - tv}
            writer.write(row)
            history.append(row)
            say(f"epoch {epoch}: train loss {row['train_loss']:.4f}; val per-anchor {m['per_anchor_spearman']:.3f}, "
                f"aggregated {m['aggregated_spearman']:.3f}, query-specific {m['query_specific_spearman']:.3f}, "
                f"loss {m['loss']:.4f}")
            if better(cfg.select_metric, m[cfg.select_metric], best_val):
                best_val, best_epoch, best_metrics = m[cfg.select_metric], epoch, m
                best_state = copy.deepcopy(enc.state_dict())
                since_best = 0
            else:
                since_best += 1
            stop_early = cfg.patience is not None and since_best >= cfg.patience and epoch < cfg.epochs
            if stop_early:
                history[-1]["early_stop"] = True
            kill_point("train:validated", epoch)
            _save_checkpoint(out, ckpt_key, {
                "epoch": epoch, "model": enc.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "py_rng": random.getstate(),
                "np_rng": np.random.get_state(),
                "cuda_rng": torch.cuda.get_rng_state(torch.device(device)) if device.startswith("cuda") else None,
                "q_order": q_order, "q_pos": q_pos, "step": step, "update": update,
                "train_seconds": train_seconds, "best_val": best_val, "best_epoch": best_epoch,
                "best_metrics": best_metrics, "best_state": best_state, "history": history, "m0": m0,
                "since_best": since_best, "bank": bank})
            kill_point("train:checkpoint", epoch)
            if stop_early:
                say(f"early stop: no better validation {cfg.select_metric} for {since_best} epochs")
                break
            if partial:
                say(f"training budget of {cfg.max_train_seconds:.0f} s spent after {n_steps} steps of epoch {epoch}")
                break
    writer.close()

    enc.load_state_dict(best_state)
    enc.eval()
    if enc.prior is not None and cfg.prior_refit_steps:
        m_r = prior_phase("prior refit", "prior_refit", cfg.prior_refit_steps, best_epoch, step)
        if better(cfg.select_metric, m_r[cfg.select_metric], best_val):
            best_val, best_metrics = m_r[cfg.select_metric], m_r
    if enc.prior is not None and cfg.prior_trees:
        tt = time.time()
        fit = fit_prior_trees(enc, train_pool_recs, train_block, val_pool_recs, val_query_recs, val_block, cfg)
        history.append({"epoch": best_epoch, "step": step, "split": "val", "model": "prior trees", **fit["metrics"],
                        "kappa": fit["kappa"], "lambda": fit["lambda"],
                        "candidates": [{"lambda": c["lambda"], "kappa": c["kappa"],
                                        cfg.select_metric: c["metrics"][cfg.select_metric]} for c in fit["candidates"]],
                        "seconds": time.time() - tt})
        say(f"boosted pool prior ({fit['n_trees']} trees, {time.time() - tt:.0f} s): λ {fit['lambda']} "
            + ", ".join(f"{c['lambda']}: {c['metrics'][cfg.select_metric]:.3f}" for c in fit["candidates"]))
        if fit["kappa"] > 0:
            best_val, best_metrics = fit["metrics"][cfg.select_metric], fit["metrics"]
    kill_point("train:trees")
    teacher = labels.meta.get("teacher") or {}
    metadata = {
        "format": "influcoder-encoder/1",
        "influcoder_version": __version__,
        "base_encoder": cfg.encoder,
        "teacher": {
            "decoder": teacher.get("model"),
            "decoder_hash": teacher.get("model_hash"),
            "adapter_hash": teacher.get("adapter_hash"),
            "lora": teacher.get("lora"),
            "projection": teacher.get("projection"),
            "dtype": teacher.get("dtype"),
            "loss": teacher.get("loss"),
        },
        "labels": labels.fingerprint(),
        "dense_targets": targets.fingerprint() if dense is not None else None,
        "pool_data": file_fingerprint(cfg.pool_data.path),
        "query_data": file_fingerprint(cfg.query_data.path),
        "data_specs": _data_specs(cfg),
        "training_config": cfg.to_dict(),
        "device": device,
        "precision": precision,  # resolved (training_config holds what was asked: auto, float32 or bfloat16)
        "split": {"n_train_pool": int(n_tp), "n_val_pool": int(len(split.val_pool)),
                  "n_train_queries": int(n_tq), "n_val_queries": int(len(split.val_queries)), "seed": cfg.seed},
        "selection": {"metric": cfg.select_metric, "best_epoch": best_epoch},
        "validation_untrained": m0,
        "validation": best_metrics,
        "train_seconds": train_seconds,
        "steps": step,
        "stopped_by_time_budget": any(r.get("partial") for r in history),
        "stopped_early": any(r.get("early_stop") for r in history),
        "epochs_run": sum(1 for r in history if r.get("model") == "trained"),
        **{key: next(({k: r[k] for k in (f"{key}_steps", "per_anchor_spearman", "seconds")}
                      for r in history if r.get("model") == model), None)
           for key, model in (("prior_warmup", "prior warm-up"), ("prior_refit", "prior refit"))},
        "total_seconds": time.time() - t_start,
        "pool_prior": bool(cfg.pool_prior),
        "frozen_layers": int(n_frozen),
        "pooling": cfg.pooling,
        "projection_dim": cfg.projection_dim,
        "max_length": cfg.max_length,
        "prefixes": {"pool": cfg.pool_prefix, "query": cfg.query_prefix},
    }
    enc.save(out, metadata)
    _write_metrics(out, history)
    kill_point("train:saved")
    import shutil

    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    kill_point("train:done")
    say(f"saved epoch {best_epoch} (best {cfg.select_metric} = {best_val:.4f}) to {out}")
    return out
