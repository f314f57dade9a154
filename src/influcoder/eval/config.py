"""What an evaluation runs: the experiment config (:class:`EvalConfig`, a YAML file read by the loader every config
uses) and the ``influcoder evaluate`` command's own options (:class:`EvaluateCommand`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ..core.errors import UserError

__all__ = ["EvalConfig", "EvaluateCommand", "load_config"]


@dataclass
class EvalConfig:
    """One experiment. Loaded from YAML; every field is checked before anything runs."""

    experiment: str
    """ranking, toxicity or fidelity."""
    name: str
    """Short name: outputs are <out_dir>/eval_<name>.{json,md,png}."""
    out_dir: str = "benchmarks/results"
    """Where the results JSON, Markdown report and figures go."""
    work_dir: str = "work/eval"
    """Cache folder (features, labels, students, score matrices)."""
    model: str = "smollm2-135m-instruct"
    """Target decoder (teacher and decoder baselines)."""
    max_length: int = 256
    """Tokens per example for every decoder method and the teacher."""
    batch_size: int = 8
    """Most examples per decoder batch."""
    token_budget: int = 2048
    """Most padded tokens per decoder batch."""
    seeds: list = field(default_factory=lambda: [0])
    """Split seeds (ranking: which held-out block; toxicity: which examples are sampled)."""
    methods: list = field(default_factory=list)
    """Methods: [{kind: ..., name: ..., <options>}] (see influcoder.eval.baselines.make_method); kind
    'influcoder' is the distilled student (trained per seed from the ``student`` section)."""
    data: dict = field(default_factory=dict)
    """Experiment data: ranking {pool, query, preset, test_pool, test_queries, train_pool, train_queries};
    toxicity, ``construction: planted`` (default) {benign, xstest_dir, n_benign, n_planted, n_refs, group_a,
    train_benign, train_planted, train_queries}; ``construction: datelm`` (DATE-LM's XSTest-response Het / Hom):
    the keys of :data:`DATELM_DATA`."""
    teacher: dict = field(default_factory=lambda: {"kind": "exact", "rank": 8, "lora_seed": 0})
    """Ground truth: {kind: exact, rank, lora_seed, sketch_dim} or {kind: stores, pool_store, query_store}.
    Toxicity: ``warmup_steps`` (and ``warmup_lr``, default 2e-5) warm the LoRA adapter up on each pool before any
    gradient is taken (stock's ``--warmup-steps`` path), for the teacher and every gradient method alike."""
    student: dict = field(default_factory=dict)
    """Distillation options passed to influcoder.student.distill.DistillConfig (epochs, lr, ...), or {path: DIR}."""
    costs: dict = field(default_factory=lambda: {"n_examples": 8})
    """Standalone cost measurement per method on n_examples (FLOPs, seconds, peak memory)."""
    fidelity: dict = field(default_factory=dict)
    """fidelity: {results: [paths to the projection-fidelity benchmark's JSON]}."""
    ks: list = field(default_factory=lambda: [10, 20])
    """k for precision@k / recall@k (toxicity)."""
    device: str = "auto"
    """Where the decoder methods, the teacher's exact gradients and the encoder methods run: auto (CUDA when
    present, else the CPU), cpu, cuda, cuda:N. The student follows ``student.device`` where the student section
    sets it, else this."""
    precision: str = "auto"
    """Compute precision of those same methods: auto (bfloat16 where the device computes it natively, float32
    elsewhere), float32 or bfloat16. The student follows ``student.precision`` where set, else this."""
    parts_dir: str | None = None
    """Toxicity: where each (seed, method) result is written as it finishes (``s<seed>-<method>.json``: per-row
    scores, timing, the machine) and read back instead of recomputed when its construction key matches; also
    each method's FLOPs (``flops-<method>.json``). Meant to be committed, so an experiment runs in pieces."""

    def __post_init__(self):
        if self.experiment not in ("ranking", "toxicity", "fidelity"):
            raise UserError(f"config: experiment must be ranking, toxicity or fidelity, got '{self.experiment}'")
        if not self.name or any(c in self.name for c in "/ "):
            raise UserError(f"config: name must be a non-empty word, got '{self.name}'")
        if not isinstance(self.seeds, list) or not self.seeds:
            raise UserError("config: seeds must be a non-empty list of integers")
        for m in self.methods:
            if not isinstance(m, dict) or "kind" not in m:
                raise UserError(f"config: every method needs a 'kind', got {m!r}")
            ms = m.get("seeds", self.seeds)
            if not isinstance(ms, list) or any(x not in self.seeds for x in ms):
                raise UserError(f"config: method {m.get('name') or m['kind']}: seeds must be a list of the config's "
                                f"seeds {self.seeds}, got {m.get('seeds')!r}")
        from ..core.hardware import check_compute

        try:
            check_compute(self.device, self.precision)
        except UserError as e:
            raise UserError(f"config: {e}") from None

    def to_dict(self) -> dict:
        return asdict(self)


def load_config(path: str | Path) -> EvalConfig:
    """An experiment config read by the loader every config uses (:func:`influcoder.core.config.load_yaml`): an
    unknown or missing key, a wrong type or a bad value names the file and the key."""
    from ..core.config import load_yaml

    return load_yaml(EvalConfig, path)


@dataclass
class EvaluateCommand:
    """``influcoder evaluate CONFIG``: which parts of the experiment run now, and where (the experiment itself is the
    YAML file; these override it for one run)."""

    quiet: bool = False
    """No progress bars or log lines."""
    out_dir: Optional[str] = None
    """Override the config's out_dir."""
    work_dir: Optional[str] = None
    """Override the config's work_dir (caches)."""
    device: Optional[str] = None
    """Override the config's device (auto, cpu, cuda, cuda:N)."""
    precision: Optional[str] = None
    """Override the config's precision (auto, float32, bfloat16)."""
    seeds: Optional[str] = None
    """Run only these of the config's seeds (comma-separated)."""
    methods: Optional[str] = None
    """Run only these methods (names, comma-separated)."""
    committed_only: bool = False
    """Toxicity with parts_dir: compute nothing; build the table from the committed (seed, method) results."""

    def seed_list(self) -> list[int] | None:
        if not self.seeds:
            return None
        try:
            return [int(x) for x in self.seeds.split(",")]
        except ValueError:
            raise UserError(f"seeds: comma-separated integers, got '{self.seeds}'") from None
