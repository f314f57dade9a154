"""The student's settings, importable without torch (``influcoder train --help`` and config validation read them):
:class:`DistillConfig`, everything that defines a distillation run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..core.errors import UserError
from ..data.records import DataSpec


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
    inner-product index; see student.prior.build_prior)."""
    prior_hidden: int = 256
    """Hidden width of the pool prior's MLP."""
    prior_lr: float | None = 2e-3
    """Learning rate of the pool prior's parameters (None: ``lr``); the prior starts from zero, so a larger
    rate lets it take up the pool factor within a short run."""
    score_scale_lr: float = 2e-2
    """Learning rate of the pool prior's training scale γ (the loss sees γ·(cos + b); see
    student.prior.build_prior): a learned temperature that lets the prior outweigh a still-noisy cosine early.
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
