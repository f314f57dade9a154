"""The boosted pool prior: gradient-boosted regression trees from a pool example's embedding and the form of its
text to the teacher's pool factor (its mean influence over the training queries).

Where the student's fidelity comes from (``benchmarks/results/distill_ablation_round3.md``): nearly all of its
per-anchor Spearman is the pool factor, guessed from the pool text. The factor is largely a matter of the
response's *form* (a bare answer such as ``10`` or ``tuple()`` sits near the top, an answer that restates the
question in a sentence near the bottom), which a cosine and a smooth MLP prior capture poorly and trees on a few
plain text statistics capture well. :func:`fit_trees` fits the ensemble (scikit-learn's
``GradientBoostingRegressor``, squared error); :class:`TreeEnsemble` keeps its trees as plain arrays, saved with
safetensors beside the encoder, and predicts with numpy exactly as scikit-learn does (tested against it), so a
saved encoder needs neither pickle nor scikit-learn to score.

The score an encoder with trees gives is ``cos(E(q), E(p)) + b(p) + κ·clip(g(p))``: a pool-only term, carried by
the same extra coordinate as b(p) (encoder.py), so an inner-product index still ranks by it exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["STYLE_FEATURES", "style_features", "TreeEnsemble", "fit_trees"]

STYLE_FEATURES = ("response_prompt_word_overlap", "response_is_number", "response_digit_share",
                  "response_newline_share", "response_code_char_share", "response_ends_with_period",
                  "log1p_response_words", "log1p_response_chars")
"""Plain statistics of the response's form, in this order (the trees also read the embedding and the
encoder's two length features): the share of the response's words that occur in the prompt (restating the
question), whether the response is a bare number, and its shares of digits, newlines and code characters
(``{}();=[]<>``), whether it ends with a period, and log1p of its word and character counts. For a plain
string the whole string is the response and the prompt is empty."""

WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"\s*[-+]?[\d.,]+\s*")
_CODE = set("{}();=[]<>")


def prompt_response(x: Any) -> tuple[str, str]:
    from ..data.records import Record

    if isinstance(x, Record):
        return x.prompt, x.response
    if isinstance(x, str):
        return "", x
    raise TypeError(f"style_features: expected a Record or a str, got {type(x).__name__}")


def style_features(items: Sequence[Any]) -> np.ndarray:
    """(n, len(STYLE_FEATURES)) float32 for Records or plain strings (see :data:`STYLE_FEATURES`)."""
    out = np.zeros((len(items), len(STYLE_FEATURES)), dtype=np.float32)
    for i, x in enumerate(items):
        prompt, s = prompt_response(x)
        words = WORD.findall(s.lower())
        pw = set(WORD.findall(prompt.lower()))
        n = max(1, len(s))
        out[i] = [sum(w in pw for w in words) / max(1, len(words)), float(bool(_NUMBER.fullmatch(s))),
                  sum(c.isdigit() for c in s) / n, s.count("\n") / n, sum(c in _CODE for c in s) / n,
                  float(s.strip().endswith(".")), np.log1p(len(words)), np.log1p(len(s))]
    return out


@dataclass
class TreeEnsemble:
    """A fitted squared-error gradient-boosting ensemble as arrays: prediction = ``init`` + ``learning_rate`` ·
    Σ_t leaf value of tree t. Trees are padded to one node count; node k of tree t splits on feature
    ``feature[t, k]`` (left when x ≤ ``threshold[t, k]``, compared as scikit-learn does: x cast to float32)
    or is a leaf (``left[t, k] == -1``) with value ``value[t, k]``."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    init: float
    learning_rate: float
    n_features: int

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(n,) float64 predictions for X (n, n_features)."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"TreeEnsemble.predict: expected (n, {self.n_features}) features, got {X.shape}")
        X = X.astype(np.float32).astype(np.float64)
        n, T = X.shape[0], self.feature.shape[0]
        node = np.zeros((T, n), dtype=np.int64)
        rows = np.arange(T)[:, None]
        cols = np.arange(n)[None, :]
        while True:
            lf = self.left[rows, node]
            inner = lf >= 0
            if not inner.any():
                break
            f = np.where(inner, self.feature[rows, node], 0)
            go_left = X[cols, f] <= self.threshold[rows, node]
            node = np.where(inner, np.where(go_left, lf, self.right[rows, node]), node)
        return self.init + self.learning_rate * self.value[rows, node].sum(axis=0)

    def bounds(self) -> tuple[float, float]:
        """(lo, hi) that every prediction lies in: ``init`` + ``learning_rate`` · Σ_t (min / max leaf value of t)."""
        leaf = self.left < 0
        vmin = np.where(leaf, self.value, np.inf).min(axis=1)
        vmax = np.where(leaf, self.value, -np.inf).max(axis=1)
        return float(self.init + self.learning_rate * vmin.sum()), float(self.init + self.learning_rate * vmax.sum())

    def to_tensors(self) -> dict:
        """Arrays for safetensors (torch tensors); :meth:`from_tensors` inverts it."""
        import torch

        return {"feature": torch.from_numpy(self.feature.astype(np.int64)),
                "threshold": torch.from_numpy(self.threshold.astype(np.float64)),
                "left": torch.from_numpy(self.left.astype(np.int64)), "right": torch.from_numpy(self.right.astype(np.int64)),
                "value": torch.from_numpy(self.value.astype(np.float64)),
                "init": torch.tensor([self.init], dtype=torch.float64),
                "learning_rate": torch.tensor([self.learning_rate], dtype=torch.float64),
                "n_features": torch.tensor([self.n_features], dtype=torch.int64)}

    @classmethod
    def from_tensors(cls, t: dict) -> "TreeEnsemble":
        return cls(feature=t["feature"].numpy(), threshold=t["threshold"].numpy(), left=t["left"].numpy(),
                   right=t["right"].numpy(), value=t["value"].numpy(), init=float(t["init"][0]),
                   learning_rate=float(t["learning_rate"][0]), n_features=int(t["n_features"][0]))

    @classmethod
    def from_sklearn(cls, model) -> "TreeEnsemble":
        """From a fitted ``sklearn.ensemble.GradientBoostingRegressor`` (squared error, constant init)."""
        trees = [est[0].tree_ for est in model.estimators_]
        width = max(t.node_count for t in trees)

        def pad(get, fill, dtype):
            a = np.full((len(trees), width), fill, dtype=dtype)
            for i, t in enumerate(trees):
                a[i, :t.node_count] = get(t)
            return a

        init = float(np.asarray(model.init_.constant_).ravel()[0])
        return cls(feature=pad(lambda t: t.feature, 0, np.int64), threshold=pad(lambda t: t.threshold, 0.0, np.float64),
                   left=pad(lambda t: t.children_left, -1, np.int64), right=pad(lambda t: t.children_right, -1, np.int64),
                   value=pad(lambda t: t.value[:, 0, 0], 0.0, np.float64), init=init,
                   learning_rate=float(model.learning_rate), n_features=int(model.n_features_in_))


def fit_trees(X: np.ndarray, y: np.ndarray, seed: int = 0, n_trees: int = 400, learning_rate: float = 0.03,
              max_leaf_nodes: int = 15, min_samples_leaf: int = 10, subsample: float = 0.8, max_features: float = 0.3):
    """Fit the ensemble on (X, y) (stochastic gradient boosting: each tree sees ``subsample`` of the rows and
    each split ``max_features`` of the columns; ≈ 10 s for 800 rows × 394 features on one core); returns
    ``(TreeEnsemble, the scikit-learn model)``."""
    from sklearn.ensemble import GradientBoostingRegressor

    model = GradientBoostingRegressor(n_estimators=n_trees, learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
                                      min_samples_leaf=min_samples_leaf, subsample=subsample, max_features=max_features,
                                      random_state=seed)
    model.fit(np.asarray(X, dtype=np.float32), np.asarray(y, dtype=np.float64))
    return TreeEnsemble.from_sklearn(model), model
