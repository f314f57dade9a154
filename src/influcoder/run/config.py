"""The run config tree: ``influcoder run RUN.yaml`` as one dataclass of typed sections, built from the
stages' own config classes (so the run and ``influcoder stock/train/embed/index`` share every field,
docstring and default)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..core.config import ConfigError, section_of
from ..core.errors import UserError
from ..search.attribute import AttributeConfig
from ..search.filter import FilterConfig
from ..student.config import DistillConfig
from ..search.embed import EmbedConfig
from ..search.index import IndexConfig
from ..data.records import DataSpec
from ..teacher.config import StockConfig

SCORERS = ("student", "exact-query")
"""What a run's embed/index/attribute/filter steps score with (RunConfig.scorer)."""
STEPS = ("mix", "sample", "stock", "labels", "train", "exact_query", "embed", "index", "attribute", "filter", "report")
"""The steps of a run, in order."""


def _checked_by(stage_cls: type, **placeholders):
    """Validation of a section: build the stage's config from it (placeholder paths), so its checks apply."""
    def check(section) -> None:
        stage_cls(**placeholders, **{f.name: getattr(section, f.name) for f in dataclasses.fields(section)
                                      if f.name in {g.name for g in dataclasses.fields(stage_cls)}})
    return check


TeacherConfig = section_of(
    StockConfig, "TeacherConfig", exclude=("data", "out", "overwrite"),
    defaults={"model": "smollm2-135m-instruct"}, validate=_checked_by(StockConfig, data="-", out="-"),
    doc="The teacher: how the decoder's LoRA gradients are stocked (influcoder.teacher.stock.StockConfig's fields).")
StudentConfig = section_of(
    DistillConfig, "StudentConfig",
    exclude=("pool_data", "query_data", "labels", "out", "limit_pool", "limit_queries"),
    validate=_checked_by(DistillConfig, pool_data="-", query_data="-", labels="-", out="-"),
    doc="The student: how the encoder is distilled (influcoder.student.distill.DistillConfig's fields).")
EmbedSection = section_of(
    EmbedConfig, "EmbedSection", exclude=("encoder", "data", "out", "side", "overwrite"),
    validate=_checked_by(EmbedConfig, encoder="-", data="-", out="-"),
    doc="Embedding the whole pool with the trained encoder (influcoder.search.embed.EmbedConfig's fields).")
IndexSection = section_of(
    IndexConfig, "IndexSection", exclude=("embeddings", "out", "overwrite"),
    validate=_checked_by(IndexConfig, embeddings="-", out="-"),
    doc="The FAISS index over the pool embeddings (influcoder.search.index.IndexConfig's fields).")
AttributeSection = section_of(
    AttributeConfig, "AttributeSection", include=("top_k", "with_text", "nprobe", "ef_search", "batch_size", "device",
                                                  "precision"),
    extra=[("enabled", bool, True, "Run the attribute step: the top-k pool examples of every query, from the index.")],
    validate=_checked_by(AttributeConfig, encoder="-", index="-"),
    doc="Attribution of the queries against the index (influcoder.search.attribute.AttributeConfig's fields).")
FilterSection = section_of(
    FilterConfig, "FilterSection", include=("aggregate", "fraction", "threshold", "keep", "batch_size", "device",
                                            "precision"),
    extra=[("enabled", bool, False, "Run the filter step: score the pool by influence on the queries and write a filtered copy.")],
    validate=_checked_by(FilterConfig, encoder="-", out="-", data="-"),
    doc="Filtering the pool by aggregated influence (influcoder.search.filter.FilterConfig's fields).")


def _count_ok(v: float, what: str) -> None:
    if not (0 < v < 1 or (v >= 1 and float(v).is_integer())):
        raise UserError(f"{what} must be a fraction in (0, 1) or a whole count ≥ 1, got {v}")


@dataclass
class MixConfig:
    """Optional: make the pool and/or the queries by mixing source files (``influcoder mix``) into the run."""

    pool: list[str] = field(default_factory=list)
    """PRESET=PATH sources (glob allowed; ${INFLUCODER_DATA} expands) mixed into OUT/data/pool.jsonl; empty: use pool.path."""
    pool_n: int = 0
    """Rows of the mixed pool."""
    queries: list[str] = field(default_factory=list)
    """PRESET=PATH sources mixed into OUT/data/queries.jsonl; empty: use queries.path."""
    queries_n: int = 0
    """Rows of the mixed queries."""
    seed: int = 0
    """Seed of the mix."""

    def __post_init__(self):
        for side in ("pool", "queries"):
            if getattr(self, side) and getattr(self, f"{side}_n") < 1:
                raise UserError(f"{side}_n must be ≥ 1 when {side} sources are given")


@dataclass
class SampleConfig:
    """Which pool examples and queries are stocked, and which are held out for the fidelity report."""

    n_stock: int = 200
    """Pool examples whose gradients are stocked to train the encoder (the teacher labels them × the training queries)."""
    method: str = "diverse"
    """diverse: k-means (FAISS) on untrained-encoder embeddings, the example nearest each centre; random: a seeded uniform sample."""
    holdout_pool: int = 40
    """Pool examples stocked but never trained on (a uniform sample): the rows of the report's held-out block."""
    holdout_queries: float = 0.25
    """Queries never trained on (fraction < 1 or count): the columns of the report's held-out block."""
    candidates: int = 5000
    """diverse: at most this many pool examples (a seeded uniform sample) are embedded and clustered."""
    seed: int = 0
    """Seed of the hold-out draw and of the sample."""

    def __post_init__(self):
        if self.method not in ("diverse", "random"):
            raise UserError(f"method must be diverse or random, got '{self.method}'")
        if self.n_stock < 2 or self.holdout_pool < 2:
            raise UserError("n_stock and holdout_pool must be ≥ 2")
        if self.candidates < self.n_stock:
            raise UserError(f"candidates ({self.candidates}) must be ≥ n_stock ({self.n_stock})")
        _count_ok(self.holdout_queries, "holdout_queries")


@dataclass
class ExactQuerySection:
    """Exact-query scoring beside the student (influcoder.student.exact_query; off by default, not yet the default scorer):
    the stocked queries keep their exact gradients, projected on the top-k principal directions of the training
    gradients; a ridge head predicts each pool example's coordinates from an untrained encoder's embeddings (text,
    response, prompt) and 10 form features. Writes exact_query/ (model, the whole pool's coordinates, the top-k
    of every stocked query) and adds its row to the fidelity report."""

    enabled: bool = False
    """Run the exact_query step."""
    encoder: str = "minilm-l6"
    """The (untrained) encoder whose embeddings are the head's features."""
    max_length: int = 256
    """Encoder tokens per view (the response kept, the prompt cut from the left)."""
    ks: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    """Candidate numbers of principal directions (chosen on the selection part)."""
    alphas: list[float] = field(default_factory=lambda: [1.0, 10.0, 100.0, 1000.0, 10000.0])
    """Candidate ridge penalties (chosen on the selection part)."""
    selection: float = 0.25
    """Share of the training pool held out to choose the basis (training pool + queries, or queries only), k and α."""
    top_k: int = 10
    """Pool examples listed per stocked query in exact_query/attribution.jsonl."""
    student: bool = False
    """Under scorer exact-query: also distil the student (the train step) and put its row in the report beside
    this scorer's (without it, a run that scores with exact-query trains no encoder)."""
    batch_size: int = 32
    """Encoder batch size."""

    def __post_init__(self):
        if not self.ks or min(self.ks) < 1 or not self.alphas or min(self.alphas) <= 0:
            raise UserError("ks must be positive integers and alphas positive numbers")
        if not 0 < self.selection < 1:
            raise UserError(f"selection must be in (0, 1), got {self.selection}")
        if self.top_k < 1 or self.max_length < 8:
            raise UserError("top_k must be ≥ 1 and max_length ≥ 8")


@dataclass
class ReportSection:
    """The fidelity report on the held-out block (student vs teacher, next to the untrained encoder and the length heuristic)."""

    enabled: bool = True
    """Write the report (report/fidelity.md, .json, .png)."""
    top_k: int = 10
    """k of the precision of the teacher's top-k among a method's top-k (per held-out query)."""
    margin: float = 0.05
    """Per-anchor Spearman gain over the best baseline that the verdict asks of the student."""
    bootstrap: int = 2000
    """Bootstrap resamples of the held-out queries for the confidence interval of that gain."""
    min_spearman: float = 0.5
    """Per-anchor Spearman against the teacher below which the verdict is never USE, even when the student beats
    the baselines: it then reproduces too little of the teacher's ranking to filter by."""

    def __post_init__(self):
        if self.top_k < 1 or self.bootstrap < 100:
            raise UserError("top_k must be ≥ 1 and bootstrap ≥ 100")
        if not -1.0 <= self.min_spearman <= 1.0:
            raise UserError(f"min_spearman must be in [-1, 1], got {self.min_spearman}")


@dataclass
class RunConfig:
    """`influcoder run RUN.yaml`: the whole job on one pool and one set of queries, from one config."""

    out: str = "work/run"
    """Run folder: every step's artefacts, the resolved config.yaml and run_manifest.json."""
    pool: DataSpec = field(default_factory=DataSpec)
    """The training pool (any size): its whole is embedded and indexed; a sample of it is stocked."""
    queries: DataSpec = field(default_factory=DataSpec)
    """The queries (reference examples of the behaviour): all of them are stocked."""
    mix: MixConfig = field(default_factory=MixConfig)
    """Optional: build the pool / queries by mixing source files."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    """The stocked sample and the held-out block."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """Gradient stocking (teacher)."""
    student: StudentConfig = field(default_factory=StudentConfig)
    """Distillation (student encoder)."""
    embed: EmbedSection = field(default_factory=EmbedSection)
    """Embedding the whole pool."""
    index: IndexSection = field(default_factory=IndexSection)
    """Indexing the pool embeddings."""
    attribute: AttributeSection = field(default_factory=AttributeSection)
    """Top-k attribution of the queries."""
    filter: FilterSection = field(default_factory=FilterSection)
    """Filtering the pool by influence."""
    exact_query: ExactQuerySection = field(default_factory=ExactQuerySection)
    """Exact-query scoring beside the student (off by default)."""
    report: ReportSection = field(default_factory=ReportSection)
    """The fidelity report."""
    scorer: str = "student"
    """What embed, index, attribute and filter score with: student (the distilled bi-encoder, encoder/) or
    exact-query (the exact_query step's model, exact_query/model: pool vectors are predicted gradient coordinates,
    a query's vector its exact coordinates — new queries are stocked, nothing else). exact-query runs the
    exact_query step whether or not exact_query.enabled says so."""
    device: str = "auto"
    """Device of every step that runs a model, where the step's own section says auto: auto (CUDA when
    present, else cpu), cpu (force the CPU), cuda or cuda:N."""
    precision: str = "auto"
    """Precision of every step that runs a model, where the step's own section says auto (teacher.dtype,
    student/embed/attribute/filter.precision): auto (bfloat16 where the device computes it natively, float32
    elsewhere), float32 or bfloat16. Each step's record (steps/<step>.json) holds the resolved one."""
    steps: list[str] = field(default_factory=list)
    """Steps to run (each with the steps it needs; comma-separated or repeated): mix, sample, stock, labels, train, embed, index, attribute, filter, report. Empty: all enabled steps."""

    def __post_init__(self):
        steps = [s.strip() for item in self.steps for s in str(item).split(",") if s.strip()]
        bad = [s for s in steps if s not in STEPS]
        if bad:
            raise UserError(f"steps: unknown step '{bad[0]}' (choose from {', '.join(STEPS)})")
        self.steps = steps
        if self.scorer not in SCORERS:
            raise UserError(f"scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}")
        from ..core.hardware import check_compute

        check_compute(self.device, self.precision)
        for sec in (self.teacher, self.student, self.embed, self.attribute, self.filter):  # the run's choice, where a
            if self.device != "auto" and sec.device == "auto":                          # section leaves it to auto
                sec.device = self.device
            pname = "dtype" if sec is self.teacher else "precision"
            if self.precision != "auto" and getattr(sec, pname) == "auto":
                setattr(sec, pname, self.precision)
        if not self.out:
            raise UserError("out: the run folder may not be empty")
        for side in ("pool", "queries"):
            if not getattr(self, side).path and not getattr(self.mix, side):
                raise UserError(f"{side}.path: give the {side} records file (or mix.{side} sources)")


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"
"""Run configs installed with the package (``influcoder run demo`` = ``influcoder/configs/demo.yaml``)."""


def find_run_config(name_or_path: str | Path) -> Path:
    """A run config given as a file path, or by the name of a config shipped with the package (``demo``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = SHIPPED_CONFIGS / f"{p.name.removesuffix('.yaml')}.yaml"
    if p.parent == Path(".") and shipped.is_file():
        return shipped
    names = ", ".join(sorted(f.stem for f in SHIPPED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"{p}: config file not found (give a YAML file, or the name of a shipped config: {names})")


@dataclass
class ExactQueryAttributeConfig:
    """``influcoder exact-query RUN``: attribute new queries by exact-query scoring against a finished run (stock
    only them with the run's teacher, project them on its basis, rank its pool)."""

    queries: DataSpec
    """New queries: a records file and how to read it; only they are stocked."""
    out: str
    """Output JSONL: query_id, rank, id, score."""
    top_k: Optional[int] = None
    """Pool examples per query (default: the run's exact_query.top_k)."""
    aggregate: bool = False
    """Rank every pool row by its mean score over the queries (a filter ranking: rank, id, score) instead of top-k
    per query."""

    def __post_init__(self):
        self.queries = DataSpec.of(self.queries)
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"top_k must be ≥ 1, got {self.top_k}")
