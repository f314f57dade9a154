"""The pool prior: its network (:func:`build_prior`), its warm-up alone on fixed embeddings (before and between
encoder epochs) and the boosted trees fitted on its residual."""

from __future__ import annotations

import copy
import functools
from typing import Callable

import numpy as np

from .config import PRIOR_TREES_WEIGHTS, DistillConfig
from .losses import better, distill_loss, evaluate_matrix

__all__ = ["PRIOR_FEATURES", "build_prior", "prior_input", "warm_up_prior", "warm_up_prior_phase", "prior_groups", "embed_all",
           "fit_prior_trees"]

PRIOR_FEATURES = ("embedding", "log1p_tokens", "log1p_response_tokens")
"""What the prior reads: the normalised embedding, and the untruncated encoder-token counts of the whole
text and of its response (a Record's or dict row's response; for a plain string, the whole string). The
teacher's loss is a mean over response tokens, so response length carries much of the pool factor."""


def prior_input(pool_emb, lengths):
    """The MLP prior's input: normalised pool embeddings beside their two length features (torch, float32;
    further columns of ``lengths``, the boosted prior's style features, are not the MLP's)."""
    import torch

    e = torch.as_tensor(pool_emb).float()
    return torch.cat([e, torch.as_tensor(lengths, dtype=torch.float32).to(e.device)[:, :2]], dim=1)


def build_prior(dim: int, hidden: int, seed: int = 0):
    """The pool-side prior b(p) = w·tanh(MLP([E(p), length features])): a new ``PoolPrior`` module."""
    return _prior_module()(dim, hidden, seed)


_SOFTPLUS_INV_1 = float(np.log(np.e - 1.0))
"""softplus⁻¹(1): the raw value that starts a softplus-positive parameter at 1."""


@functools.lru_cache(maxsize=None)
def _prior_module():
    """The PoolPrior class (built once, on first use, so that importing this module does not import torch)."""
    import torch

    class PoolPrior(torch.nn.Module):
        """b(p) = w·tanh(MLP(x)), x = the normalised pool embedding and the two length features of
        :data:`PRIOR_FEATURES`; w = softplus(raw_w) > 0 is learned (starts at 1), the MLP's last layer starts
        at zero, so an untrained prior changes nothing.

        Predicted influence is ``cos(E(q), E(p)) + b(p)``. It is carried by two extra coordinates so that
        every vector stays unit-norm and one inner product gives the score: with a² = 1/(1+w), s² = 1 − a²,
        r = b/w ∈ (−1, 1): pool ``[a·E(p), s·r, √(1 − a² − s²r²)]``, query ``[a·E(q), s, 0]``; their inner
        product is a²·(cos + b(p)), a fixed positive multiple of the score, so a FAISS inner-product (or
        cosine) index ranks by it exactly."""

        def __init__(self, dim: int, hidden: int, seed: int = 0):
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            first = torch.nn.Linear(dim + 2, hidden)
            with torch.no_grad():
                first.weight.copy_(torch.randn(hidden, dim + 2, generator=g) / dim ** 0.5)
                first.bias.zero_()
            last = torch.nn.Linear(hidden, 1)
            with torch.no_grad():
                last.weight.zero_()
                last.bias.zero_()
            self.mlp = torch.nn.Sequential(first, torch.nn.GELU(), last)
            self.raw_w = torch.nn.Parameter(torch.tensor(_SOFTPLUS_INV_1))
            # training only: γ = softplus(raw_scale) multiplies the whole predicted score (cos + b) in the loss,
            # a learned temperature. The KL term is scale-sensitive; with γ the loss can set the scores' overall
            # size apart from the mix of cosine and prior, so the prior can outweigh a still-noisy cosine.
            # A positive factor on every score changes no ranking, so scoring ignores it.
            self.raw_scale = torch.nn.Parameter(torch.tensor(_SOFTPLUS_INV_1))
            self.dim, self.hidden = dim, hidden

        @property
        def weight(self):
            return torch.nn.functional.softplus(self.raw_w)

        @property
        def scale(self):
            """γ > 0: the training loss sees γ·(cos + b(p)); rankings (and so scoring) do not depend on it."""
            return torch.nn.functional.softplus(self.raw_scale)

        def load_state_dict(self, state, strict: bool = True, **kw):
            state = dict(state)
            if "raw_scale" not in state:  # priors saved before the training scale existed: start it at 1
                state["raw_scale"] = torch.tensor(_SOFTPLUS_INV_1)
            return super().load_state_dict(state, strict=strict, **kw)

        def unit(self, x):
            """r = tanh(MLP(x)) ∈ (−1, 1)."""
            return torch.tanh(self.mlp(x)).squeeze(-1)

        def forward(self, x):
            return self.weight * self.unit(x)

    return PoolPrior


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
        pred = prior.scale * (EQ[q] @ EP[c].T + prior(prior_input(EP[c], LEN[c]))[None, :])
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
