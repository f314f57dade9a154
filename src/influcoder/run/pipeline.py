"""`influcoder run RUN.yaml` / ``Pipeline(cfg).run()``: the whole job on a user's pool and queries.

Steps (``config.STEPS``), each writing into the run folder (layout: docs in RUN_CONTRACT, ``run_manifest.json``):

  mix        (optional) mix source files into data/pool.jsonl and/or data/queries.jsonl;
  sample     one streaming pass over the pool: hold out a uniform block of pool examples and a share of
             the queries (never trained on), and choose the pool sample to stock (diverse: k-means on
             untrained-encoder embeddings; or random) → sample/;
  stock      LoRA gradients of the stocked pool sample (+ held-out rows) and of all queries → stores/;
  labels     cosine influence (teacher) → labels/labels.npy, and the training block → labels/train_labels.npy;
  train      distil the training block into the encoder (checkpointed each epoch) → encoder/;
  embed      the WHOLE pool with the trained encoder → embeddings/;
  index      FAISS index → index/;
  attribute  top-k pool examples per query → attribution/;
  filter     (optional) aggregated-influence scores and a filtered copy → filter/;
  report     the fidelity report on the held-out block → report/fidelity.{md,json,png}.

Caching and resume: before a step runs, its key (sha256 of its config section, the keys of the steps it
reads and the fingerprints of the data files it reads) is written to ``steps/<step>.started.json``; when it
finishes, ``steps/<step>.json`` records the key, the resolved section and the seconds it took. A step whose
record matches is skipped; a step interrupted (kill -9) with the same key is rerun and resumes from what
its stage left (stores and embeddings by shard, training by epoch checkpoint); a step whose config or
inputs changed is recomputed from scratch, and so is every step after it (their keys include its key).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import STEPS, RunConfig
from ..core.config import save_yaml, to_dict
from ..core.errors import UserError
from ..core.killpoints import kill_point
from ..core.fileio import atomic_save_npy, atomic_write_text
from .layout import MANIFEST, OUTPUTS, RUN_FORMAT, RunLayout
from ..data.records import DataSpec, Record, file_fingerprint, iter_records, read_records, write_records

__all__ = ["Pipeline", "run_pipeline", "MANIFEST", "RUN_FORMAT", "write_records"]

DEPENDS = {
    "mix": (),
    "sample": ("mix",),
    "stock": ("sample",),
    "labels": ("stock",),
    "train": ("labels",),
    "embed": ("train",),
    "index": ("embed",),
    "attribute": ("index",),
    "filter": ("embed",),
    "exact_query": ("labels",),
    "report": ("train", "stock", "exact_query"),
}
OPTIONAL = ("mix", "exact_query", "train")
"""Steps that are needed only when enabled (a step that depends on one skips it when it is off)."""


def expand_path(p: str) -> str:
    """``${INFLUCODER_DATA}`` (default ../shared/data), other environment variables and ``~`` expanded."""
    from ..data.mix import data_root

    if not p:
        return p
    p = p.replace("${INFLUCODER_DATA}", str(data_root())).replace("$INFLUCODER_DATA", str(data_root()))
    return os.path.expanduser(os.path.expandvars(p))


def _count(spec: float, n: int) -> int:
    return int(round(spec * n)) if spec < 1 else int(spec)


def _kmeans_pick(emb: np.ndarray, k: int, seed: int) -> list[int]:
    """Indices of ``k`` distinct rows: for each k-means centre (FAISS, spherical), the nearest row not taken."""
    import faiss

    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if k >= len(emb):
        return list(range(len(emb)))
    km = faiss.Kmeans(emb.shape[1], k, niter=25, seed=int(seed) + 1, spherical=True, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=max(256, len(emb) // k + 1))
    km.train(emb)
    sims = emb @ km.centroids.T  # rows × centres
    taken: set[int] = set()
    out: list[int] = []
    for c in np.argsort(-sims.max(axis=0), kind="stable"):  # most compact centres choose first
        for i in np.argsort(-sims[:, c], kind="stable"):
            if int(i) not in taken:
                taken.add(int(i))
                out.append(int(i))
                break
    return sorted(out)


class Pipeline:
    """Runs the steps of a :class:`~influcoder.run.config.RunConfig` into ``cfg.out`` (see the module doc)."""

    def __init__(self, cfg: RunConfig, *, log: Callable[[str], None] | None = None, progress: bool = True):
        self.cfg = cfg
        self.layout = RunLayout(cfg.out)
        self.root = self.layout.root
        self.log = log or (lambda s: None)
        self.progress = progress
        self._fp_cache: dict[str, str] = {}

    # ------------------------------------------------------------------------------------ paths & specs
    def path(self, *parts: str) -> Path:
        return self.layout.path(*parts)

    @property
    def pool_spec(self) -> DataSpec:
        """The whole pool as read by every step (the mixed file when mix.pool is set; paths absolute)."""
        if self.cfg.mix.pool:
            return DataSpec(path=str(self.path("data", "pool.jsonl")))
        return dataclasses.replace(self.cfg.pool, path=str(Path(expand_path(self.cfg.pool.path)).resolve()))

    @property
    def queries_spec(self) -> DataSpec:
        if self.cfg.mix.queries:
            return DataSpec(path=str(self.path("data", "queries.jsonl")))
        return dataclasses.replace(self.cfg.queries, path=str(Path(expand_path(self.cfg.queries.path)).resolve()))

    def _fingerprint(self, path: str) -> str:
        if path not in self._fp_cache:
            if not Path(path).exists():
                raise UserError(f"{path}: data file not found")
            self._fp_cache[path] = file_fingerprint(path)["sha256"]
        return self._fp_cache[path]

    # ------------------------------------------------------------------------------------ keys & records
    def _section(self, step: str) -> Any:
        c = self.cfg
        student_encoder = {k: getattr(c.student, k) for k in ("encoder", "pooling", "projection_dim", "max_length",
                                                               "pool_prefix", "query_prefix", "seed")}
        return {
            "mix": to_dict(c.mix),
            "sample": {**to_dict(c.sample), "pool": to_dict(self.pool_spec), "queries": to_dict(self.queries_spec),
                       **({"untrained_encoder": student_encoder} if c.sample.method == "diverse" else {})},
            "stock": to_dict(c.teacher),
            "labels": {},
            "train": to_dict(c.student),
            "embed": {**to_dict(c.embed), "pool": to_dict(self.pool_spec),
                      **({"scorer": c.scorer} if c.scorer != "student" else {})},
            "index": to_dict(c.index),
            "attribute": {**to_dict(c.attribute), "queries": to_dict(self.queries_spec), "pool": to_dict(self.pool_spec)},
            "filter": {**to_dict(c.filter), "queries": to_dict(self.queries_spec), "pool": to_dict(self.pool_spec)},
            "exact_query": {**{k: v for k, v in to_dict(c.exact_query).items() if k != "student"},
                            "pool": to_dict(self.pool_spec),
                            **({"scorer": c.scorer} if c.scorer != "student" else {})},
            "report": {**to_dict(c.report), "untrained_encoder": student_encoder},
        }[step]

    def _data_inputs(self, step: str) -> dict[str, str]:
        if step == "mix":
            from ..data.mix import parse_source

            files = [str(p) for s in self.cfg.mix.pool + self.cfg.mix.queries for p in parse_source(expand_path(s))[1]]
            return {p: self._fingerprint(p) for p in files}
        if step in ("sample", "embed", "exact_query"):
            paths = [self.pool_spec.path] + ([self.queries_spec.path] if step == "sample" else [])
        elif step in ("attribute", "filter"):
            paths = [self.queries_spec.path, self.pool_spec.path]
        else:
            return {}
        mixed = self.path("data")
        # a file the mix step makes is identified by the mix step's key (it is written by this run)
        return {p: (f"mix:{self.key('mix')}" if Path(p).parent == mixed else self._fingerprint(p)) for p in paths}

    def active(self, step: str) -> bool:
        """Whether ``step`` is on in this run's config (an optional step may be off)."""
        c = self.cfg
        return {"mix": bool(c.mix.pool or c.mix.queries), "attribute": c.attribute.enabled,
                "filter": c.filter.enabled, "report": c.report.enabled,
                "exact_query": c.exact_query.enabled or c.scorer == "exact-query",
                "train": c.scorer == "student" or c.exact_query.student}.get(step, True)

    def depends(self, step: str) -> tuple[str, ...]:
        """The steps ``step`` reads (DEPENDS; embed reads the exact_query step's model under scorer exact-query)."""
        if step == "embed" and self.cfg.scorer == "exact-query":
            return ("exact_query",)
        return DEPENDS[step]

    @property
    def scorer_path(self) -> Path:
        """The encoder folder embed, attribute and filter load: encoder/ or exact_query/model."""
        return self.layout.scorer(self.cfg.scorer)

    def key(self, step: str) -> str:
        """sha256 of the step's config section, its inputs' keys and the fingerprints of the data it reads."""
        deps = {d: self.key(d) for d in self.depends(step) if self.active(d) or d not in OPTIONAL}
        doc = {"step": step, "config": self._section(step), "inputs": deps, "data": self._data_inputs(step)}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()

    def record(self, step: str) -> dict | None:
        """The completion record of ``step`` (None when it never finished)."""
        return self.layout.record(step)

    def up_to_date(self, step: str) -> bool:
        rec = self.record(step)
        return bool(rec and rec.get("complete") and rec.get("key") == self.key(step)
                    and all(self.path(o).exists() for o in OUTPUTS[step]))

    # ------------------------------------------------------------------------------------ running
    def plan(self, steps: list[str] | None = None) -> list[str]:
        """The steps to run, in order: those asked for (default: all enabled) and those they need."""
        wanted = list(steps or self.cfg.steps or [s for s in STEPS if self.active(s)])
        bad = [s for s in wanted if s not in STEPS]
        if bad:
            raise UserError(f"unknown step '{bad[0]}' (choose from {', '.join(STEPS)})")
        need: set[str] = set()

        def add(s: str):
            if s in need or (s in OPTIONAL and not self.active(s)):
                return
            need.add(s)
            for d in self.depends(s):
                add(d)

        for s in wanted:
            add(s)
        return [s for s in STEPS if s in need]

    def run(self, steps: list[str] | None = None) -> dict:
        """Run (or resume) the planned steps; returns the run manifest."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.layout.step_record("-").parent.mkdir(exist_ok=True)
        save_yaml(self.cfg, self.layout.config, header="Resolved config of this run (influcoder run).")
        plan = self.plan(steps)
        self.log(f"run folder {self.root}: steps {', '.join(plan)}")
        for step in plan:
            self._run_step(step)
            self._write_manifest()
        return self._write_manifest()

    def _wipe(self, step: str) -> None:
        for o in OUTPUTS[step]:
            p = self.path(o)
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    def _run_step(self, step: str) -> None:
        key = self.key(step)
        rec = self.record(step)
        started_p = self.layout.step_record(step, started=True)
        started = json.loads(started_p.read_text()) if started_p.exists() else None
        if self.up_to_date(step):
            self.log(f"[{step}] up to date (key {key[:12]})")
            return
        if rec and rec.get("key") != key:
            self.log(f"[{step}] its config or inputs changed since it ran: recomputing")
            self._wipe(step)
        elif started and started.get("key") != key:
            self.log(f"[{step}] an interrupted attempt with another config or inputs is discarded")
            self._wipe(step)
        elif started:
            self.log(f"[{step}] resuming an interrupted attempt")
        self.layout.step_record(step).unlink(missing_ok=True)
        attempts = (started or {}).get("attempts", 0) + 1 if started and started.get("key") == key else 1
        atomic_write_text(started_p, json.dumps({"step": step, "key": key, "attempts": attempts,
                                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        self.log(f"[{step}] running")
        t0 = time.perf_counter()
        info = getattr(self, f"_do_{step}")() or {}
        seconds = time.perf_counter() - t0
        kill_point(f"run:{step}")
        atomic_write_text(self.layout.step_record(step), json.dumps({
            "step": step, "key": key, "complete": True, "config": self._section(step),
            "inputs": {d: self.key(d) for d in self.depends(step) if self.active(d) or d not in OPTIONAL},
            "seconds": seconds, "attempts": attempts, "info": info,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1, default=str))
        started_p.unlink(missing_ok=True)
        self.log(f"[{step}] done in {seconds:.1f} s")

    def _write_manifest(self) -> dict:
        done = [s for s in STEPS if self.record(s) and self.up_to_date(s)]

        def spec(d: DataSpec) -> dict:
            return {k: v for k, v in to_dict(d).items()}

        entries = self.layout.manifest_entries(self.cfg.scorer, done)
        m = {
            "format": RUN_FORMAT,
            "config": self.layout.config.name,
            "encoder": entries.pop("encoder"),
            "scorer": self.cfg.scorer,
            "embeddings": entries.pop("embeddings"),
            "index": entries.pop("index"),
            "pool": spec(self.pool_spec),
            "queries": spec(self.queries_spec),
            **entries,
            "steps_done": done,
        }
        atomic_write_text(self.layout.manifest, json.dumps(m, indent=1))
        return m

    # ------------------------------------------------------------------------------------ the steps
    def _do_mix(self) -> dict:
        from ..data.mix import mix_records, write_mix

        c = self.cfg.mix
        info = {}
        for side, n, name in (("pool", c.pool_n, "pool.jsonl"), ("queries", c.queries_n, "queries.jsonl")):
            sources = getattr(c, side)
            if sources:
                rows = mix_records([expand_path(s) for s in sources], n, c.seed)
                write_mix(rows, self.path("data", name))
                info[side] = {"n": len(rows), "sources": sources}
        return info

    def _do_sample(self) -> dict:
        c = self.cfg.sample
        rng = np.random.default_rng(c.seed)
        queries, q_invalid = self.queries_spec.read()
        n_hq = _count(c.holdout_queries, len(queries))
        if n_hq < 2 or len(queries) - n_hq < 4:
            raise UserError(f"{self.queries_spec.path}: {len(queries)} queries; holding out {n_hq} leaves too few "
                            "(need ≥ 2 held out and ≥ 4 to train on): change sample.holdout_queries or add queries")
        q_perm = rng.permutation(len(queries))
        hold_q = sorted(int(j) for j in q_perm[:n_hq])
        train_q = sorted(int(j) for j in q_perm[n_hq:])

        # one streaming pass over the pool: a seeded uniform reservoir of what the sample needs
        want = c.holdout_pool + (c.candidates if c.method == "diverse" else c.n_stock)
        reservoir: list[Record] = []
        n_pool = 0
        invalid: list = []
        spec = self.pool_spec
        for rec in iter_records(spec.path, spec.field_spec(), skip_invalid=spec.skip_invalid, invalid=invalid):
            if spec.limit is not None and n_pool >= spec.limit:
                break
            if len(reservoir) < want:
                reservoir.append(rec)
            else:
                j = int(rng.integers(0, n_pool + 1))
                if j < want:
                    reservoir[j] = rec
            n_pool += 1
        if n_pool < c.holdout_pool + 2:
            raise UserError(f"{spec.path}: {n_pool} pool records; sample.holdout_pool = {c.holdout_pool} leaves too few to train on")
        reservoir.sort(key=lambda r: r.row)  # file order: the sample does not depend on the reservoir's slots
        perm = rng.permutation(len(reservoir))
        hold_p = [reservoir[i] for i in sorted(perm[: c.holdout_pool])]
        rest = [reservoir[i] for i in sorted(perm[c.holdout_pool:])]
        n_stock = min(c.n_stock, len(rest))
        if n_stock < c.n_stock:
            self.log(f"[sample] the pool has {n_pool} records: stocking {n_stock} (not {c.n_stock}) + {len(hold_p)} held out")
        if c.method == "random" or n_stock == len(rest):
            chosen = sorted(int(i) for i in rng.permutation(len(rest))[:n_stock])
        else:
            from ..student.encoder import InfluenceEncoder
            from ..search.embed import encode_sorted

            s = self.cfg.student
            enc = InfluenceEncoder.from_pretrained(s.encoder, pooling=s.pooling, projection_dim=s.projection_dim,
                                                   max_length=s.max_length, pool_prefix=s.pool_prefix,
                                                   query_prefix=s.query_prefix, seed=s.seed)
            emb = encode_sorted(enc, rest, batch_size=64, side="pool")
            chosen = _kmeans_pick(emb, n_stock, c.seed)
        train_p = [rest[i] for i in chosen]
        d = self.path("sample")
        write_records(d / "train_pool.jsonl", train_p)
        write_records(d / "holdout_pool.jsonl", hold_p)
        write_records(d / "stock_pool.jsonl", train_p + hold_p)
        write_records(d / "train_queries.jsonl", [queries[j] for j in train_q])
        write_records(d / "holdout_queries.jsonl", [queries[j] for j in hold_q])
        write_records(d / "stock_queries.jsonl", [queries[j] for j in train_q + hold_q])
        split = {
            "method": c.method, "n_pool": n_pool, "n_pool_invalid": len(invalid), "n_queries": len(queries),
            "n_queries_invalid": len(q_invalid), "candidates": len(rest),
            "train_pool_ids": [r.id for r in train_p], "holdout_pool_ids": [r.id for r in hold_p],
            "train_query_ids": [queries[j].id for j in train_q], "holdout_query_ids": [queries[j].id for j in hold_q],
        }
        atomic_write_text(d / "split.json", json.dumps(split, indent=1))
        return {k: v for k, v in split.items() if not k.endswith("_ids")} | {"n_stock": len(train_p)}

    def _do_stock(self) -> dict:
        from ..teacher.config import StockConfig
        from ..teacher.stock import stock

        info = {}
        for side, data in (("pool", "stock_pool.jsonl"), ("queries", "stock_queries.jsonl")):
            t0 = time.perf_counter()
            stock(StockConfig(data=str(self.path("sample", data)), out=str(self.path("stores", side)),
                              **to_dict(self.cfg.teacher)), progress=self.progress)
            info[f"{side}_seconds"] = time.perf_counter() - t0
            info[f"{side}_n"] = sum(1 for _ in open(self.path("sample", data)))
            info["precision"] = json.loads(self.path("stores", side, "manifest.json").read_text())["dtype"]
        return info

    def _do_labels(self) -> dict:
        from ..teacher.influence import compute_influence
        from ..teacher.labels import load_labels, meta_path, write_meta

        path = compute_influence(self.path("stores", "pool"), self.path("stores", "queries"),
                                 self.path("labels", "labels.npy"), progress=self.progress)
        lab = load_labels(path)
        split = json.loads(self.path("sample", "split.json").read_text())
        pi = {p: i for i, p in enumerate(lab.pool_ids)}
        qi = {q: j for j, q in enumerate(lab.query_ids)}
        rows = [pi[p] for p in split["train_pool_ids"]]
        cols = [qi[q] for q in split["train_query_ids"]]
        block = np.ascontiguousarray(np.asarray(lab.matrix)[np.ix_(rows, cols)], dtype=np.float32)
        tpath = self.path("labels", "train_labels.npy")
        atomic_save_npy(tpath, block)
        meta = json.loads(meta_path(path).read_text())
        meta.update(pool_ids=split["train_pool_ids"], query_ids=split["train_query_ids"],
                    block_of={"labels": str(path), "held_out_rows_and_columns_removed": True})
        write_meta(tpath, meta)
        return {"shape": list(lab.matrix.shape), "train_shape": list(block.shape)}

    def _do_train(self) -> dict:
        from ..student.config import DistillConfig
        from ..student.distill import train

        cfg = DistillConfig(pool_data=str(self.path("sample", "train_pool.jsonl")),
                            query_data=str(self.path("sample", "train_queries.jsonl")),
                            labels=str(self.path("labels", "train_labels.npy")), out=str(self.path("encoder")),
                            **to_dict(self.cfg.student))
        out = train(cfg, progress=self.progress, log=self.log)
        meta = json.loads((out / "influcoder_encoder.json").read_text())
        return {"validation": meta.get("validation"), "validation_untrained": meta.get("validation_untrained"),
                "best_epoch": meta.get("selection", {}).get("best_epoch"), "device": meta.get("device"),
                "precision": meta.get("precision")}

    def _do_exact_query(self) -> dict:
        """Fit exact-query scoring on the training part (influcoder.student.exact_query), then score: the whole pool's
        predicted coordinates, the top-k of every stocked query, and the held-out block (for the report)."""
        from ..student.encoder import InfluenceEncoder
        from ..student.exact_query import REFERENCE_KEYS, ExactQueryModel, coordinates, pool_features, ranked_pool_rows, select_and_fit, top_k_rows, unit_rows
        from ..data.records import record_key
        from ..teacher.store import open_store

        c = self.cfg.exact_query
        split = json.loads(self.path("sample", "split.json").read_text())
        ps, qs = open_store(self.path("stores", "pool")), open_store(self.path("stores", "queries"))

        def rows(store, ids):
            where = {i: k for k, i in enumerate(store.ids)}
            return unit_rows(np.asarray(store.matrix)[[where[i] for i in ids]])

        Utp, Utq = rows(ps, split["train_pool_ids"]), rows(qs, split["train_query_ids"])
        train_pool, _ = read_records(self.path("sample", "train_pool.jsonl"))
        enc = InfluenceEncoder.from_pretrained(c.encoder, max_length=c.max_length)
        Xt = pool_features(enc, train_pool, c.batch_size)
        V, head, choice = select_and_fit(Xt, Utp, Utq, c.ks, c.alphas, c.selection, self.cfg.sample.seed)
        self.log(f"exact-query: basis {choice['basis']}, k {choice['k']}, α {choice['alpha']:g} (selection per-anchor "
                 f"{choice['selection_per_anchor']:.3f} on {choice['n_selection']} held-out training rows)")
        # what scoring needs later without this run's stores: the teacher's settings as the queries were stocked
        # (resolved dtype; a warmed-up adapter copied beside the model), the gradients' identity, and the
        # coordinates of every stocked query by its content (so that they are never stocked again)
        out = self.path("exact_query")
        mdir = out / "model"
        teacher = {**to_dict(self.cfg.teacher), "dtype": qs.manifest["dtype"]}
        if (self.path("stores", "queries", "adapter") / "adapter_config.json").exists():
            shutil.copytree(self.path("stores", "queries", "adapter"), mdir / "adapter", dirs_exist_ok=True)
            teacher.update(adapter="adapter", warmup_steps=0)
        stocked_q, _ = read_records(self.path("sample", "stock_queries.jsonl"))
        where_q = {i: n for n, i in enumerate(qs.ids)}
        Q = coordinates(unit_rows(np.asarray(qs.matrix)), V)  # every stocked query's exact coordinates, store order
        known = Q[[where_q[r.id] for r in stocked_q]]
        model = ExactQueryModel(
            V=V, head=head, encoder=c.encoder,
            info={**choice, "max_length": c.max_length, "views": "text,response,prompt+form", "feature_precision": "float32"},
            teacher=teacher, reference={k: qs.manifest.get(k) for k in REFERENCE_KEYS},
            known_keys=[record_key(r) for r in stocked_q], known_coordinates=known,
            metadata={"pool_data": str(self.path("sample", "train_pool.jsonl")),
                      "query_data": str(self.path("sample", "train_queries.jsonl"))})
        model.save(mdir)
        pool_ids = None
        if self.cfg.scorer != "exact-query":  # (under scorer exact-query, embed/index/attribute/filter do this)
            # the whole pool, streamed in blocks: predicted coordinates
            pool, _ = self.pool_spec.read()
            C = np.concatenate([model.pool_coordinates(pool_features(enc, pool[s:s + 4096], c.batch_size))
                                for s in range(0, len(pool), 4096)])
            atomic_save_npy(out / "pool_coordinates.npy", np.ascontiguousarray(C, dtype=np.float32))
            pool_ids = [r.id for r in pool]
            atomic_write_text(out / "pool_ids.json", json.dumps(pool_ids))  # the coordinates' row order
            # every stocked query: its top-k of the whole pool
            rows_out = top_k_rows(C, Q, qs.ids, pool_ids, min(c.top_k, len(pool)))
            atomic_write_text(out / "attribution.jsonl", "".join(json.dumps(r) + "\n" for r in rows_out))
            # every pool row's mean score over the stocked queries (as `filter --aggregate mean` ranks), highest first
            atomic_write_text(out / "scores.jsonl", "".join(json.dumps(r) + "\n" for r in ranked_pool_rows(C, Q, pool_ids)))
        # the held-out block (pool rows the sample drew from the pool: their coordinates are rows of C), in the
        # report's row and column order
        hp, _ = read_records(self.path("sample", "holdout_pool.jsonl"))
        hq, _ = read_records(self.path("sample", "holdout_queries.jsonl"))
        if pool_ids is not None:
            where = {i: n for n, i in enumerate(pool_ids)}
            Ch = C[[where[r.id] for r in hp]]
        else:
            Ch = model.pool_coordinates(pool_features(enc, hp, c.batch_size))
        Qh = Q[[where_q[r.id] for r in hq]]
        atomic_save_npy(out / "heldout_scores.npy", np.ascontiguousarray(Ch @ Qh.T, dtype=np.float64))
        return {**choice, "n_pool": len(pool_ids) if pool_ids is not None else None, "n_queries": len(qs.ids),
                "k_used": int(V.shape[1])}

    def exact_query_attribute(self, queries: DataSpec, out: str | Path, top_k: int | None = None,
                              aggregate: bool = False) -> Path:
        """Top-k pool examples of *new* queries by exact-query scoring: only the queries are stocked (the run's
        teacher settings, so their gradients are comparable), projected on the run's basis and scored against the
        pool coordinates the exact_query step wrote. Writes ``out`` (JSONL: query_id, rank, id, score; with
        ``aggregate``, every pool row ranked by its mean score over the queries: rank, id, score — a filter
        ranking) atomically; the store of the added queries is kept under exact_query/added/ (a rerun reuses or
        resumes it)."""
        from ..student.exact_query import ExactQueryModel, check_reference, ranked_pool_rows, top_k_rows
        from ..teacher.config import StockConfig
        from ..teacher.stock import stock
        from ..teacher.store import open_store

        if not (self.record("exact_query") and self.up_to_date("exact_query")):
            raise UserError(f"{self.root}: no up-to-date exact_query step (run it with --exact_query.enabled first)")
        e = self.path("exact_query")
        if not (e / "pool_coordinates.npy").exists():
            raise UserError(f"{self.root}: under scorer exact-query the pool's coordinates are in its embeddings and "
                            f"index; attribute new queries with `influcoder attribute --encoder {e / 'model'} --index "
                            f"{self.path('index')} --queries FILE` (only they are stocked)")
        model = ExactQueryModel.load(e / "model")
        C = np.load(e / "pool_coordinates.npy", mmap_mode="r")
        ids = json.loads((e / "pool_ids.json").read_text())
        if not queries.path or not Path(queries.path).exists():
            raise UserError(f"{queries.path or '(none)'}: queries file not found")
        fields = {k: v for k, v in to_dict(queries).items() if k not in ("path",)}
        tag = hashlib.sha256(json.dumps({"data": file_fingerprint(queries.path)["sha256"], "fields": fields,
                                         "teacher": to_dict(self.cfg.teacher)}, sort_keys=True).encode()).hexdigest()[:16]
        store = self.path("exact_query", "added", tag)
        stock(StockConfig(data=queries, out=str(store), **to_dict(self.cfg.teacher)), progress=self.progress)
        qs = open_store(store)
        check_reference(qs.manifest, json.loads(self.path("stores", "queries", "manifest.json").read_text()),
                        f"{store}: the added queries' gradients")
        Q = model.query_coordinates(np.asarray(qs.matrix))
        rows_out = (ranked_pool_rows(C, Q, ids) if aggregate else
                    top_k_rows(C, Q, qs.ids, ids, min(top_k or self.cfg.exact_query.top_k, len(ids))))
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows_out))
        self.log(f"exact-query: {len(qs.ids)} queries stocked and scored against {len(ids)} pool rows → {out}")
        return out

    def _do_embed(self) -> dict:
        from ..search.embed import EmbedConfig, embed_file, open_embeddings

        p = self.pool_spec
        path = embed_file(EmbedConfig(encoder=str(self.scorer_path), data=p, out=str(self.path("embeddings")),
                                      side="pool", **to_dict(self.cfg.embed)), progress=self.progress)
        s = open_embeddings(path)
        return {"n": len(s), "dim": s.dim, "precision": s.manifest.get("precision")}

    def _do_index(self) -> dict:
        from ..search.index import IndexConfig, build_index, open_index

        path = build_index(IndexConfig(embeddings=str(self.path("embeddings")), out=str(self.path("index")),
                                       overwrite=True, **to_dict(self.cfg.index)), progress=self.progress)
        return {"n": open_index(path).meta["n"]}

    def _do_attribute(self) -> dict:
        from ..search.attribute import AttributeConfig, run_attribute

        q = self.queries_spec
        a = {k: v for k, v in to_dict(self.cfg.attribute).items() if k != "enabled"}
        self.path("attribution").mkdir(parents=True, exist_ok=True)
        rows, report = run_attribute(AttributeConfig(
            encoder=str(self.scorer_path), index=str(self.path("index")), queries=q,
            data=self.pool_spec.path, out=str(self.path("attribution", "attribution.jsonl")), **a))
        from ..search.embed import resolved_precision

        return {"rows": len(rows), "n_queries": report["n_queries"], "queries_ood": report.get("queries_ood"),
                "precision": resolved_precision(self.cfg.attribute)}

    def _do_filter(self) -> dict:
        from ..search.filter import FilterConfig, filter_pool

        p, q = self.pool_spec, self.queries_spec
        f = {k: v for k, v in to_dict(self.cfg.filter).items() if k != "enabled"}
        path = filter_pool(FilterConfig(
            encoder=str(self.scorer_path), out=str(self.path("filter")), data=p,
            pool_embeddings=str(self.path("embeddings")), queries=q, **f), progress=self.progress)
        rep = json.loads((path / "report.json").read_text())
        from ..search.embed import resolved_precision

        return {"n_selected": rep["n_selected"], "n_written": rep["n_written"],
                "precision": resolved_precision(self.cfg.filter)}

    def _do_report(self) -> dict:
        from .report import fidelity_report

        res = fidelity_report(self.cfg, self.layout, active={s for s in STEPS if self.active(s)}, log=self.log)
        m = res["methods"]
        return {"verdict": res["verdict"]["line"], "scorer": res["scorer"],
                "per_anchor": m[res["scorer"]]["per_anchor_spearman"],
                "student_per_anchor": m["student"]["per_anchor_spearman"] if "student" in m else None}


def run_pipeline(cfg: RunConfig, steps: list[str] | None = None, **kw) -> dict:
    """``Pipeline(cfg, **kw).run(steps)``."""
    return Pipeline(cfg, **kw).run(steps)
