"""The distilled student of an experiment: its whole recipe (the cache key of a trained student) and its training on
a seed's training split."""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np

from ..data.records import Record

from .context import Context, atomic_json, atomic_npy, ids_of, key_of, write_records_file

__all__ = ["student_recipe", "LEGACY_RECIPE_KEYS", "train_student"]


def student_recipe(opts: dict) -> dict:
    """The student's whole recipe: the config's ``student`` options over DistillConfig's defaults, paths aside.
    Trained students are cached by it, so a changed default trains a new student instead of reusing one
    trained by the old recipe; fields added later are left out at their no-op value (distill.NO_OP_VALUES)."""
    from ..student.config import NO_OP_VALUES, DistillConfig

    recipe = {k: v for k, v in DistillConfig(pool_data="-", query_data="-", labels="-", out="-", **opts).to_dict().items()
              if k not in ("pool_data", "query_data", "labels", "out") and not (k in NO_OP_VALUES and v == NO_OP_VALUES[k])}
    # the field mappings of the two files were DistillConfig fields when the committed results were keyed; the
    # harness never sets them (it writes prompt/response files), so they stay in the recipe at their unset value
    return {**{k: None for k in LEGACY_RECIPE_KEYS}, **recipe}


LEGACY_RECIPE_KEYS = tuple(f"{s}_{k}" for s in ("pool", "query") for k in ("preset", "prompt_field", "response_field",
                                                                           "id_field"))
"""Keys of a student's recipe that are no DistillConfig fields any more (the two files' field mappings, now inside
pool_data / query_data): kept at their unset value so the committed results keep their construction keys."""


def train_student(ctx: Context, tag: str, train_pool: list[Record], train_queries: list[Record],
                  labels: np.ndarray, teacher_desc: dict) -> tuple[str, dict]:
    """Distil a student on (train_pool × train_queries) labels through influcoder.student.distill; cached by content."""
    from ..student.config import DistillConfig
    from ..student.distill import train
    from ..teacher.labels import write_meta

    opts = {k: v for k, v in ctx.cfg.student.items() if k != "path"}
    # the student runs where the experiment runs unless its own section says otherwise
    opts.setdefault("device", ctx.cfg.device)
    opts.setdefault("precision", ctx.cfg.precision)
    key = key_of({"pool": ids_of(train_pool), "queries": ids_of(train_queries), "opts": student_recipe(opts), "teacher": teacher_desc,
                "labels": hashlib.sha1(np.ascontiguousarray(labels, dtype=np.float32).tobytes()).hexdigest()})
    d = ctx.work / "students" / f"{tag}-{key}"
    done = d / "done.json"
    if done.exists():
        return str(d / "encoder"), json.loads(done.read_text())
    d.mkdir(parents=True, exist_ok=True)
    write_records_file(d / "pool.jsonl", train_pool)
    write_records_file(d / "queries.jsonl", train_queries)
    atomic_npy(d / "labels.npy", np.ascontiguousarray(labels, dtype=np.float32))
    write_meta(d / "labels.npy", {"pool_ids": [r.id for r in train_pool], "query_ids": [r.id for r in train_queries],
                                  "teacher": teacher_desc})
    dc = DistillConfig(pool_data=str(d / "pool.jsonl"), query_data=str(d / "queries.jsonl"),
                       labels=str(d / "labels.npy"), out=str(d / "encoder"), **opts)
    ctx.log(f"training student {tag} on {len(train_pool)}×{len(train_queries)} labels")
    t0 = time.perf_counter()
    train(dc, progress=ctx.progress, log=ctx.log)
    info = {"seconds_train": time.perf_counter() - t0, "n_train_pool": len(train_pool),
            "n_train_queries": len(train_queries), "distill": dc.to_dict()}
    atomic_json(done, info)
    return str(d / "encoder"), info
