"""What every part of an experiment shares: the run's context (config, caches, device, log), content keys, atomic
writes, and the names and kinds of the methods."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.fileio import atomic_save_npy, atomic_write_text
from ..data.records import Record
from .config import EvalConfig

__all__ = ["Context", "key_of", "atomic_json", "atomic_npy", "ids_of", "method_name", "method_spec", "methods_of_seed", "write_records_file", "GRADIENT_KINDS", "DECODER_KINDS", "TRAINED_KINDS"]


def key_of(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def atomic_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=1, default=float))


def atomic_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(path, arr)


# ============================================================================ runner
class Context:
    """Shared state of one run: config, caches, log."""

    def __init__(self, cfg: EvalConfig, log: Callable[[str], None], progress: bool):
        from .features import DecoderFeatures

        self.cfg = cfg
        self.work = Path(cfg.work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.progress = progress
        from ..core.hardware import announce, resolve

        self.device, self.precision = resolve(cfg.device, cfg.precision)
        announce("evaluate", self.device, self.precision, cfg.precision, log=log)
        self.features = DecoderFeatures(cfg.model, max_length=cfg.max_length, batch_size=cfg.batch_size,
                                        token_budget=cfg.token_budget, cache_dir=self.work / "features",
                                        progress=progress, log=log, device=self.device, precision=self.precision)
        self.committed_only = False  # toxicity with parts_dir: read committed results only, compute nothing
        self.only_methods: set[str] | None = None  # run only these methods (by name)
        self.seeds: list[int] = list(cfg.seeds)  # the seeds this run computes (a subset of the config's)
        self.state_path = self.work / f"state_{cfg.name}.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {"done": {}}

    def mark(self, what: str, info: Any = True) -> None:
        self.state["done"][what] = info
        atomic_json(self.state_path, self.state)


def method_name(spec: dict) -> str:
    """The name a method reports (config 'name', else the method's default, e.g. gradsim_r8, logra_fim)."""
    from .baselines import make_method

    if spec.get("name"):
        return spec["name"]
    if spec["kind"] in ("semantic", "influcoder", "exact_query"):
        return spec["kind"] + ("_no_prior" if spec.get("prior") is False else "")
    return make_method(method_spec(spec), NAME_FEATURES).name


class _NoFeatures:
    model_name = ""
    max_length = 0


NAME_FEATURES = _NoFeatures()


def ids_of(recs: list[Record]) -> list[str]:
    from .features import record_key

    return [record_key(r) for r in recs]

def method_spec(spec: dict) -> dict:
    """A config method entry without the harness's own keys (``seeds``): what :func:`make_method` takes."""
    return {k: v for k, v in spec.items() if k != "seeds"}


def methods_of_seed(cfg: EvalConfig, seed: int) -> list[dict]:
    """The methods run on ``seed``: every method whose ``seeds`` list (default: all of the config's) holds it."""
    return [m for m in cfg.methods if seed in m.get("seeds", cfg.seeds)]


GRADIENT_KINDS = ("gradsim", "logra", "datainf")
"""Methods that take LoRA gradients: with ``teacher.warmup_steps`` they use the teacher's warmed-up adapter."""


DECODER_KINDS = ("repsim", "rds") + GRADIENT_KINDS
TRAINED_KINDS = ("influcoder", "exact_query")
"""Methods fitted per seed on the student's training split (the distilled student; exact-query scoring)."""


def write_records_file(path: Path, recs: list[Record]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps({"id": r.id, "prompt": r.prompt, "response": r.response}) + "\n"
                                    for r in recs))
