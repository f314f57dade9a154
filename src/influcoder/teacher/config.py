"""The teacher's settings, importable without torch (``influcoder stock --help`` and config validation read
them): the LoRA adapters, the projection and :class:`StockConfig`, everything that defines a gradient store."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..core.errors import UserError
from ..core.hardware import PRECISIONS
from ..data.records import DataSpec, FieldSpec

__all__ = ["StockConfig", "LoraSettings", "ProjectionConfig", "KINDS", "InfluenceConfig", "TargetsConfig"]


KINDS = ("countsketch", "rademacher", "gaussian", "none")


@dataclass(frozen=True)
class ProjectionConfig:
    """How gradients are compressed before storage."""

    kind: str = "countsketch"
    """One of countsketch, rademacher, gaussian, none."""
    dim: int = 8192
    """Output dimension k (ignored for ``none``)."""
    seed: int = 0
    """Seed of the hash/signs or of the dense matrix; same seed ⇒ bit-identical projection."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"projection kind must be one of {', '.join(KINDS)}, got '{self.kind}'")
        if self.kind != "none" and self.dim < 1:
            raise ValueError(f"projection dim must be ≥ 1, got {self.dim}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters whose parameters define the gradient."""

    rank: int = 8
    """LoRA rank r."""
    alpha: float = 16.0
    """LoRA alpha (scaling = alpha / r)."""
    dropout: float = 0.0
    """LoRA dropout; must be 0 for deterministic gradients."""
    target_modules: tuple[str, ...] | None = None
    """Module name suffixes to adapt (e.g. q_proj, v_proj); None = every linear layer of the blocks."""
    seed: int = 0
    """Seed of the adapter initialisation (A is random; pool and query stores must share it)."""
    include_lora_a: str = "auto"
    """'auto' (drop lora_A when every lora_B is zero, its gradient then being exactly 0), 'yes' or 'no'."""

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be ≥ 1, got {self.rank}")
        if self.dropout != 0.0:
            raise ValueError("LoRA dropout must be 0: per-example gradients must be deterministic")
        if self.include_lora_a not in ("auto", "yes", "no"):
            raise ValueError("include_lora_a must be auto, yes or no")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules) if self.target_modules else None
        return d


@dataclass
class StockConfig:
    """Everything that defines a gradient store (shared by the CLI and the Python API)."""

    model: str
    """Decoder: hub id, local folder, or a packaged short name (smollm2-135m-instruct)."""
    data: DataSpec
    """The records to stock: a file (.jsonl, .json, .csv, .parquet) and how to read it (a path alone is read
    with the default fields); bad rows skipped under data.skip_invalid are listed in invalid.jsonl."""
    out: str
    """Store folder (created; an unfinished store there is resumed)."""
    chat_template: bool | None = None
    """Render with the tokenizer's chat template (default: when it has one)."""
    max_length: int = 512
    """Tokens per example after truncation (the prompt is cut from the left first)."""
    projection: str = "countsketch"
    """countsketch, rademacher, gaussian or none."""
    proj_dim: int = 8192
    """Projected dimension k."""
    seed: int = 0
    """Seed of the projection and of the LoRA initialisation."""
    lora_rank: int = 8
    """LoRA rank."""
    lora_alpha: float = 16.0
    """LoRA alpha."""
    target_modules: str | None = None
    """Comma-separated linear-layer names to adapt (default: all linear layers of the blocks)."""
    include_lora_a: str = "auto"
    """auto (drop the exactly-zero lora_A gradients of a fresh adapter), yes or no."""
    adapter: str | None = None
    """Load this LoRA adapter folder (e.g. a pool store's adapter/ after warm-up) instead of a fresh one."""
    warmup_steps: int = 0
    """LESS-style warm-up: LoRA training steps on this data before stocking (0 = off)."""
    warmup_lr: float = 2e-5
    """Learning rate of the warm-up."""
    dtype: str = "auto"
    """Compute precision: auto (bfloat16 where the device computes it natively, float32 elsewhere; see
    influcoder.core.hardware), float32, or bfloat16 (autocast). The store's manifest records the resolved one."""
    store_dtype: str = "float32"
    """Storage precision: float32 or float16."""
    batch_size: int = 8
    """Most examples per batch."""
    token_budget: int = 1024
    """Most padded tokens per batch (batch size × longest example)."""
    padding_side: str = "right"
    """Padding side (results do not depend on it)."""
    shard_size: int = 256
    """Rows per shard: the unit of atomic writing and of resume."""
    overwrite: bool = False
    """Delete an existing store at ``out`` first."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (this rank's GPU when there is one, else cpu)."""

    def __post_init__(self):
        self.data = DataSpec.of(self.data)
        errs = []
        if self.dtype not in PRECISIONS:
            errs.append(f"dtype must be one of {', '.join(PRECISIONS)}")
        if self.store_dtype not in ("float32", "float16"):
            errs.append("store_dtype must be float32 or float16")
        if self.batch_size < 1 or self.shard_size < 1 or self.max_length < 2:
            errs.append("batch_size and shard_size must be ≥ 1 and max_length ≥ 2")
        if self.padding_side not in ("left", "right"):
            errs.append("padding_side must be left or right")
        if self.warmup_steps and self.adapter:
            errs.append("give either --adapter or --warmup-steps, not both")
        try:
            ProjectionConfig(self.projection, self.proj_dim, self.seed)
            self.lora_settings()
        except ValueError as e:
            errs.append(str(e))
        if errs:
            raise UserError("; ".join(errs))

    def field_spec(self) -> FieldSpec:
        return self.data.field_spec()

    def lora_settings(self) -> LoraSettings:
        targets = tuple(t.strip() for t in self.target_modules.split(",")) if self.target_modules else None
        return LoraSettings(self.lora_rank, self.lora_alpha, 0.0, targets, self.seed, self.include_lora_a)

    def projection_config(self) -> ProjectionConfig:
        return ProjectionConfig(self.projection, self.proj_dim, self.seed)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class InfluenceConfig:
    """``influcoder influence``: the cosine influence matrix between a pool store and a query store."""

    pool: str
    """Pool gradient store."""
    query: str
    """Query gradient store."""
    out: str
    """Output .npy (float32, pool × query); ids go to OUT.meta.json."""
    block: int = 8192
    """Rows per block (bounds memory)."""

    def __post_init__(self):
        if self.block < 1:
            raise UserError(f"block must be ≥ 1, got {self.block}")


@dataclass
class TargetsConfig:
    """``influcoder targets``: dense distillation targets, every stocked example's coordinates in the top-k principal
    directions of the teacher's unit gradients (train with --dense-targets)."""

    pool: str
    """Pool gradient store."""
    query: str
    """Query gradient store."""
    out: str
    """Output .npy (float32, (pool + query) × k); ids go to OUT.meta.json."""
    k: int = 32
    """Principal directions kept."""
    basis_ids: str | None = None
    """A distill split.json (train_pool_ids, train_query_ids): fit the basis on those rows only (default: every row)."""

    def __post_init__(self):
        if self.k < 1:
            raise UserError(f"k must be ≥ 1, got {self.k}")
