"""Quality of the distilled encoder on real data (issue 3), side by side with baselines, on a held-out test block.

Reuses existing gradient stores (stock them first; stocking is resumable), computes the teacher label matrix
once (reused when present), then for each split seed:
  1. carves a seeded test block (``--test-pool`` pool × ``--test-queries`` queries) out of the label matrix
     (influcoder.eval.evaluate.ranking_split: training rows whose content duplicates a test row are dropped too);
  2. trains the student on the rest only; distill holds out its own validation block (``--val-pool`` ×
     ``--val-queries``) from that rest to pick the epoch;
  3. scores on the test block, which neither training nor the epoch choice has seen:
     trained encoder, untrained encoder, TF-IDF cosine, shorter-response heuristic, pool-mean ceiling
with per-anchor, mean-aggregated and query-specific Spearman (influcoder.core.metrics). The validation block's
numbers (the ones that picked the epoch) are kept in ``epochs_log`` and are not the reported scores.

Example:
  python benchmarks/distill_quality.py --pool-data work/real/pool.jsonl --query-data work/real/bbh.jsonl \
      --pool-store work/real/pool --query-store work/real/bbh --work work/real/distill --seeds 0 \
      --epochs 3 --test-pool 200 --test-queries 100 --val-pool 100 --val-queries 30

(Result files written before the test block existed, benchmarks/results/distill_quality*.md, report the
validation block that picked the epoch: selection scores, not held-out ones.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from influcoder.core.hardware import cpu_info, cpu_line  # noqa: F401  (the CPU beside every figure)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_side(path, ids):
    from influcoder.data.records import FieldSpec, read_records

    recs, _ = read_records(path, FieldSpec())
    by = {r.id: r for r in recs}
    return [by[i] for i in ids]


def finished_prefix(store):
    """(rows, n): the gradients of the contiguous run of finished shards from row 0 of a store."""
    shards = sorted(store.manifest["shards"], key=lambda e: e["index"])
    done = []
    for i, e in enumerate(shards):
        if e["index"] != i:
            break
        done.append(e)
    if not done:
        raise SystemExit(f"{store.root}: no finished shard yet")
    return np.concatenate([np.load(store.root / "shards" / e["file"]) for e in done]), done[-1]["stop"]


def prefix_labels(pool_s, query_s, work: Path):
    """Cosine labels for the finished contiguous prefixes of stores still being stocked (same maths as
    influcoder.teacher.influence: row-normalised pool gradients @ row-normalised query gradients)."""
    from influcoder.teacher.labels import write_meta
    from influcoder.teacher.store import check_compatible

    check_compatible(pool_s.manifest, query_s.manifest)
    P, n = finished_prefix(pool_s)
    Q, m = finished_prefix(query_s)
    out = work / f"labels-prefix{n}x{m}.npy"
    if out.exists() and out.with_name(out.name[:-4] + ".meta.json").exists():
        return out, n, m

    def unit(x):
        x = np.asarray(x, dtype=np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)

    tmp = work / (out.name + ".tmp.npy")
    np.save(tmp, (unit(P) @ unit(Q).T).astype(np.float32))
    os.replace(tmp, out)
    write_meta(out, {"pool_ids": pool_s.ids[:n], "query_ids": list(query_s.ids[:m]), "teacher": pool_s.teacher(),
                     "pool_store": {"path": str(pool_s.root), "rows_used": n, "complete": bool(pool_s.manifest.get("complete"))},
                     "query_store": {"path": str(query_s.root), "rows_used": m, "complete": bool(query_s.manifest.get("complete"))}})
    return out, n, m


def baselines(pool_recs, query_recs, true):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    from influcoder.data.records import record_to_text

    pt = [record_to_text(r) for r in pool_recs]
    qt = [record_to_text(r) for r in query_recs]
    vec = TfidfVectorizer(sublinear_tf=True).fit(pt + qt)
    P, Q = normalize(vec.transform(pt)), normalize(vec.transform(qt))
    tfidf = np.asarray((P @ Q.T).todense())
    n_q = len(query_recs)
    length = np.repeat(-np.array([len(r.response) for r in pool_recs], dtype=np.float64)[:, None], n_q, axis=1)
    ceiling = np.repeat(true.mean(axis=1, keepdims=True), n_q, axis=1)
    return {"tfidf_cosine": tfidf, "shorter_response": length, "pool_mean_ceiling": ceiling}


def scores(pred, true):
    from influcoder.core import metrics

    row_constant = bool((np.ptp(pred, axis=1) == 0).all())  # same score for every query: no query-specific signal
    return {
        "per_anchor_spearman": metrics.per_anchor_spearman(pred, true),
        "aggregated_spearman": metrics.aggregated_spearman(pred, true),
        "query_specific_spearman": 0.0 if row_constant else metrics.query_specific_spearman(pred, true),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool-data", required=True)
    ap.add_argument("--query-data", required=True)
    ap.add_argument("--pool-store", required=True)
    ap.add_argument("--query-store", required=True)
    ap.add_argument("--work", required=True, help="Folder for labels.npy and the trained encoders.")
    ap.add_argument("--encoder", default="minilm-l6")
    ap.add_argument("--seeds", default="0", help="Comma-separated split/training seeds.")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--test-pool", type=int, default=200, help="Pool rows of the held-out test block (per seed).")
    ap.add_argument("--test-queries", type=int, default=100, help="Queries of the held-out test block (per seed).")
    ap.add_argument("--val-pool", type=float, default=100, help="distill's epoch-picking block, taken from the rest.")
    ap.add_argument("--val-queries", type=float, default=30)
    ap.add_argument("--tau", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--hard-fraction", type=float, default=0.0)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--precision", default="float32", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--max-train-seconds", type=float, default=None, help="Training time budget per seed.")
    ap.add_argument("--tag", default="", help="Suffix for the model folders (to keep several variants).")
    ap.add_argument("--out-json", default="benchmarks/results/distill_quality.json")
    ap.add_argument("--out-md", default="benchmarks/results/distill_quality.md")
    ap.add_argument("--allow-incomplete", action="store_true",
                    help="If a store is still being stocked, use its finished contiguous prefix of shards.")
    ap.add_argument("--stock-log", default=None, help="Optional file with 'name rc=.. seconds=..' lines from the stocking run.")
    args = ap.parse_args(argv)

    import torch

    from influcoder import InfluenceEncoder
    from influcoder.student.config import DistillConfig
    from influcoder.student.distill import train
    from influcoder.eval.features import record_key
    from influcoder.eval.datasets import ranking_split
    from influcoder.teacher.influence import compute_influence
    from influcoder.teacher.labels import load_labels, write_meta
    from influcoder.teacher.store import open_store

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    result: dict = {"command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + (argv or sys.argv[1:])),
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
                    "cpu": cpu_info(),
                    "stores": {}, "seeds": {}}
    for side, d in (("pool", args.pool_store), ("query", args.query_store)):
        s = open_store(d, allow_incomplete=args.allow_incomplete)
        result["stores"][side] = {"path": d, "n": len(s), "dim": s.dim, "teacher": s.teacher(),
                                  "stats": s.manifest.get("stats", {}), "complete": s.manifest.get("complete")}
    if args.stock_log and Path(args.stock_log).exists():
        result["stocking_log"] = Path(args.stock_log).read_text().strip().splitlines()

    pool_s = open_store(args.pool_store, allow_incomplete=args.allow_incomplete)
    query_s = open_store(args.query_store, allow_incomplete=args.allow_incomplete)
    if pool_s.manifest.get("complete") and query_s.manifest.get("complete"):
        labels_path = work / "labels.npy"
        t = time.time()
        if not (labels_path.exists() and (work / "labels.meta.json").exists()):
            compute_influence(args.pool_store, args.query_store, labels_path, progress=False)
            result["influence_seconds"] = time.time() - t
    else:
        labels_path, n_used, m_used = prefix_labels(pool_s, query_s, work)
        result["stores_incomplete"] = {"pool_rows_used": n_used, "pool_rows": len(pool_s),
                                       "query_rows_used": m_used, "query_rows": len(query_s)}
        print(f"stores incomplete: using the first {n_used} of {len(pool_s)} pool rows and {m_used} of {len(query_s)} query rows", flush=True)
    L = load_labels(labels_path)
    full = np.asarray(L.matrix, dtype=np.float64)
    result["labels"] = {"path": str(labels_path), "shape": list(full.shape), "mean": float(full.mean()),
                        "std": float(full.std()),
                        "share_of_variance_explained_by_pool_mean": float(
                            full.mean(axis=1).var() / full.var()) if full.var() > 0 else None}
    print(f"labels {full.shape}: mean {full.mean():.4f} std {full.std():.4f}", flush=True)

    pool_by_id = {r.id: r for r in load_side(args.pool_data, L.pool_ids)}
    query_by_id = {r.id: r for r in load_side(args.query_data, L.query_ids)}
    rows = []
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        out = work / f"enc-seed{seed}{args.tag}"
        sp = ranking_split(len(L.pool_ids), len(L.query_ids), args.test_pool, args.test_queries, seed,
                           pool_keys=[record_key(pool_by_id[i]) for i in L.pool_ids],
                           query_keys=[record_key(query_by_id[i]) for i in L.query_ids])
        # the student's label file holds the training rows × training columns only: the test block is not in it
        train_labels = work / f"labels-train-seed{seed}-test{args.test_pool}x{args.test_queries}.npy"
        tmp = work / (train_labels.name + ".tmp.npy")
        np.save(tmp, np.ascontiguousarray(full[np.ix_(sp["train_pool"], sp["train_queries"])], dtype=np.float32))
        os.replace(tmp, train_labels)
        write_meta(train_labels, {**L.meta, "pool_ids": [L.pool_ids[i] for i in sp["train_pool"]],
                                  "query_ids": [L.query_ids[j] for j in sp["train_queries"]],
                                  "held_out_test_block": {"seed": seed, "pool_ids": [L.pool_ids[i] for i in sp["test_pool"]],
                                                          "query_ids": [L.query_ids[j] for j in sp["test_queries"]]}})
        cfg = DistillConfig(pool_data=args.pool_data, query_data=args.query_data, labels=str(train_labels), out=str(out),
                            encoder=args.encoder, epochs=args.epochs, seed=seed, val_pool=args.val_pool,
                            val_queries=args.val_queries, tau=args.tau, lr=args.lr, hard_fraction=args.hard_fraction,
                            max_length=args.max_length, precision=args.precision,
                            max_train_seconds=args.max_train_seconds)
        t0 = time.time()
        train(cfg, progress=sys.stderr.isatty(), log=lambda s: print(s, flush=True))
        train_wall = time.time() - t0
        split = json.loads((out / "split.json").read_text())
        test_pool_ids = [L.pool_ids[i] for i in sp["test_pool"]]
        test_query_ids = [L.query_ids[j] for j in sp["test_queries"]]
        used = set(split["train_pool_ids"]) | set(split["val_pool_ids"])
        used_q = set(split["train_query_ids"]) | set(split["val_query_ids"])
        if used & set(test_pool_ids) or used_q & set(test_query_ids):
            raise SystemExit("internal error: the test block overlaps distill's training or validation split")
        true = full[np.ix_(sp["test_pool"], sp["test_queries"])]
        pool_recs = [pool_by_id[i] for i in test_pool_ids]
        query_recs = [query_by_id[i] for i in test_query_ids]
        methods = {}
        enc = InfluenceEncoder.from_pretrained(out)
        methods["trained_encoder"] = enc.encode(pool_recs, side="pool") @ enc.encode(query_recs, side="query").T
        base = InfluenceEncoder.from_pretrained(args.encoder, max_length=args.max_length)
        methods["untrained_encoder"] = base.encode(pool_recs, side="pool") @ base.encode(query_recs, side="query").T
        methods.update(baselines(pool_recs, query_recs, true))
        res = {name: scores(pred, true) for name, pred in methods.items()}
        log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        md = enc.metadata
        result["seeds"][str(seed)] = {
            "methods": res, "epochs_log": log, "best_epoch": md["selection"]["best_epoch"],
            "select_metric": md["selection"]["metric"], "train_seconds": md["train_seconds"],
            "train_wall_seconds_incl_validation": train_wall, "steps": md.get("steps"),
            "stopped_by_time_budget": md.get("stopped_by_time_budget"), "split": md["split"], "config": md["training_config"],
            "test_block": {"n_pool": len(test_pool_ids), "n_queries": len(test_query_ids),
                           "train_dropped_duplicates_of_test": sp["dropped_duplicates"],
                           "disjoint_from": "distill's training and epoch-picking validation split"},
            "peak_rss_mb_so_far": peak_rss_mb(),
        }
        for name, r in res.items():
            print(f"seed {seed} {name:18s} per-anchor {r['per_anchor_spearman']:+.3f} aggregated "
                  f"{r['aggregated_spearman']:+.3f} query-specific {r['query_specific_spearman']:+.3f}", flush=True)
            rows.append((seed, name, r))
    names = list(next(iter(result["seeds"].values()))["methods"])
    summary = {}
    for name in names:
        vals = {k: [r[k] for s, n, r in rows if n == name] for k in ("per_anchor_spearman", "aggregated_spearman", "query_specific_spearman")}
        summary[name] = {k: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v)), "n_seeds": len(v)} for k, v in vals.items()}
    result["summary"] = summary
    tr, un = summary["trained_encoder"]["per_anchor_spearman"]["mean"], summary["untrained_encoder"]["per_anchor_spearman"]["mean"]
    goal = {
        "trained_minus_untrained_per_anchor": tr - un,
        "beats_untrained_by_0.2": tr - un >= 0.2,
        "beats_tfidf": tr > summary["tfidf_cosine"]["per_anchor_spearman"]["mean"],
        "beats_length_heuristic": tr > summary["shorter_response"]["per_anchor_spearman"]["mean"],
        "query_specific_positive": summary["trained_encoder"]["query_specific_spearman"]["mean"] > 0,
    }
    result["goal"] = goal
    result["peak_rss_mb"] = peak_rss_mb()

    Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out_json + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, args.out_json)
    lines = ["# Distillation quality (issue 3)", "", f"Command: `{result['command']}`", "",
             f"Labels: {full.shape[0]} pool × {full.shape[1]} queries (teacher {result['stores']['pool']['teacher'].get('model')}, "
             f"CountSketch {result['stores']['pool']['dim']}); pool-mean explains "
             f"{result['labels']['share_of_variance_explained_by_pool_mean']:.0%} of the label variance.", "",
             f"Seeds: {', '.join(result['seeds'])}; scores on a held-out test block per seed, disjoint from training "
             "and from the validation block that picked the epoch: "
             + ", ".join(f"test {v['test_block']['n_pool']} pool × {v['test_block']['n_queries']} queries (train "
                         f"{v['split']['n_train_pool']} × {v['split']['n_train_queries']}, epoch-picking validation "
                         f"{v['split']['n_val_pool']} × {v['split']['n_val_queries']})" for v in result["seeds"].values()), "",
             "| method | per-anchor Spearman | aggregated Spearman | query-specific Spearman |", "|---|---|---|---|"]
    for name in names:
        s = summary[name]
        cell = lambda k: f"{s[k]['mean']:+.3f}" + (f" [{s[k]['min']:+.3f}, {s[k]['max']:+.3f}]" if s[k]["n_seeds"] > 1 else "")
        lines.append(f"| {name} | {cell('per_anchor_spearman')} | {cell('aggregated_spearman')} | {cell('query_specific_spearman')} |")
    lines += ["", "Goal check: " + ", ".join(f"{k} = {v if isinstance(v, bool) else round(v, 3)}" for k, v in goal.items()), ""]
    for seed, v in result["seeds"].items():
        lines.append(f"Seed {seed}: best epoch {v['best_epoch']} by {v['select_metric']}; training {v['train_seconds']:.0f} s "
                     f"({v['train_wall_seconds_incl_validation']:.0f} s with validation); per-epoch validation-block (selection, not test) per-anchor: "
                     + ", ".join(f"{r['epoch']}: {r['per_anchor_spearman']:+.3f}" for r in v["epochs_log"]))
    for side, st in result["stores"].items():
        lines.append(f"Stocking {side}: {st['n']} examples, stats {json.dumps(st['stats'])}")
    if result.get("stocking_log"):
        lines.append("Stocking wall times (incl. model load, machine shared with other jobs): " + "; ".join(result["stocking_log"]))
    lines.append(f"Peak RSS of this script (training + evaluation): {result['peak_rss_mb']:.0f} MB")
    tmp = Path(args.out_md + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, args.out_md)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
