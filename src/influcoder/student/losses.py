"""The distillation objective (Pearson on the batch matrix + tempered-softmax KL per query) and the validation
metrics computed from a predicted and a true influence block."""

from __future__ import annotations

import numpy as np


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


def better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if metric == "loss" else new > old
