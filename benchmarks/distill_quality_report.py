"""Issue 3's quality table at full size, read from experiment 1's results (no recomputation).

Experiment 1 (`influcoder evaluate configs/exp1_ranking.yaml`) already trains the `minilm-l6` student on
CountSketch-65,536 teacher labels of the training split and scores it, the untrained encoder (`semantic`),
TF-IDF, the shorter-response heuristic (`length`) and the pool-mean ceiling on the same held-out pool × held-out
query block per seed. This script lays those rows out as issue 3 asks, adds the student's own validation
curve (its inner held-out split, used to pick the checkpoint), and the stocking time / training time / peak
memory.

    python benchmarks/distill_quality_report.py \
        --eval-json benchmarks/results/eval_exp1_ranking.json \
        --stores work/full/pool work/full/bbh --time-logs work/full/stock_pool.log work/full/stock_bbh.log \
        work/full/eval_exp1_ranking.log --out benchmarks/results/distill_quality_full
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

ROWS = [("trained encoder (influcoder)", "influcoder"), ("untrained encoder (semantic)", "semantic"),
        ("TF-IDF cosine", "tfidf"), ("shorter-response heuristic", "length"),
        ("pool-mean ceiling (oracle)", "pool_mean_ceiling (oracle)")]


def peak_rss_gb(log: Path) -> float | None:
    """'Maximum resident set size (kbytes)' from a `/usr/bin/time -v` log."""
    if not log.exists():
        return None
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", log.read_text(errors="replace"))
    return int(m.group(1)) / 1024 ** 2 if m else None


def wall_s(log: Path) -> str | None:
    if not log.exists():
        return None
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", log.read_text(errors="replace"))
    return m.group(1) if m else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-json", default="benchmarks/results/eval_exp1_ranking.json")
    ap.add_argument("--stores", nargs="*", default=[])
    ap.add_argument("--time-logs", nargs="*", default=[], help="`/usr/bin/time -v` logs of the stocking and evaluation runs.")
    ap.add_argument("--out", default="benchmarks/results/distill_quality_full")
    ap.add_argument("--note", action="append", default=[], help="A line for the Notes section (repeatable).")
    a = ap.parse_args()

    r = json.loads(Path(a.eval_json).read_text())
    s = r["summary"]
    missing = [k for _, k in ROWS if k not in s]
    if missing:
        raise SystemExit(f"{a.eval_json}: no rows for {missing}; run experiment 1 with those methods")
    res: dict = {"command": "python " + " ".join(shlex.quote(x) for x in sys.argv), "eval_command": r["command"],
                 "rows": {}, "per_seed": [], "stocking": {}, "peak_memory_gb": {}}
    for label, k in ROWS:
        res["rows"][label] = {m: s[k][m] for m in ("per_anchor", "aggregated", "query_specific")}
    for ps in r["per_seed"]:
        info = ps["methods"]["influcoder"]["info"]
        enc = Path(info["method"]["encoder"])
        curve = [json.loads(x) for x in (enc / "metrics.jsonl").read_text().splitlines() if x.strip()] \
            if (enc / "metrics.jsonl").exists() else []
        summary = json.loads((enc / "influcoder_encoder.json").read_text()) if (enc / "influcoder_encoder.json").exists() else {}
        res["per_seed"].append({
            "seed": ps["seed"], "teacher_kind": (ps.get("teacher") or {}).get("kind"), "n_test_pool": ps["n_test_pool"], "n_test_queries": ps["n_test_queries"],
            "n_train_pool_labels": info.get("n_train_pool"), "n_train_queries_labels": info.get("n_train_queries"),
            "seconds_train": info.get("seconds_train"), "sketch_vs_dense": ps.get("sketch_vs_dense"),
            "val_curve": [{k: c.get(k) for k in ("epoch", "model", "per_anchor_spearman", "aggregated_spearman",
                                                  "query_specific_spearman", "loss", "partial")} for c in curve],
            "selection": summary.get("selection"), "split": summary.get("split"),
            "stopped_by_time_budget": summary.get("stopped_by_time_budget"),
            "test": {label: ps["methods"][k]["per_anchor"] for label, k in ROWS},
        })
    for p in a.stores:
        m = json.loads((Path(p) / "manifest.json").read_text())
        res["stocking"][p] = {"n": m["n"], "projection": m["projection"], "dtype": m["dtype"], "stats": m.get("stats"),
                              "max_length": m["max_length"]}
    for log in a.time_logs:
        res["peak_memory_gb"][log] = {"peak_rss_gb": peak_rss_gb(Path(log)), "wall": wall_s(Path(log))}

    t = res["rows"]
    tr, un = t["trained encoder (influcoder)"], t["untrained encoder (semantic)"]
    tf, ln = t["TF-IDF cosine"], t["shorter-response heuristic"]
    res["goals"] = {
        "trained_minus_untrained_per_anchor": tr["per_anchor"]["mean"] - un["per_anchor"]["mean"],
        "beats_untrained_by_0.2": tr["per_anchor"]["mean"] - un["per_anchor"]["mean"] >= 0.2,
        "beats_tfidf": tr["per_anchor"]["mean"] > tf["per_anchor"]["mean"],
        "beats_length_heuristic": tr["per_anchor"]["mean"] > ln["per_anchor"]["mean"],
        "query_specific_positive": tr["query_specific"]["mean"] > 0,
    }
    out = Path(a.out)

    def ms(d):
        return f"{d['mean']:+.3f} ± {d['std']:.3f}"

    seeds = [p["seed"] for p in res["per_seed"]]
    if res["stocking"]:
        st = next(iter(res["stocking"].values()))
        teacher_line = (f"cosine of the stored LoRA gradients, {st['projection']['kind']} {st['projection']['dim']}, "
                        f"{st['dtype']}, ≤ {st['max_length']} tokens")
    else:
        teacher_line = json.dumps(r["per_seed"][0].get("teacher"))
    p0 = res["per_seed"][0]
    md = ["# Distillation quality at full size (issue 3)", "",
          f"Command: `{res['command']}`", "",
          f"Numbers come from experiment 1: `{res['eval_command']}` (config `configs/exp1_ranking.yaml`).", "",
          f"Teacher ({p0['teacher_kind']}): {teacher_line}. "
          f"Per split seed ({', '.join(map(str, seeds))}): held-out {p0['n_test_pool']} pool × {p0['n_test_queries']} "
          f"queries that training never sees; the student (minilm-l6) is distilled on labels of "
          f"{p0['n_train_pool_labels']} pool × {p0['n_train_queries_labels']} queries, of which its own inner "
          f"validation split (distill `val_pool`/`val_queries`) picks the checkpoint. Mean ± std over seeds.", "",
          "| method | per-anchor Spearman | aggregated Spearman | query-specific Spearman |", "|---|---|---|---|"]
    for label, row in t.items():
        md.append(f"| {label} | {ms(row['per_anchor'])} | {ms(row['aggregated'])} | {ms(row['query_specific'])} |")
    g = res["goals"]
    md += ["", "Goal check: " + ", ".join(f"{k} = {v:.3f}" if isinstance(v, float) else f"{k} = {v}" for k, v in g.items()), ""]
    md.append("## Per seed")
    md.append("")
    for p in res["per_seed"]:
        curve = ", ".join(f"{c['epoch']}: {c['per_anchor_spearman']:+.3f}" for c in p["val_curve"] if c.get("per_anchor_spearman") is not None)
        sd = p.get("sketch_vs_dense") or {}
        md.append(f"- seed {p['seed']}: test per-anchor " + ", ".join(f"{k} {v:+.3f}" for k, v in p["test"].items()) +
                  f"; training {p['seconds_train']:.0f} s (time budget hit: {p['stopped_by_time_budget']}); "
                  f"inner-validation ({(p['split'] or {}).get('n_val_pool')} × {(p['split'] or {}).get('n_val_queries')}) "
                  f"per-anchor by epoch: {curve}; kept epoch {(p['selection'] or {}).get('best_epoch')}"
                  + (f"; sketch vs dense teacher on this test block: per-anchor {sd['per_anchor']:.3f}, aggregated {sd['aggregated']:.3f}"
                     if sd else ""))
    md += ["", "## Cost", ""]
    for p, st in res["stocking"].items():
        stt = st.get("stats") or {}
        md.append(f"- stocking `{p}`: {st['n']} examples, {st['dtype']}, ≤ {st['max_length']} tokens, "
                  f"{stt.get('seconds_last_run', float('nan')):.0f} s ({stt.get('examples_per_s_last_run', float('nan')):.2f} ex/s), "
                  f"peak RSS {stt.get('peak_rss_mb', float('nan')) / 1024:.2f} GB")
    for log, v in res["peak_memory_gb"].items():
        if v["peak_rss_gb"] is not None:
            md.append(f"- `{log}`: wall {v['wall']}, peak RSS {v['peak_rss_gb']:.2f} GB")
    md.append("")
    if a.note:
        md += ["## Notes", ""] + [f"- {n}" for n in a.note] + [""]
    res["notes"] = a.note
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(out.with_suffix(".md"))


if __name__ == "__main__":
    main()
