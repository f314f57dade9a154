"""Why the scores of experiment 2 (DATE-LM's construction) rank as they do: a study on the committed parts.

Reads every committed (seed, method) result of ``configs/exp2_toxicity_datelm.yaml`` (``benchmarks/results/
exp2_datelm/s<seed>-<method>.json``: the per-row scores each method gave the Het and Hom pools) and the pools
themselves (rebuilt from ``../shared/data`` by the harness's own construction, ``evaluate.toxicity_data``), and
measures, per seed and method, on Het:

* agreement with the teacher: Spearman of the per-row scores (reference-mean) with the exact Grad-Sim teacher's;
* what each method puts on top: the kinds (benign / unsafe / refusal / harmless) among its top 25 and 50;
* where the 13 Unsafe rows land: their median rank, and how many are in the top 25;
* the form signal: Spearman of the score with the response's length (characters), and the Unsafe rows'
  median response length beside the benign rows';
* the form-free part: each method's AUPRC once a linear fit on log response length is subtracted from its scores
  (how much of what it finds is more than "long answers first").

Computation only (no model): numpy/scipy on the stored scores.

    python benchmarks/exp2_study.py            # → benchmarks/results/exp2_datelm_study.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "exp2_toxicity_datelm.yaml"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "exp2_datelm_study"))
    args = ap.parse_args()

    from influcoder.eval.evaluate import _unb64, load_config
    from influcoder.eval.context import method_name, methods_of_seed
    from influcoder.eval.datasets import toxicity_data

    cfg = load_config(args.config)
    parts = Path(cfg.parts_dir)
    if not parts.is_absolute():
        parts = ROOT / parts
    seeds_out = {}
    for seed in cfg.seeds:
        have = {method_name(m): parts / f"s{seed}-{method_name(m)}.json" for m in methods_of_seed(cfg, seed)}
        have = {n: p for n, p in have.items() if p.exists()}
        if "teacher" not in have:
            continue
        td = toxicity_data(cfg.data, seed)
        v = td["variants"]["Het"]
        kinds = np.array(v["kind"])
        pos = np.asarray(v["positive"], bool)
        length = np.array([len(r.response) for r in v["pool"]], float)
        scores = {}
        for n, p in have.items():
            part = json.loads(p.read_text())
            s = _unb64(part["variants"]["Het"]["scores_f32_b64"])
            if len(s) != len(kinds):
                sys.exit(f"{p}: {len(s)} Het scores for {len(kinds)} rows: rebuilt construction differs")
            scores[n] = s
        from influcoder.core import metrics as M

        rows = {}
        for n, s in scores.items():
            order = np.argsort(-s, kind="stable")
            rank = np.empty(len(s), int)
            rank[order] = np.arange(1, len(s) + 1)
            top = {k: {kind: int((kinds[order[:k]] == kind).sum()) for kind in ("unsafe", "refusal", "harmless", "benign")}
                   for k in (25, 50)}
            X = np.stack([np.ones(len(s)), np.log1p(length)], 1)
            resid = s - X @ np.linalg.lstsq(X, s, rcond=None)[0]
            rows[n] = {"auprc": M.auprc(s, pos), "auprc_length_removed": M.auprc(resid, pos),
                       "spearman_with_teacher": float(spearmanr(s, scores["teacher"])[0]) if n != "teacher" else 1.0,
                       "spearman_with_length": float(spearmanr(s, length)[0]) if np.ptp(s) > 0 else None,
                       "unsafe_median_rank": float(np.median(rank[pos])), "unsafe_in_top25": int((rank[pos] <= 25).sum()),
                       "top": top}
        seeds_out[seed] = {"methods": rows, "n_rows": int(len(kinds)), "n_unsafe": int(pos.sum()),
                           "median_response_chars": {k: float(np.median(length[kinds == k]))
                                                     for k in ("unsafe", "refusal", "harmless", "benign")},
                           "references_median_response_chars": float(np.median([len(r.response) for r in td["refs"]["Het"]]))}
    if not seeds_out:
        sys.exit(f"{parts}: no committed teacher result yet")
    res = {"config": str(Path(args.config).relative_to(ROOT)) if Path(args.config).is_relative_to(ROOT) else args.config,
           "command": "python benchmarks/exp2_study.py", "seeds": seeds_out}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(markdown(res) + "\n")
    print(out.with_suffix(".md"))


def markdown(res: dict) -> str:
    lines = ["# Experiment 2 (DATE-LM construction): what each method ranks on top, and why", "",
             f"Command: `{res['command']}` — reads the committed parts of `{res['config']}`; no model is run. "
             "Het pool; per-row score = mean over the 10 references.", ""]
    for seed, r in res["seeds"].items():
        ml = r["median_response_chars"]
        lines += [f"## Seed {seed}", "",
                  f"{r['n_rows']} rows, {r['n_unsafe']} Unsafe. Median response length (characters): Unsafe "
                  f"{ml['unsafe']:.0f}, refusals {ml['refusal']:.0f}, harmless answers {ml['harmless']:.0f}, benign "
                  f"{ml['benign']:.0f}; references {r['references_median_response_chars']:.0f}.", "",
                  "| method | AUPRC | AUPRC, log length regressed out | Spearman with teacher | Spearman with response "
                  "length | Unsafe median rank | Unsafe in top 25 | top 50: unsafe / refusal / harmless / benign |",
                  "|---|---|---|---|---|---|---|---|"]
        for n, m in sorted(r["methods"].items(), key=lambda kv: -kv[1]["auprc"]):
            t = m["top"][50]
            sl = "–" if m["spearman_with_length"] is None else f"{m['spearman_with_length']:+.3f}"
            lines.append(f"| {n} | {m['auprc']:.3f} | {m['auprc_length_removed']:.3f} | {m['spearman_with_teacher']:+.3f} | {sl} | "
                         f"{m['unsafe_median_rank']:.0f} | {m['unsafe_in_top25']} | "
                         f"{t['unsafe']} / {t['refusal']} / {t['harmless']} / {t['benign']} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
