"""Each method's cost per example: inference seconds as measured on the real run, and FLOPs and peak memory measured
standalone on a small sample (:mod:`influcoder.eval.costs`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..data.records import Record
from .context import Context, atomic_json, ids_of, key_of, method_name, method_spec

__all__ = ["per_example_seconds", "method_flops", "add_flops"]


def per_example_seconds(cost: dict, n_pool: int, n_query: int) -> float | None:
    """Inference seconds per example: featurisation (+ projection) per example as measured when computed."""
    if "seconds_per_example_featurize" in cost and cost["seconds_per_example_featurize"] is not None:
        return cost["seconds_per_example_featurize"] + cost.get("seconds_per_example_project", 0.0)
    if "seconds_pool" in cost:
        return (cost.get("seconds_pool", 0.0) + cost.get("seconds_query", 0.0)) / max(n_pool + n_query, 1)
    return None


def method_flops(ctx: Context, spec: dict, sample_pool: list[Record], sample_queries: list[Record]) -> dict:
    """FLOPs and peak memory per example of one method, measured standalone (no cache) on a small sample."""
    from .features import DecoderFeatures
    from .baselines import make_method
    from .costs import measure

    spec = method_spec(spec)
    key = key_of({"spec": spec, "model": ctx.cfg.model, "pool": ids_of(sample_pool), "q": ids_of(sample_queries), "v": 2})
    path = ctx.work / "flops" / f"{method_name(spec)}-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    if spec["kind"] in ("random", "length", "tfidf", "bm25"):
        out = {"flops_per_example": None, "peak_rss_delta_bytes": None, "note": "no torch ops (sparse/numpy)"}
    else:
        feats = DecoderFeatures(ctx.cfg.model, max_length=ctx.cfg.max_length, batch_size=ctx.cfg.batch_size,
                                token_budget=ctx.cfg.token_budget, cache_dir=None)
        m = make_method(spec, feats)
        n = len(sample_pool) + len(sample_queries)
        if spec["kind"] == "gradsim":
            # the dense projection's FLOPs are 2·d·k per example exactly; generating the ±1 matrix for a
            # 3-example sample would take minutes on this machine, so the gradient pass is counted and the
            # projection added analytically
            r = measure(lambda: feats.lora(list(sample_pool) + list(sample_queries), m.rank, m.lora_seed))
            d = int(r["result"]["unit"].shape[1])
            flops = r["flops"] / n + (2.0 * d * m.proj_dim if m.proj_dim else 0.0)
            note = ("FlopCounterMode over the gradient pass + 2·d·k per example for the Rademacher projection"
                    if m.proj_dim else "FlopCounterMode over the gradient pass (exact gradients: no projection)")
        else:
            r = measure(lambda: m.scores(sample_pool, sample_queries))
            flops = r["flops"] / n
            note = "FlopCounterMode over featurisation + scoring of the sample"
        out = {"flops_per_example": flops, "peak_rss_delta_bytes": r["peak_rss_delta_bytes"], "n_examples": n,
               "note": note}
    atomic_json(path, out)
    return out


def add_flops(ctx: Context, result: dict, pool: list[Record], queries: list[Record]) -> dict:
    n = int(ctx.cfg.costs.get("n_examples", 8))
    if n <= 0:
        return {}
    nq = max(1, n // 3)
    sp, sq = pool[: max(1, n - nq)], queries[:nq]
    out = {}
    parts = Path(ctx.cfg.parts_dir) if ctx.cfg.parts_dir else None
    for spec in ctx.cfg.methods:
        name = method_name(spec)
        if ctx.only_methods and name not in ctx.only_methods:
            continue
        s = method_spec(spec)
        # the student's FLOPs are its architecture's: keyed without the (machine-local) path of its weights
        key = key_of({"spec": s, "model": ctx.cfg.model, "pool": ids_of(sp), "q": ids_of(sq)})
        path = parts / f"flops-{name}.json" if parts else None
        saved = json.loads(path.read_text()) if path is not None and path.exists() else None
        if saved is not None and saved.get("key") == key:
            out[name] = saved
            continue
        if ctx.committed_only:
            continue
        if spec["kind"] == "influcoder":
            s = {"kind": "influcoder", "name": name, "encoder": result.get("_student_path") or "minilm-l6"}
        ctx.log(f"FLOPs of {name} on {len(sp)}+{len(sq)} examples")
        if spec["kind"] == "exact_query":  # per pool example: its three views through the untrained encoder
            enc = method_flops(ctx, {"kind": "semantic", "encoder": s.get("encoder", "minilm-l6")}, sp, sq)
            f = enc["flops_per_example"]
            out[name] = {**enc, "flops_per_example": None if f is None else 3 * f, "key": key,
                         "note": "3 × the untrained encoder's FLOPs per example (text, response, prompt); the ridge "
                                 "head and the queries' gradients not counted"}
        else:
            out[name] = {**method_flops(ctx, s, sp, sq), "key": key}
        if path is not None:
            atomic_json(path, out[name])
    return out
