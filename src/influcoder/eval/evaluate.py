"""Evaluation harness: run an experiment described by a YAML config (``influcoder evaluate CONFIG.yaml``).
The runners of the three experiments live here; their parts beside it: the config (:mod:`.config`), the data
(:mod:`.datasets`), the ground truth (:mod:`.teachers`), the student (:mod:`.students`), the methods
(:mod:`.baselines`, :mod:`.features`), costs (:mod:`.flops`, :mod:`.costs`) and the write-up (:mod:`.report`).

Experiments (METHOD.md §3, issue 5):

* ``ranking`` — influence ranking estimation. Ground truth: the teacher's cosine LoRA-gradient
  influence on a held-out pool × held-out query block, either from finished gradient stores
  (``teacher.kind: stores``, CountSketch rows) or recomputed exactly on the block
  (``teacher.kind: exact``: the teacher's LoRA gradient, no projection, or ``sketch_dim`` to apply the
  teacher's CountSketch). Metrics: per-anchor, query-specific per-anchor and mean-aggregated
  Spearman (:mod:`influcoder.core.metrics`), mean ± std over split seeds.
* ``toxicity`` — DATE-LM-style unsafe-data detection. ``data.construction: datelm`` builds DATE-LM's
  XSTest-response task (:func:`toxicity_data_datelm`): Hom = benign instruction data + XSTest unsafe
  full compliances (≈ 0.65 %), Het = Hom + hard negatives from XSTest (refusals to unsafe prompts,
  harmless answers to safe ones); references are further unsafe completions of other prompts; with
  ``teacher.warmup_steps`` every gradient is taken at a LoRA adapter warmed up on the pool scored. The
  older ``planted`` construction plants unsafe responses among benign rows, Het/Hom differing by the
  references' XSTest categories. Metric: AUPRC of the reference-mean score (DATE-LM's computation),
  precision@k, recall@k.
* ``fidelity`` — links the projection-fidelity benchmark's results (experiment 3).

Everything expensive is cached under ``work_dir`` keyed by its definition: per-record decoder
features (:class:`influcoder.eval.features.DecoderFeatures`), label blocks, trained students and score
matrices (``scores/<key>.npy`` + ``.json`` with the costs). A rerun recomputes only what changed; a
killed run resumes from the last finished piece. Outputs: ``<out_dir>/eval_<name>.json``, ``.md`` and
``.png`` (written to a temporary name, then renamed).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core.errors import UserError
from ..data.records import Record
from .config import EvalConfig, load_config
from .datasets import ranking_split, read_with_preset, toxicity_data
from .context import (DECODER_KINDS, GRADIENT_KINDS, TRAINED_KINDS, Context, atomic_json, atomic_npy, ids_of, key_of,
                      method_name, method_spec, methods_of_seed)
from .flops import add_flops, per_example_seconds
from .report import make_figures, report_markdown
from .students import student_recipe, train_student
from .teachers import adapter_keys, exact_teacher, labels_from_stores, store_rows, warmed, with_teacher

__all__ = ["EvalConfig", "load_config", "run"]

def score_method(ctx: Context, spec: dict, pool: list[Record], queries: list[Record], extra_key: Any = None) -> tuple[np.ndarray, dict]:
    """Score matrix of one method on (pool, queries), cached by (method spec, model settings, record contents)."""
    from .baselines import make_method

    cfg = ctx.cfg
    key = {"spec": method_spec(spec), "model": cfg.model, "max_length": cfg.max_length, "pool": ids_of(pool),
           "queries": ids_of(queries), "extra": extra_key}
    if ctx.precision != "float32":  # float32 keys stay as they were before precision was a setting
        key["precision"] = ctx.precision
    key = key_of(key)
    name = method_name(spec)
    path = ctx.work / "scores" / f"{name}-{key}.npy"
    meta_p = path.with_suffix(".json")
    if path.exists() and meta_p.exists():
        return np.load(path), json.loads(meta_p.read_text())
    spec = method_spec(spec)
    m = make_method(spec, ctx.features, device=ctx.device, precision=ctx.precision)
    ctx.log(f"scoring {name} on {len(pool)}×{len(queries)}")
    s = m.scores(pool, queries)
    if not np.isfinite(s).all():
        raise RuntimeError(f"{name}: non-finite scores")
    info = {"method": m.describe(), "cost": m.cost}
    atomic_npy(path, s)
    atomic_json(meta_p, info)
    return s, info


def _mean_std(xs: list[float]) -> tuple[float, float]:
    a = np.asarray([x for x in xs if x is not None], dtype=np.float64)
    return (float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0) if len(a) else (float("nan"), float("nan"))


# ----------------------------------------------------------------------------- ranking
def run_ranking(ctx: Context) -> dict:
    from ..core import metrics as M

    cfg, data = ctx.cfg, ctx.cfg.data
    pool_all = read_with_preset(data["pool"], data.get("preset"))
    query_all = read_with_preset(data["query"], data.get("preset"))
    teacher = cfg.teacher
    store_labels = None
    if teacher.get("kind") == "stores":
        store_labels = labels_from_stores(ctx, teacher)
        rows = [store_labels.pool_ids.index(r.id) if r.id in store_labels.pool_ids else -1 for r in pool_all]
        cols = [store_labels.query_ids.index(r.id) if r.id in store_labels.query_ids else -1 for r in query_all]
        if min(rows) < 0 or min(cols) < 0:
            raise UserError("ranking: the stores do not cover every pool/query record of the data files")
    per_seed = []
    for seed in ctx.seeds:
        sp = ranking_split(len(pool_all), len(query_all), data["test_pool"], data["test_queries"], seed,
                           data.get("train_pool"), data.get("train_queries"),
                           pool_keys=ids_of(pool_all), query_keys=ids_of(query_all))
        tp = [pool_all[i] for i in sp["test_pool"]]
        tq = [query_all[i] for i in sp["test_queries"]]
        if store_labels is not None:
            L = np.asarray(store_labels.matrix)
            truth = L[np.ix_([rows[i] for i in sp["test_pool"]], [cols[j] for j in sp["test_queries"]])].astype(np.float32)
            truth_desc = {"kind": "stores", "teacher": store_labels.meta.get("teacher")}
        else:
            ctx.log(f"seed {seed}: exact teacher on the test block")
            truth = exact_teacher(ctx, tp, tq)
            truth_desc = {"kind": "exact", **teacher}
        result = {"seed": seed, "n_test_pool": len(tp), "n_test_queries": len(tq), "methods": {},
                  "train_dropped_duplicates_of_test": sp["dropped_duplicates"]}
        if store_labels is not None and teacher.get("dense_check", True):
            dense = exact_teacher(with_teacher(ctx, {"kind": "exact", "rank": teacher.get("rank", 8),
                                                     "lora_seed": teacher.get("lora_seed", 0),
                                                     "share_logra_k": teacher.get("share_logra_k")}), tp, tq)
            result["sketch_vs_dense"] = {"per_anchor": M.per_anchor_spearman(truth, dense),
                                         "aggregated": M.aggregated_spearman(truth, dense)}
        for spec in cfg.methods:
            name = method_name(spec)
            info_extra = {}
            if spec["kind"] == "influcoder":
                if "path" in cfg.student:
                    enc_path = cfg.student["path"]
                    info_extra = {"student": "given", "path": enc_path}
                else:
                    trp = [pool_all[i] for i in sp["train_pool"]]
                    trq = [query_all[j] for j in sp["train_queries"]]
                    if data.get("train_pool_file"):
                        trp = read_with_preset(data["train_pool_file"], "prompt-response")
                    if data.get("train_query_file"):
                        trq = read_with_preset(data["train_query_file"], "prompt-response")
                    test_keys = {(r.prompt, r.response) for r in tp + tq}
                    bad = [r.id for r in trp + trq if (r.prompt, r.response) in test_keys]
                    if bad:
                        raise UserError(f"ranking: student training examples are in the test block: {bad[:5]}")
                    if store_labels is not None:
                        # rows/columns of the records actually trained on (a train_*_file replaces the split's)
                        lab = np.asarray(store_labels.matrix)[np.ix_(
                            store_rows(store_labels.pool_ids, trp, data.get("train_pool_file") or data["pool"], "pool"),
                            store_rows(store_labels.query_ids, trq, data.get("train_query_file") or data["query"],
                                        "query"))]
                    else:
                        lab = exact_teacher(ctx, trp, trq)
                    enc_path, info_extra = train_student(ctx, f"ranking-s{seed}", trp, trq, lab, truth_desc)
                spec = {"kind": "influcoder", "name": name, "encoder": enc_path}
            s, info = score_method(ctx, spec, tp, tq)
            info.update(info_extra)
            result["methods"][name] = {
                "per_anchor": M.per_anchor_spearman(s, truth),
                "query_specific": M.query_specific_spearman(s, truth),
                "aggregated": M.aggregated_spearman(s, truth),
                "seconds_per_example": per_example_seconds(info["cost"], len(tp), len(tq)),
                "bytes_per_example": info["cost"].get("bytes_per_example"),
                "info": info,
            }
            ctx.log(f"seed {seed} {name}: per-anchor {result['methods'][name]['per_anchor']:.3f}")
        ceiling = np.repeat(truth.mean(axis=1, keepdims=True), truth.shape[1], axis=1)
        result["methods"]["pool_mean_ceiling (oracle)"] = {
            "per_anchor": M.per_anchor_spearman(ceiling, truth), "query_specific": 0.0,
            "aggregated": M.aggregated_spearman(ceiling, truth), "seconds_per_example": None,
            "bytes_per_example": None, "info": {"note": "uses the true labels: a reference line, not a method"}}
        result["teacher"] = truth_desc
        per_seed.append(result)
        ctx.mark(f"ranking-seed{seed}")
    return {"per_seed": per_seed, "summary": _summarise(per_seed, ("per_anchor", "query_specific", "aggregated"))}


def _summarise(per_seed: list[dict], metrics: tuple[str, ...]) -> dict:
    """Mean ± std of each metric over the seeds that have the method (``n_seeds``; per-seed values stay in
    ``per_seed``); median seconds per 1,000 examples."""
    names = list(dict.fromkeys(n for r in per_seed for n in r["methods"]))
    out = {}
    for n in names:
        have = [r["methods"][n] for r in per_seed if n in r["methods"]]
        row = {"n_seeds": len(have)}
        for m in metrics:
            mu, sd = _mean_std([h.get(m) for h in have])
            row[m] = {"mean": mu, "std": sd}
        secs = [h.get("seconds_per_example") for h in have]
        secs = [s for s in secs if s is not None]
        row["seconds_per_1000"] = 1000 * float(np.median(secs)) if secs else None
        row["bytes_per_example"] = have[0].get("bytes_per_example")
        out[n] = row
    return out


def _prefetch(ctx: Context, records: list[Record], specs: list[dict] | None = None) -> None:
    """Dense-projection methods: project every record of the experiment in one call (one matrix generation)."""
    from .baselines import GradSimMethod, make_method

    for spec in (ctx.cfg.methods if specs is None else specs):
        spec = method_spec(spec)
        if spec["kind"] != "gradsim" or not spec.get("proj_dim", 8192):
            continue
        key = key_of({"spec": spec, "model": ctx.cfg.model, "max_length": ctx.cfg.max_length, "pool": ids_of(records), "pref": 1,
                    **({"adapters": adapter_keys(ctx.features)} if ctx.features.adapters is not None else {})})
        if key in ctx.state["done"]:
            continue
        m = make_method(spec, ctx.features)
        assert isinstance(m, GradSimMethod)
        ctx.log(f"{m.name}: gradients + projection of {len(records)} examples")
        m.features.lora(records, m.rank, m.lora_seed, m.logra_k)
        m.prepare(records)
        ctx.mark(key)


def part_key(cfg: EvalConfig, spec: dict, td: dict, student: dict | None = None) -> str:
    """Construction key of one (seed, method) result: the evaluated rows (content hashes of every pool,
    the references, the labels), the method's definition, the decoder settings and warm-up for decoder methods,
    the student's recipe and training split for the student. Device and precision are not in it (they are
    recorded in the part): a result computed on one machine is reused on another."""
    k: dict = {"v": 1, "spec": method_spec(spec),
               "variants": {v: {"pool": ids_of(vd["pool"]), "positive": [int(x) for x in vd["positive"]],
                                "refs": ids_of(td["refs"][v])} for v, vd in td["variants"].items()}}
    if spec["kind"] in DECODER_KINDS + TRAINED_KINDS:
        k["decoder"] = {"model": cfg.model, "max_length": cfg.max_length}
    if spec["kind"] in GRADIENT_KINDS + TRAINED_KINDS:
        k["teacher"] = {**cfg.teacher, "batch_size": cfg.batch_size, "token_budget": cfg.token_budget}
    if spec["kind"] in TRAINED_KINDS:
        k["student"] = student
    return key_of(k)


def _b64(a: np.ndarray) -> str:
    import base64

    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode()


def _unb64(s: str) -> np.ndarray:
    import base64

    return np.frombuffer(base64.b64decode(s), dtype="<f4").astype(np.float64)


def read_part(path: Path, key: str) -> dict | None:
    """A committed (seed, method) result whose construction key is ``key``; None when absent or built otherwise."""
    if not path.exists():
        return None
    try:
        part = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}); delete it to recompute that result") from None
    return part if part.get("key") == key else None


def detection_metrics(agg: np.ndarray, pos: np.ndarray, ks: Sequence[int]) -> dict:
    """AUPRC (DATE-LM's computation), precision / recall at each k and the PR curve of one aggregated ranking."""
    from ..core import metrics as M

    prec, rec, _ = M.precision_recall(agg, pos)
    return {"auprc": M.auprc(agg, pos), **{f"precision@{k}": M.precision_at_k(agg, pos, k) for k in ks},
            **{f"recall@{k}": M.recall_at_k(agg, pos, k) for k in ks},
            "pr_curve": {"precision": prec.tolist(), "recall": rec.tolist()}}


class _SeedRun:
    """Everything one toxicity seed computes lazily: warmed-up contexts and the student (trained only when a
    result that needs it is not committed)."""

    def __init__(self, ctx: Context, td: dict, seed: int):
        self.ctx, self.td, self.seed = ctx, td, seed
        self.warm: dict[str, tuple[Context, dict]] = {}
        self.student: tuple[str, dict] | None = None

    def warmup_pool(self, variant: str) -> str:
        """The variant whose pool the adapters are warmed up on: ``teacher.warmup_on`` (one warm-up shared by
        every variant: the reduced protocol) or the variant itself (a checkpoint per subset, as DATE-LM)."""
        return self.ctx.cfg.teacher.get("warmup_on") or variant

    def vctx(self, variant: str) -> tuple[Context, dict]:
        w = self.warmup_pool(variant)
        if w not in self.warm:
            if w not in self.td["variants"]:
                raise UserError(f"config: teacher.warmup_on '{w}' is not a variant (variants: "
                                f"{', '.join(self.td['variants'])})")
            self.warm[w] = warmed(self.ctx, self.td["variants"][w]["pool"])
        return self.warm[w]

    def student_opts(self) -> dict:
        opts = {k: v for k, v in self.ctx.cfg.student.items() if k != "path"}
        opts.setdefault("device", self.ctx.cfg.device)
        opts.setdefault("precision", self.ctx.cfg.precision)
        return opts

    def student_def(self) -> dict:
        """What defines the student (for the part's key): a given encoder, or the recipe and training split."""
        cfg = self.ctx.cfg
        if "path" in cfg.student:
            return {"given": cfg.student["path"]}
        return {"recipe": student_recipe(self.student_opts()), **self.training_def()}

    def training_def(self) -> dict:
        """The student's training split (what exact-query scoring is fitted on), for the part's key."""
        return {"pool": ids_of(self.td["train_pool"]), "queries": ids_of(self.td["train_queries"])}

    def student_encoder(self) -> tuple[str, dict]:
        if self.student is None:
            ctx, cfg = self.ctx, self.ctx.cfg
            if "path" in cfg.student:
                self.student = cfg.student["path"], {"student": "given"}
            else:
                trp, trq = self.td["train_pool"], self.td["train_queries"]
                t0 = time.perf_counter()
                lctx, warm = warmed(ctx, trp)  # the labelling teacher is warmed up on the pool it labels
                lab = exact_teacher(lctx, trp, trq)
                t_lab = time.perf_counter() - t0
                path, info = train_student(
                    ctx, f"toxicity-s{self.seed}", trp, trq, lab,
                    {"kind": "exact", **cfg.teacher, **({"adapters": adapter_keys(lctx.features)} if warm else {})})
                info = {**info, "seconds_labels_this_run": t_lab, **({"teacher_warmup": warm} if warm else {})}
                self.student = path, info
        return self.student

    def exact_query_fit(self, spec: dict) -> dict:
        """Exact-query scoring fitted on the student's training split (issue 24; :mod:`influcoder.student.exact_query`, as
        the run's exact_query step fits it): the training rows' LoRA gradients at the adapter warmed up on the
        training pool (the student's labelling teacher), CountSketched to ``sketch_dim`` (the exact 1.24 M-dim
        gradients would need ≈ 10 GB in float64 for the basis), the basis / k / α chosen on a held-out share, the
        ridge head on the untrained encoder's features of the training pool."""
        from ..run.config import ExactQuerySection
        from ..student.encoder import InfluenceEncoder
        from ..student.exact_query import pool_features, select_and_fit

        opts = {k: v for k, v in method_spec(spec).items() if k not in ("kind", "name", "sketch_dim", "sketch_seed")}
        try:
            c = ExactQuerySection(enabled=True, **opts)
        except TypeError as e:
            raise UserError(f"config: method exact_query: {e} (options: the run's exact_query section, sketch_dim, "
                            "sketch_seed)") from None
        t = self.ctx.cfg.teacher
        rank, lseed = int(t.get("rank", 8)), int(t.get("lora_seed", 0))
        trp, trq = self.td["train_pool"], self.td["train_queries"]
        lctx, _ = warmed(self.ctx, trp)
        sketch = self._sketcher(int(spec.get("sketch_dim", 65536)), int(spec.get("sketch_seed", 0)))

        def unit(recs):
            return sketch(lctx.features.lora(recs, rank, lseed, logra_k=t.get("share_logra_k"))["unit"])

        enc = InfluenceEncoder.from_pretrained(c.encoder, max_length=c.max_length)
        t0 = time.perf_counter()
        Xt = pool_features(enc, trp, c.batch_size)
        V, head, choice = select_and_fit(Xt, unit(trp), unit(trq), c.ks, c.alphas, c.selection, self.seed)
        self.ctx.log(f"exact-query (seed {self.seed}): basis {choice['basis']}, k {choice['k']}, α {choice['alpha']:g}")
        return {"V": V, "head": head, "encoder": enc, "section": c, "unit": unit, "seconds_fit": time.perf_counter() - t0,
                "describe": {"name": method_name(spec), "kind": "exact_query", "encoder": c.encoder, "max_length": c.max_length,
                             "sketch_dim": int(spec.get("sketch_dim", 65536)), **choice}}

    @staticmethod
    def _sketcher(dim: int, seed: int):
        """Unit rows of the CountSketch of float16 gradient rows (``dim`` 0: the exact rows), 64 rows at a time."""
        from ..student.exact_query import unit_rows
        from ..teacher.projection import ProjectionConfig, make_projector

        def run(G):
            if not dim:
                return unit_rows(G)
            return unit_rows(make_projector(G.shape[1], ProjectionConfig("countsketch", dim, seed)).project_rows(G))

        return run

    def compute(self, spec: dict) -> dict:
        """Score every variant with one method: {variant: {scores (aggregated per pool row), info, ...}}."""
        name = method_name(spec)
        out = {}
        from ..core import metrics as M

        if spec["kind"] == "exact_query":
            from ..student.exact_query import coordinates, pool_features

            fit = self.exact_query_fit(spec)
            seen: dict[str, np.ndarray] = {}  # predicted coordinates by record: Hom's rows are Het's
            rate = None  # seconds per pool example (features + head), measured where rows were computed
            for variant, vd in self.td["variants"].items():
                pool, refs = vd["pool"], self.td["refs"][variant]
                keys = ids_of(pool)
                new = {k: r for k, r in zip(keys, pool) if k not in seen}
                if new:
                    t0 = time.perf_counter()
                    C_new = fit["head"].predict(pool_features(fit["encoder"], list(new.values()), fit["section"].batch_size))
                    seen.update(zip(new, C_new))
                    rate = (time.perf_counter() - t0) / len(new)
                Cp = np.stack([seen[k] for k in keys])
                t_pool = rate * len(pool)
                t0 = time.perf_counter()
                Cr = coordinates(fit["unit"](refs), fit["V"])
                t_refs = time.perf_counter() - t0
                s = Cp @ Cr.T
                cost = {"seconds_pool": t_pool, "seconds_query": t_refs, "seconds_fit": fit["seconds_fit"],
                        "seconds_per_example_featurize": t_pool / len(pool),
                        "bytes_per_example": float(Cp.shape[1] * 4)}
                out[variant] = {"scores": M.aggregate_scores(s), "info": {"method": fit["describe"], "cost": cost},
                                "seconds_per_example": t_pool / len(pool), "seconds_total_measured": None,
                                "bytes_per_example": cost["bytes_per_example"]}
            return out
        for variant, vd in self.td["variants"].items():
            pool, refs = vd["pool"], self.td["refs"][variant]
            vctx, warm = self.vctx(variant) if spec["kind"] in DECODER_KINDS else (self.ctx, {})
            sp, extra, s_info = method_spec(spec), None, {}
            if warm:
                extra = {"adapters": adapter_keys(vctx.features)}
            if spec["kind"] == "gradsim" and sp.get("proj_dim"):
                _prefetch(vctx, pool + refs, [sp])
            if spec["kind"] == "influcoder":
                path, s_info = self.student_encoder()
                sp = {**method_spec(spec), "name": name, "encoder": path}
            s, info = score_method(vctx, sp, pool, refs, extra_key=extra)
            out[variant] = {"scores": M.aggregate_scores(s), "info": {**info, **s_info},
                            "seconds_per_example": per_example_seconds(info["cost"], len(pool), len(refs)),
                            "seconds_total_measured": info["cost"].get("seconds_total"),
                            "bytes_per_example": info["cost"].get("bytes_per_example")}
            if warm:
                out[variant]["warmup"] = warm
        return out


def run_toxicity(ctx: Context) -> dict:
    """Every (seed, method) of a toxicity experiment. With ``parts_dir`` each one's per-row scores and timing go
    to ``<parts_dir>/s<seed>-<method>.json`` as soon as they are computed, and a part whose construction key
    matches is read instead of recomputed (so the experiment runs in pieces, on different days and machines);
    with ``ctx.committed_only`` nothing is computed and what is missing is reported as such."""
    from ..core.hardware import cpu_info

    cfg = ctx.cfg
    parts = Path(cfg.parts_dir) if cfg.parts_dir else None
    per_seed, missing = [], []
    for seed in ctx.seeds:
        td = toxicity_data(cfg.data, seed)
        sr = _SeedRun(ctx, td, seed)
        result = {"seed": seed, "construction": td["construction"], "types": td["types"],
                  "sizes": td.get("sizes"), "overlap_check": td["overlap_check"], "variants": {}}
        first = td["variants"][next(iter(td["variants"]))]
        result["n_pool"], result["n_positive"] = len(first["pool"]), int(first["positive"].sum())
        for variant, vd in td["variants"].items():
            result["variants"][variant] = {
                "n_pool": len(vd["pool"]), "n_positive": int(vd["positive"].sum()), "n_refs": len(td["refs"][variant]),
                "kinds": {k: vd["kind"].count(k) for k in sorted(set(vd["kind"]))}, "methods": {},
                "warmup_on": sr.warmup_pool(variant) if int(cfg.teacher.get("warmup_steps", 0)) else None}
        for spec in methods_of_seed(cfg, seed):
            name = method_name(spec)
            if ctx.only_methods and name not in ctx.only_methods:
                continue
            key = part_key(cfg, spec, td, sr.student_def() if spec["kind"] == "influcoder" else
                           sr.training_def() if spec["kind"] == "exact_query" else None)
            path = parts / f"s{seed}-{name}.json" if parts else None
            part = read_part(path, key) if path else None
            if part is None and ctx.committed_only:
                missing.append({"seed": seed, "method": name, "why": "absent" if not (path and path.exists()) else "key differs"})
                ctx.log(f"seed {seed} {name}: no committed result with this construction key")
                continue
            if part is None:
                if path is not None and path.exists():
                    ctx.log(f"seed {seed} {name}: {path} was built from another construction; recomputing")
                t0 = time.perf_counter()
                got = sr.compute(spec)
                part = {"key": key, "seed": seed, "method": name, "spec": method_spec(spec), "config": cfg.name,
                        "compute": {"device": ctx.device, "precision": ctx.precision, "cpu": cpu_info(probe=False),
                                    "seconds_wall": time.perf_counter() - t0},
                        "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                        "variants": {v: {**{k: x for k, x in g.items() if k != "scores"},
                                         "n_rows": len(g["scores"]), "scores_f32_b64": _b64(g["scores"])}
                                     for v, g in got.items()}}
                if path is not None:
                    atomic_json(path, part)
            for variant, vd in td["variants"].items():
                pv = part["variants"][variant]
                agg = _unb64(pv["scores_f32_b64"])
                if len(agg) != len(vd["pool"]):
                    raise UserError(f"{path}: {variant} has {len(agg)} scores for {len(vd['pool'])} pool rows")
                m = detection_metrics(agg, vd["positive"], cfg.ks)
                result["variants"][variant]["methods"][name] = {
                    **m, "seconds_per_example": pv["seconds_per_example"],
                    "seconds_total_measured": pv.get("seconds_total_measured"),
                    "bytes_per_example": pv.get("bytes_per_example"), "info": pv["info"],
                    "compute": {k: part["compute"].get(k) for k in ("device", "precision")},
                    **({"part": str(path)} if path else {})}
                if pv.get("warmup"):
                    result["variants"][variant]["warmup"] = pv["warmup"]
                ctx.log(f"seed {seed} {variant} {name}: AUPRC {m['auprc']:.3f}")
        per_seed.append(result)
        ctx.mark(f"toxicity-seed{seed}")
    summary = {}
    for variant in per_seed[0]["variants"]:
        rows = [{"methods": r["variants"][variant]["methods"]} for r in per_seed]
        summary[variant] = _summarise(rows, ("auprc",) + tuple(f"precision@{k}" for k in cfg.ks)
                                      + tuple(f"recall@{k}" for k in cfg.ks))
    out = {"per_seed": per_seed, "summary": summary}
    if missing:
        out["missing"] = missing
    return out


# ----------------------------------------------------------------------------- fidelity
def run_fidelity(ctx: Context) -> dict:
    found = []
    for p in ctx.cfg.fidelity.get("results", []):
        pp = Path(p)
        found.append({"path": str(pp), "exists": pp.exists(),
                      "content": json.loads(pp.read_text()) if pp.exists() and pp.suffix == ".json" else None})
    return {"linked": found}


# ----------------------------------------------------------------------------- flops for every method
# ============================================================================ entry point
def run(cfg: EvalConfig, *, progress: bool = True, log: Callable[[str], None] | None = None,
        command: str | None = None, committed_only: bool = False, only_methods: set[str] | None = None,
        only_seeds: list[int] | None = None) -> dict:
    """Run the experiment; write eval_<name>.json/.md/.png under cfg.out_dir; return the results dict.
    ``committed_only`` (toxicity with ``parts_dir``): compute nothing, tabulate the committed results;
    ``only_methods`` / ``only_seeds``: run only these methods (names) / these of the config's seeds (the cost
    sample stays the config's first seed's, so pieces run apart share it)."""
    log = log or (lambda s: None)
    ctx = Context(cfg, log, progress)
    if only_methods:
        unknown = sorted(set(only_methods) - {method_name(m) for m in cfg.methods})
        if unknown:
            raise UserError(f"methods {', '.join(unknown)} not in the config (it has: "
                            f"{', '.join(method_name(m) for m in cfg.methods)})")
    ctx.committed_only, ctx.only_methods = committed_only, set(only_methods) if only_methods else None
    if only_seeds:
        bad = [x for x in only_seeds if x not in cfg.seeds]
        if bad:
            raise UserError(f"seeds {bad} not among the config's seeds {cfg.seeds}")
        ctx.seeds = [x for x in cfg.seeds if x in only_seeds]
    t0 = time.perf_counter()
    if cfg.experiment == "ranking":
        res = run_ranking(ctx)
        data = cfg.data
        pool_all, query_all = read_with_preset(data["pool"], data.get("preset")), read_with_preset(data["query"], data.get("preset"))
        sp = ranking_split(len(pool_all), len(query_all), data["test_pool"], data["test_queries"], cfg.seeds[0])
        sample_p, sample_q = [pool_all[i] for i in sp["test_pool"]], [query_all[i] for i in sp["test_queries"]]
        stud = [m for m in res["per_seed"][0]["methods"].values() if m["info"].get("method", {}).get("encoder")]
    elif cfg.experiment == "toxicity":
        res = run_toxicity(ctx)
        td = toxicity_data(cfg.data, cfg.seeds[0])
        v0 = next(iter(td["variants"]))
        sample_p, sample_q = td["variants"][v0]["pool"], td["refs"]["Hom"]
        stud = [m for v in res["per_seed"][0]["variants"].values() for m in v["methods"].values()
                if m["info"].get("method", {}).get("encoder")]
    else:
        res = run_fidelity(ctx)
        sample_p = sample_q = []
        stud = []
    if cfg.experiment != "fidelity":
        for m in stud:  # the distilled student's weights (not the untrained encoder of semantic or exact_query)
            if m["info"]["method"].get("name", "").startswith("influcoder") and Path(m["info"]["method"]["encoder"]).exists():
                res["_student_path"] = m["info"]["method"]["encoder"]
        res["flops"] = add_flops(ctx, res, sample_p, sample_q)
        res.pop("_student_path", None)
    res["config"] = cfg.to_dict()
    res["seeds"] = ctx.seeds
    # what auto resolved to, this run; rebuilt from committed parts, each result carries its own machine instead
    # (and no run time), so the files are regenerated byte for byte by the same command
    res["compute"] = ("per result (rebuilt from the committed parts)" if committed_only
                      else {"device": ctx.device, "precision": ctx.precision})
    res["command"] = command
    if not committed_only:
        res["seconds_this_run"] = time.perf_counter() - t0
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"eval_{cfg.name}"
    if cfg.parts_dir:  # the precision-recall curves follow from the committed per-row scores: not repeated (MBs)
        import copy

        slim = copy.deepcopy(res)
        for r in slim.get("per_seed", []):
            for v in r.get("variants", {}).values():
                for m in v.get("methods", {}).values():
                    m.pop("pr_curve", None)
        atomic_json(stem.with_suffix(".json"), slim)
    else:
        atomic_json(stem.with_suffix(".json"), res)
    md = report_markdown(cfg, res, command or f"influcoder evaluate <config for {cfg.name}>")
    tmp = stem.with_suffix(".md.tmp")
    tmp.write_text(md)
    os.replace(tmp, stem.with_suffix(".md"))
    png = stem.with_suffix(".png")
    tmp_png = stem.with_name(stem.name + ".tmp.png")
    if make_figures(cfg, res, tmp_png):
        os.replace(tmp_png, png)
    ctx.mark("complete", {"seconds": time.perf_counter() - t0})
    return res
