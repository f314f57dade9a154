"""The pool prior: its warm-up alone on fixed embeddings (before and between encoder epochs) and the boosted
trees fitted on its residual."""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np


from .config import PRIOR_TREES_WEIGHTS, DistillConfig
from .losses import better, distill_loss, evaluate_matrix


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
    opt = torch.optim.AdamW(prior_groups(prior, lr, scale_lr), lr=lr)
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


def prior_groups(prior, lr: float, scale_lr: float) -> list[dict]:
    """AdamW parameter groups of the pool prior: its MLP and weight at ``lr``, its training scale at ``scale_lr``."""
    rest = [p for n, p in prior.named_parameters() if n != "raw_scale"]
    return [{"params": rest, "weight_decay": 0.0, "lr": lr},
            {"params": [prior.raw_scale], "weight_decay": 0.0, "lr": scale_lr}]


def embed_all(enc, records, side: str, batch_size: int) -> np.ndarray:
    return enc.encode(records, batch_size=batch_size, side=side)


def warm_up_prior_phase(enc, cfg: DistillConfig, cache, train_pool_recs, train_query_recs, val_pool_recs, val_query_recs,
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
        if better(cfg.select_metric, m[cfg.select_metric], best["metrics"][cfg.select_metric]):
            best = cands[-1]
    enc.set_prior_trees(trees, best["kappa"], (lo, hi))
    return {"kappa": best["kappa"], "lambda": best["lambda"], "candidates": cands, "metrics": best["metrics"],
            "n_trees": int(trees.feature.shape[0]), "clip": [lo, hi]}
