"""Stage 3: distil the teacher's influence rankings into a bi-encoder (METHOD.md §2).

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
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.errors import UserError
from ..core.killpoints import kill_point
from ..data.records import DataSpec

__all__ = [
    "DistillConfig",
    "distill_loss",
    "pearson_loss",
    "kl_loss",
    "split_indices",
    "live_bank",
    "Split",
    "sample_candidates",
    "evaluate_matrix",
    "train",
]

NO_OP_VALUES = {"dense_targets": None, "dense_weight": 0.0, "rank_weight": 1.0}
"""DistillConfig fields added after students were first cached, with the value at which each changes nothing:
a recipe (``evaluate.student_recipe``) leaves a field out at that value, so earlier students keep their keys."""

SELECT_METRICS = ("per_anchor_spearman", "aggregated_spearman", "query_specific_spearman", "loss")
PRIOR_TREES_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)
"""λ candidates of the boosted pool prior's weight (see DistillConfig.prior_trees), besides 0."""


@dataclass
class DistillConfig:
    """Everything that defines a distillation run; saved as ``distill_config.json`` next to the model."""

    pool_data: DataSpec
    """Pool records file (the examples the teacher stocked as the pool) and how to read it."""
    query_data: DataSpec
    """Query records file (the examples the teacher stocked as queries) and how to read it."""
    labels: str
    """Label .npy written by ``influcoder influence`` (pool × query; ids in its .meta.json)."""
    out: str
    """Output folder for the trained encoder, its config, split and metrics log."""
    encoder: str = "minilm-l6"
    """Student: Hugging Face encoder hub id or folder, or the packaged short name minilm-l6."""
    pool_prefix: str = ""
    """Text prepended to every pool text (saved as the sentence-transformers prompt 'pool')."""
    query_prefix: str = ""
    """Text prepended to every query text (saved as the sentence-transformers prompt 'query')."""
    pooling: str = "mean"
    """Pooling of token embeddings: mean | cls | max."""
    projection_dim: int | None = None
    """If set, a linear head (no bias) projects the pooled embedding to this dimension."""
    max_length: int = 128
    """Encoder tokens per text (truncated from the right; the pool prior still sees the full lengths)."""
    queries_per_batch: int = 48
    """B: queries per step (paper: 12)."""
    candidates: int = 48
    """C: pool candidates per step (paper: 15)."""
    alpha: float = 0.5
    """Weight of the Pearson term; 1 − alpha weighs the KL term (paper: 0.5)."""
    tau: float = 0.05
    """Softmax temperature of the KL term, applied to teacher and student scores alike (paper: not given)."""
    kl_over: str = "batch"
    """Candidates of the KL term: ``batch`` (the step's C, the paper's form) or ``pool`` (a listwise KL over
    every training pool example for each of the step's queries: the step's C candidates are embedded live,
    the others come from a bank of their latest embeddings, no gradient, refreshed whenever a row is a step's
    candidate, so at most one epoch old; the Pearson term stays on the B × C block)."""
    hard_fraction: float = 0.0
    """Share of the C candidate slots filled with high-influence pool examples of the step's queries."""
    hard_top_k: int = 50
    """Hard candidates are drawn from each query's top-k training pool examples by true influence."""
    lr: float = 5e-4
    """AdamW learning rate (paper: 5e-5)."""
    weight_decay: float = 0.01
    """AdamW weight decay (paper: 0.01)."""
    warmup_ratio: float = 0.1
    """Share of optimiser steps with linear learning-rate warm-up (then linear decay to 0)."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping threshold (0 disables clipping)."""
    epochs: int = 40
    """Passes over the training pool (paper: 10)."""
    grad_accum: int = 1
    """Steps whose gradients are accumulated (summed loss / grad_accum) before one optimiser update."""
    seed: int = 0
    """Seed of the held-out split, candidate sampling, head initialisation and dropout."""
    precision: str = "auto"
    """Precision of the encoder's forward: auto (bfloat16 autocast where the device computes it natively,
    float32 elsewhere; see influcoder.core.hardware), float32, or bfloat16 (autocast; the loss stays float32).
    The encoder's metadata records the resolved one."""
    device: str = "auto"
    """Device the student trains on: auto (CUDA when present, else cpu), cpu, cuda or cuda:N."""
    val_pool: float = 0.2
    """Held-out pool examples: a fraction if < 1, else a count."""
    val_queries: float = 0.2
    """Held-out queries: a fraction if < 1, else a count."""
    select_metric: str = "per_anchor_spearman"
    """Validation metric that picks the saved epoch (higher is better; for 'loss' lower is better)."""
    eval_batch_size: int = 64
    """Texts per forward pass when embedding the held-out sets."""
    max_train_seconds: float | None = None
    """Wall-clock budget for the optimisation steps: when spent, the current epoch stops early, is validated
    (logged with ``"partial": true``) and training ends. The learning-rate schedule is not shortened."""
    limit_pool: int | None = None
    """Use only the first N pool rows of the label file (quick runs)."""
    limit_queries: int | None = None
    """Use only the first N query columns of the label file (quick runs)."""
    freeze_layers: int | None = None
    """Freeze the word embeddings and the first N transformer layers; their outputs are computed once per
    training text and cached, so each step runs only the top layers (much cheaper; see layer_cache.py).
    None (default): all but the top two layers (4 of MiniLM-L6's 6); 0 trains every layer."""
    center_queries: bool = False
    """Pearson term on per-query centred blocks (each query's mean removed from predicted and true rows)."""
    pool_mean_weight: float = 0.0
    """Weight of an extra term 1 − Pearson over the step's candidates between the predicted mean over the step's
    queries and the candidate's true mean influence over *all* training queries (the pool factor)."""
    dropout: float | None = None
    """Dropout probability of every dropout layer of the encoder while it trains (None: the model's own,
    0.1 for MiniLM). Frozen, cached layers run without dropout either way."""
    anchor_weight: float = 0.0
    """Weight of a term that keeps the student close to where it started: mean over the step's texts of
    1 − cos(E(x), E₀(x)), E₀ the starting encoder's embedding (computed once, without dropout)."""
    label_noise: float = 0.0
    """Standard deviation of Gaussian noise added to the step's true labels (fresh every step). The
    CountSketch's own error on a cosine is ≈ 1/√k (0.004 at k = 65,536); labels spread ≈ 0.04 within a query."""
    patience: int | None = 3
    """Early stopping: end training after this many epochs without a better validation score."""
    pool_prior: bool = True
    """Learn a pool-side prior: predicted influence = cos(E(q), E(p)) + b(p), b = w·tanh(MLP) of the pool
    embedding and its length features, carried by two extra coordinates of unit vectors (exact under an
    inner-product index; see encoder.build_prior)."""
    prior_hidden: int = 256
    """Hidden width of the pool prior's MLP."""
    prior_lr: float | None = 2e-3
    """Learning rate of the pool prior's parameters (None: ``lr``); the prior starts from zero, so a larger
    rate lets it take up the pool factor within a short run."""
    score_scale_lr: float = 2e-2
    """Learning rate of the pool prior's training scale γ (the loss sees γ·(cos + b); see
    encoder.build_prior): a learned temperature that lets the prior outweigh a still-noisy cosine early.
    0 keeps γ = 1 (the loss of the earlier recipe)."""
    prior_warmup_steps: int = 1000
    """Steps that fit the pool prior alone before the encoder trains: the starting encoder's embeddings of
    the training and validation texts are computed once (no gradient), then only the prior learns, on random
    B × C blocks of the training labels with the same loss (no encoder pass, so seconds). The prior state
    with the best validation score (checked every ``prior_warmup_eval`` steps) starts the joint training.
    Without ``pool_prior`` there is no prior and nothing is done."""
    prior_warmup_eval: int = 100
    """Validation interval (steps) of the prior warm-up and of the prior refit."""
    prior_trees: bool = True
    """Fit a boosted pool prior after training (prior_trees.py; needs ``pool_prior``): gradient-boosted trees
    from the trained student's embedding of each training pool example and plain statistics of its text
    (lengths, the response's form) to its pool factor (mean label over the training queries). Its weight κ is
    chosen on distill's validation block among 0 (no trees) and λ·(spread of the score)/(spread of the trees'
    prediction), λ in PRIOR_TREES_WEIGHTS; the score becomes cos + b(p) + κ·g(p), still one inner product.
    Without ``pool_prior`` there are no trees either (their term rides on the prior's coordinate)."""
    prior_refit_steps: int = 0
    """Steps that refit the pool prior alone, as the warm-up does, on the embeddings of the encoder training
    chose (after its best epoch is loaded); the refit state is kept only where distill's validation improves."""
    dense_targets: str | None = None
    """A dense-target file (``influcoder targets``): every stocked example's coordinates c in the top-k principal
    directions of the teacher's unit gradients. With ``dense_weight`` > 0, each step also regresses the
    embedding of every pool row and query in the step onto its own unit target ĉ = c / ‖c‖ (zero-padded to the
    embedding's dimension): the term 1 − ⟨E(x), ĉ⟩, so cos(E(p), E(q)) → cos(c_p, c_q), which ranks the pool as
    the teacher does up to the basis (experiment 1: per-anchor 0.92 at k = 32). Needs an embedding dimension ≥ k
    (``projection_dim``). Every stocked example is then a training example on its own, not only through pairs."""
    dense_weight: float = 0.0
    """Weight of the dense-target term (needs ``dense_targets``)."""
    rank_weight: float = 1.0
    """Weight of the ranking losses (Pearson + KL on the step's block); 0 with ``dense_weight`` > 0 trains on
    the dense target alone (the prior warm-up and trees still read the labels)."""

    def __post_init__(self) -> None:
        def bad(msg: str):
            raise UserError(f"DistillConfig: {msg}")

        self.pool_data, self.query_data = DataSpec.of(self.pool_data), DataSpec.of(self.query_data)

        if self.queries_per_batch < 1 or self.candidates < 2:
            bad(f"need queries_per_batch ≥ 1 and candidates ≥ 2, got {self.queries_per_batch} and {self.candidates}")
        if not 0.0 <= self.alpha <= 1.0:
            bad(f"alpha must be in [0, 1], got {self.alpha}")
        if not self.tau > 0:
            bad(f"tau must be > 0, got {self.tau}")
        if self.kl_over not in ("batch", "pool"):
            bad(f"kl_over must be batch or pool, got {self.kl_over!r}")
        if not 0.0 <= self.hard_fraction <= 1.0:
            bad(f"hard_fraction must be in [0, 1], got {self.hard_fraction}")
        if self.hard_top_k < 1:
            bad(f"hard_top_k must be ≥ 1, got {self.hard_top_k}")
        if not self.lr > 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            bad("need lr > 0, weight_decay ≥ 0, max_grad_norm ≥ 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            bad(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.epochs < 1 or self.grad_accum < 1:
            bad(f"epochs and grad_accum must be ≥ 1, got {self.epochs} and {self.grad_accum}")
        for name in ("val_pool", "val_queries"):
            v = getattr(self, name)
            if not (0 < v < 1 or (v >= 1 and float(v).is_integer())):
                bad(f"{name} must be a fraction in (0, 1) or a whole count ≥ 1, got {v}")
        if self.select_metric not in SELECT_METRICS:
            bad(f"select_metric must be one of {', '.join(SELECT_METRICS)}, got {self.select_metric!r}")
        if self.pooling not in ("mean", "cls", "max"):
            bad(f"pooling must be mean, cls or max, got {self.pooling!r}")
        if self.projection_dim is not None and self.projection_dim < 1:
            bad(f"projection_dim must be ≥ 1, got {self.projection_dim}")
        if self.max_train_seconds is not None and not self.max_train_seconds > 0:
            bad(f"max_train_seconds must be > 0, got {self.max_train_seconds}")
        if self.max_length < 8 or self.eval_batch_size < 1:
            bad("need max_length ≥ 8 and eval_batch_size ≥ 1")
        if self.freeze_layers is not None and self.freeze_layers < 0:
            bad(f"freeze_layers must be ≥ 0, got {self.freeze_layers}")
        if self.pool_mean_weight < 0:
            bad(f"pool_mean_weight must be ≥ 0, got {self.pool_mean_weight}")
        if self.prior_lr is not None and not self.prior_lr > 0:
            bad(f"prior_lr must be > 0, got {self.prior_lr}")
        if self.prior_hidden < 1:
            bad(f"prior_hidden must be ≥ 1, got {self.prior_hidden}")
        if not self.score_scale_lr >= 0:
            bad(f"score_scale_lr must be ≥ 0, got {self.score_scale_lr}")
        if self.prior_warmup_steps < 0:
            bad(f"prior_warmup_steps must be ≥ 0, got {self.prior_warmup_steps}")
        if self.prior_refit_steps < 0:
            bad(f"prior_refit_steps must be ≥ 0, got {self.prior_refit_steps}")
        if self.prior_warmup_eval < 1:
            bad(f"prior_warmup_eval must be ≥ 1, got {self.prior_warmup_eval}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            bad(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.anchor_weight >= 0:
            bad(f"anchor_weight must be ≥ 0, got {self.anchor_weight}")
        if not self.label_noise >= 0:
            bad(f"label_noise must be ≥ 0, got {self.label_noise}")
        if self.patience is not None and self.patience < 1:
            bad(f"patience must be ≥ 1, got {self.patience}")
        if not self.dense_weight >= 0 or not self.rank_weight >= 0:
            bad(f"dense_weight and rank_weight must be ≥ 0, got {self.dense_weight} and {self.rank_weight}")
        if self.dense_weight > 0 and not self.dense_targets:
            bad("dense_weight > 0 needs dense_targets (a file from `influcoder targets`)")
        if self.dense_weight == 0 and self.rank_weight == 0:
            bad("rank_weight and dense_weight are both 0: nothing to train on")
        from ..core.hardware import check_compute

        try:
            check_compute(self.device, self.precision)
        except UserError as e:
            bad(str(e))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        known = {f.name for f in fields(cls)}
        d = dict(d)
        if "bf16" in d and "precision" not in d:  # training configs saved before `precision` replaced `bf16`
            d["precision"] = "bfloat16" if d.pop("bf16") else "float32"
        unknown = set(d) - known
        if unknown:
            raise UserError(f"DistillConfig: unknown fields {sorted(unknown)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------- loss
def pearson_loss(pred, true, eps: float = 1e-8, center_rows: bool = False):
    """1 − Pearson correlation of the flattened matrices (a scalar tensor); with ``center_rows`` each row
    (query) has its own mean removed first, so only the within-query ordering of the candidates counts."""
    if center_rows:
        pred = pred.float() - pred.float().mean(dim=-1, keepdim=True)
        true = true.float() - true.float().mean(dim=-1, keepdim=True)
    p = pred.reshape(-1).float()
    t = true.reshape(-1).float()
    p = p - p.mean()
    t = t - t.mean()
    r = (p * t).sum() / (p.norm() * t.norm() + eps)
    return 1.0 - r


def kl_loss(pred, true, tau: float):
    """mean over rows (queries) of KL(softmax(true_q/τ) ‖ softmax(pred_q/τ)), summed over candidates."""
    import torch

    log_p = torch.log_softmax(true.float() / tau, dim=-1)
    log_q = torch.log_softmax(pred.float() / tau, dim=-1)
    kl_rows = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    return kl_rows.mean()


def distill_loss(pred, true, alpha: float = 0.5, tau: float = 0.05, center_queries: bool = False,
                 pool_mean=None, pool_mean_weight: float = 0.0, kl_pred=None, kl_true=None):
    """``α·(1 − Pearson(vec Î, vec I)) + (1 − α)·mean_q KL(softmax(I_q/τ) ‖ softmax(Î_q/τ))``
    ``+ w·(1 − Pearson(mean_q Î, m))`` when ``pool_mean`` m (one true pool-factor value per candidate) and
    ``pool_mean_weight`` w > 0 are given.

    ``pred`` and ``true`` are (B queries × C candidates). With ``kl_pred`` / ``kl_true`` (B × N, e.g. every
    training candidate: :func:`live_bank`) the KL term is taken over those instead of the block.
    Returns ``(loss, {"pearson": .., "kl": .., "pool_mean": ..})``."""
    lp = pearson_loss(pred, true, center_rows=center_queries)
    if (kl_pred is None) != (kl_true is None):
        raise ValueError("kl_pred and kl_true go together")
    lk = kl_loss(pred, true, tau) if kl_pred is None else kl_loss(kl_pred, kl_true, tau)
    loss = alpha * lp + (1.0 - alpha) * lk
    parts = {"pearson": lp.detach(), "kl": lk.detach()}
    if pool_mean is not None and pool_mean_weight > 0:
        lm = pearson_loss(pred.float().mean(dim=0), pool_mean)
        loss = loss + pool_mean_weight * lm
        parts["pool_mean"] = lm.detach()
    return loss, parts


def live_bank(bank, ep, cands):
    """The bank of every training pool example's embedding (N × d, fixed) with rows ``cands`` (the step's C
    indices into it) replaced by their live embeddings ``ep`` (C × d, with gradient): what the listwise KL
    (``kl_over="pool"``) scores each query against. Where an index repeats, its last live row is kept."""
    import torch

    last: dict[int, int] = {}
    for k, c in enumerate(np.asarray(cands).tolist()):
        last[int(c)] = k
    rows = torch.tensor(list(last), dtype=torch.long)
    pos = torch.tensor(list(last.values()), dtype=torch.long)
    return bank.index_copy(0, rows, ep[pos].to(bank.dtype))


# ---------------------------------------------------------------------------------------------- split
@dataclass
class Split:
    """Row (pool) and column (query) indices into the label matrix."""

    train_pool: np.ndarray
    val_pool: np.ndarray
    train_queries: np.ndarray
    val_queries: np.ndarray


def _count(spec: float, n: int, what: str) -> int:
    k = int(round(spec * n)) if spec < 1 else int(spec)
    if k < 2 or n - k < 2:
        raise UserError(f"held-out {what}: {k} of {n} leaves too few for training or validation (need ≥ 2 each)")
    return k


def split_indices(n_pool: int, n_query: int, val_pool: float, val_queries: float, seed: int) -> Split:
    """Disjoint, seeded train/held-out index sets on both axes."""
    rng = np.random.default_rng(seed)
    kp, kq = _count(val_pool, n_pool, "pool"), _count(val_queries, n_query, "queries")
    pp, qq = rng.permutation(n_pool), rng.permutation(n_query)
    return Split(np.sort(pp[kp:]), np.sort(pp[:kp]), np.sort(qq[kq:]), np.sort(qq[:kq]))


def sample_candidates(rng: np.random.Generator, chunk: np.ndarray, queries: np.ndarray, train_labels: np.ndarray,
                      hard_fraction: float, hard_top_k: int, top_cache: dict[int, np.ndarray]) -> np.ndarray:
    """Candidate positions (into the training pool) for one step: the uniform ``chunk``, with
    ``round(hard_fraction·C)`` slots replaced by examples from the top-``hard_top_k`` of the step's queries.
    ``train_labels`` is the training block (train pool × train queries); ``queries`` are its column positions."""
    C = len(chunk)
    n_hard = int(round(hard_fraction * C))
    if n_hard == 0:
        return chunk
    chosen: list[int] = []
    seen: set[int] = set()
    tries = 0
    while len(chosen) < n_hard and tries < 20 * n_hard:
        tries += 1
        q = int(queries[rng.integers(len(queries))])
        if q not in top_cache:
            col = train_labels[:, q]
            k = min(hard_top_k, len(col))
            top_cache[q] = np.argpartition(-col, k - 1)[:k]
        c = int(top_cache[q][rng.integers(len(top_cache[q]))])
        if c not in seen:
            seen.add(c)
            chosen.append(c)
    rest = [int(c) for c in chunk if int(c) not in seen][: C - len(chosen)]
    return np.asarray(chosen + rest, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- eval
def evaluate_matrix(pred: np.ndarray, true: np.ndarray, alpha: float, tau: float) -> dict[str, float]:
    """Validation numbers for a (pool × query) prediction: Spearman metrics and the loss on the full block."""
    import torch

    from ..core import metrics

    loss, parts = distill_loss(torch.from_numpy(np.ascontiguousarray(pred.T)).float(),
                               torch.from_numpy(np.ascontiguousarray(true.T)).float(), alpha, tau)
    return {
        "per_anchor_spearman": metrics.per_anchor_spearman(pred, true),
        "aggregated_spearman": metrics.aggregated_spearman(pred, true),
        "query_specific_spearman": metrics.query_specific_spearman(pred, true),
        "loss": float(loss),
        "loss_pearson": float(parts["pearson"]),
        "loss_kl": float(parts["kl"]),
    }


def _better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if metric == "loss" else new > old


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


def warm_up_prior(prior, pool_emb: np.ndarray, query_emb: np.ndarray, pool_len: np.ndarray, labels: np.ndarray,
                  steps: int, queries_per_batch: int, candidates: int, lr: float, alpha: float, tau: float,
                  seed: int, validate: Callable | None = None, eval_every: int = 100,
                  scale_lr: float = 2e-2) -> list[dict]:
    """Fit the pool prior alone on fixed embeddings: the loss sees γ·(query_emb @ pool_emb.T + prior(pool))
    (γ: the prior's training scale, rate ``scale_lr``),
    on random B × C blocks of ``labels`` (pool × query, rows and columns aligned with the embeddings), with
    :func:`distill_loss`. ``validate(prior) -> float`` (higher is better) is called every ``eval_every``
    steps and at the end; the best state is loaded into ``prior`` (without ``validate``: the last state).
    Returns the history (one row per validation: step, score, mean training loss since the last row)."""
    import torch

    from .encoder import InfluenceEncoder

    rng = np.random.default_rng(seed)
    dev = prior.raw_w.device
    EP = torch.as_tensor(pool_emb, dtype=torch.float32, device=dev)
    EQ = torch.as_tensor(query_emb, dtype=torch.float32, device=dev)
    LEN = torch.as_tensor(pool_len, dtype=torch.float32, device=dev)
    T = torch.as_tensor(labels, dtype=torch.float32, device=dev)
    n_p, n_q = T.shape
    C, B = min(candidates, n_p), min(queries_per_batch, n_q)
    opt = torch.optim.AdamW(_prior_groups(prior, lr, scale_lr), lr=lr)
    prior.train()
    best, best_state, history, run = None, copy.deepcopy(prior.state_dict()), [], []
    if validate is not None:
        prior.eval()
        best = float(validate(prior))
        history.append({"step": 0, "score": best})
        prior.train()
    for s in range(1, steps + 1):
        c = torch.from_numpy(rng.choice(n_p, C, replace=False)).to(dev)
        q = torch.from_numpy(rng.choice(n_q, B, replace=False)).to(dev)
        pred = prior.scale * (EQ[q] @ EP[c].T + prior(InfluenceEncoder.prior_input(EP[c], LEN[c]))[None, :])
        loss, _ = distill_loss(pred, T[c][:, q].T, alpha, tau)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run.append(float(loss.detach()))
        if validate is not None and (s % eval_every == 0 or s == steps):
            prior.eval()
            with torch.no_grad():
                score = float(validate(prior))
            prior.train()
            history.append({"step": s, "score": score, "train_loss": float(np.mean(run))})
            run = []
            if score > best:
                best, best_state = score, copy.deepcopy(prior.state_dict())
    if validate is not None:
        prior.load_state_dict(best_state)
    prior.eval()
    return history


def _prior_groups(prior, lr: float, scale_lr: float) -> list[dict]:
    """AdamW parameter groups of the pool prior: its MLP and weight at ``lr``, its training scale at ``scale_lr``."""
    rest = [p for n, p in prior.named_parameters() if n != "raw_scale"]
    return [{"params": rest, "weight_decay": 0.0, "lr": lr},
            {"params": [prior.raw_scale], "weight_decay": 0.0, "lr": scale_lr}]


def _embed_all(enc, records, side: str, batch_size: int) -> np.ndarray:
    return enc.encode(records, batch_size=batch_size, side=side)


def _warm_up_prior(enc, cfg: DistillConfig, cache, train_pool_recs, train_query_recs, val_pool_recs, val_query_recs,
                   pool_len, train_block: np.ndarray, val_block: np.ndarray, steps: int | None = None) -> dict[str, float]:
    """:func:`warm_up_prior` on the encoder's current embeddings (computed once, no gradient); validation on
    the held-out block exactly as training validates (score vectors' inner products); the prior keeps its best
    validated state, its starting state included. Returns the metrics of the state kept."""
    import torch

    enc.eval()
    bs = cfg.eval_batch_size
    with torch.no_grad():
        if cache is not None:  # the cached lower layers give the same embeddings, cheaper
            def cached(name: str, n: int) -> np.ndarray:
                return torch.cat([cache.embed(name, range(i, min(i + bs, n))).float() for i in range(0, n, bs)]).cpu().numpy()

            EP, EQ = cached("pool", len(train_pool_recs)), cached("query", len(train_query_recs))
        else:
            EP = enc.text_embeddings(train_pool_recs, batch_size=bs, side="pool")
            EQ = enc.text_embeddings(train_query_recs, batch_size=bs, side="query")
        VP = enc.text_embeddings(val_pool_recs, batch_size=bs, side="pool")
        VQ = enc.score_vectors(enc.text_embeddings(val_query_recs, batch_size=bs, side="query"), "query")
    vlen = enc.length_features(val_pool_recs)

    def scores() -> np.ndarray:
        return enc.score_vectors(VP, "pool", lengths=vlen) @ VQ.T

    def validate(_prior) -> float:
        return evaluate_matrix(scores(), val_block, cfg.alpha, cfg.tau)[cfg.select_metric] * (-1 if cfg.select_metric == "loss" else 1)

    warm_up_prior(enc.prior, EP, EQ, pool_len.cpu().numpy(), train_block, steps or cfg.prior_warmup_steps, cfg.queries_per_batch,
                  cfg.candidates, cfg.prior_lr if cfg.prior_lr is not None else cfg.lr, cfg.alpha, cfg.tau,
                  cfg.seed + 2, validate, cfg.prior_warmup_eval, cfg.score_scale_lr)
    return evaluate_matrix(scores(), val_block, cfg.alpha, cfg.tau)


# ---------------------------------------------------------------------------------------------- checkpoints
CHECKPOINT_DIR = "checkpoint"
"""Sub-folder of the output folder holding the last epoch's training state (removed once training ends)."""


def fit_prior_trees(enc, train_pool_recs, train_block: np.ndarray, val_pool_recs, val_query_recs,
                    val_block: np.ndarray, cfg: DistillConfig) -> dict:
    """Fit the boosted pool prior on the trained student (see ``DistillConfig.prior_trees``) and attach it where
    it improves distill's validation score; returns ``{"kappa", "lambda", "candidates": [{lambda, kappa, metrics}],
    "metrics"}`` (the chosen candidate's validation metrics)."""
    import torch

    from .prior_trees import fit_trees

    enc.eval()
    enc.set_prior_trees(None, 0.0, (0.0, 0.0))
    bs = cfg.eval_batch_size
    E = enc.text_embeddings(train_pool_recs, batch_size=bs, side="pool")
    F = enc.prior_features(train_pool_recs)
    X = np.hstack([E, F])
    trees, _ = fit_trees(X, train_block.mean(axis=1), seed=cfg.seed)
    # clip range: the training predictions' range widened by a quarter of its span on each side, within the
    # trees' own bounds (those sum every tree's extreme leaf and are much wider: a wide range only shrinks the
    # embedding part of the score vectors, a² = 1/(1 + W), and so their float32 resolution)
    g_tr = trees.predict(X)
    span = float(g_tr.max() - g_tr.min())
    b_lo, b_hi = trees.bounds()
    lo, hi = max(b_lo, float(g_tr.min()) - 0.25 * span), min(b_hi, float(g_tr.max()) + 0.25 * span)
    hi = max(hi, lo)  # trees with no spread: min == max, and the bounds' rounding may put lo one ulp above hi
    VP = enc.text_embeddings(val_pool_recs, batch_size=bs, side="pool")
    VF = enc.prior_features(val_pool_recs)
    VQ = enc.text_embeddings(val_query_recs, batch_size=bs, side="query")
    with torch.no_grad():
        b = enc.prior_scores(torch.from_numpy(VP), torch.from_numpy(VF[:, :2])).cpu().numpy().astype(np.float64)
    base = VP.astype(np.float64) @ VQ.T.astype(np.float64) + b[:, None]
    g = np.clip(trees.predict(np.hstack([VP, VF])), lo, hi)
    m0 = evaluate_matrix(base, val_block, cfg.alpha, cfg.tau)
    cands = [{"lambda": 0.0, "kappa": 0.0, "metrics": m0}]
    best = cands[0]
    flat = not (g.std() > 1e-9 * max(1.0, float(np.abs(g).max())))  # no spread (e.g. too few rows to split on)
    for lam in () if flat else PRIOR_TREES_WEIGHTS:
        kappa = float(lam * base.std() / max(g.std(), 1e-12))
        m = evaluate_matrix(base + kappa * g[:, None], val_block, cfg.alpha, cfg.tau)
        cands.append({"lambda": lam, "kappa": kappa, "metrics": m})
        if _better(cfg.select_metric, m[cfg.select_metric], best["metrics"][cfg.select_metric]):
            best = cands[-1]
    enc.set_prior_trees(trees, best["kappa"], (lo, hi))
    return {"kappa": best["kappa"], "lambda": best["lambda"], "candidates": cands, "metrics": best["metrics"],
            "n_trees": int(trees.feature.shape[0]), "clip": [lo, hi]}


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
        from .encoder import build_prior

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
            P = _embed_all(enc, val_pool_recs, "pool", cfg.eval_batch_size)
            Q = _embed_all(enc, val_query_recs, "query", cfg.eval_batch_size)
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
        groups += _prior_groups(enc.prior, cfg.prior_lr if cfg.prior_lr is not None else cfg.lr, cfg.score_scale_lr)
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
        m = _warm_up_prior(enc, cfg, cache, train_pool_recs, train_query_recs, val_pool_recs, val_query_recs,
                           pool_len, train_block, val_block, steps)
        history.append({"epoch": epoch, "step": at_step, "split": "val", "model": model, **m,
                        f"{key}_steps": steps, "seconds": time.time() - t})
        say(f"{model} ({steps} steps, {time.time() - t:.0f} s): per-anchor {m['per_anchor_spearman']:.3f}, "
            f"aggregated {m['aggregated_spearman']:.3f}")
        return m

    if enc.prior is not None and cfg.prior_warmup_steps and not resumed:
        m_w = prior_phase("prior warm-up", "prior_warmup", cfg.prior_warmup_steps, 0, 0)
        writer.write(history[-1])
        if _better(cfg.select_metric, m_w[cfg.select_metric], best_val):
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
            if _better(cfg.select_metric, m[cfg.select_metric], best_val):
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
        if _better(cfg.select_metric, m_r[cfg.select_metric], best_val):
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
