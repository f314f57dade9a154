"""int8 encoder path vs fp32: held-out per-anchor Spearman against the teacher, side by side in one run.

Loads a trained encoder (``influcoder train`` output, with its split.json) and the teacher label file
it was trained on, embeds the held-out pool and held-out queries with the fp32 encoder and with a
dynamically quantised int8 copy (torch.ao.quantization.quantize_dynamic on every nn.Linear), and
reports per-anchor / aggregated Spearman against the teacher for both, plus examples/s of each path.

    python benchmarks/encoder_int8.py --encoder work/r384/distill/enc-seed0 --labels work/r384/distill/labels.npy \\
        --pool-data work/r384/pool.jsonl --query-data work/r384/bbh.jsonl --out benchmarks/results/encoder_int8
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--pool-data", required=True)
    ap.add_argument("--query-data", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", required=True, help="output path without extension (.json and .md are written)")
    args = ap.parse_args()

    from influcoder import InfluenceEncoder
    from influcoder.teacher.labels import load_labels
    from influcoder.core.metrics import aggregated_spearman, per_anchor_spearman
    from influcoder.data.records import read_records

    split = json.loads((Path(args.encoder) / "split.json").read_text())
    labels = load_labels(args.labels)
    pool = {r.id: r for r in read_records(args.pool_data)[0]}
    queries = {r.id: r for r in read_records(args.query_data)[0]}
    vp, vq = split["val_pool_ids"], split["val_query_ids"]
    pi = {k: i for i, k in enumerate(labels.pool_ids)}
    qi = {k: i for i, k in enumerate(labels.query_ids)}
    true = np.asarray(labels.matrix)[np.ix_([pi[k] for k in vp], [qi[k] for k in vq])]
    pool_recs, query_recs = [pool[k] for k in vp], [queries[k] for k in vq]

    fp32 = InfluenceEncoder.from_pretrained(args.encoder)
    int8 = copy.deepcopy(fp32)
    int8.model = torch.ao.quantization.quantize_dynamic(int8.model, {torch.nn.Linear}, dtype=torch.qint8)
    res = {"command": "python benchmarks/encoder_int8.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
           "held_out": [len(vp), len(vq)], "torch_threads": torch.get_num_threads()}
    for name, enc in (("fp32", fp32), ("int8", int8)):
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            p = enc.encode(pool_recs, side="pool")
            q = enc.encode(query_recs, side="query")
            times.append(time.perf_counter() - t)
        pred = p @ q.T
        res[name] = {
            "per_anchor_spearman": per_anchor_spearman(pred, true),
            "aggregated_spearman": aggregated_spearman(pred, true),
            "examples_per_s_median": (len(vp) + len(vq)) / float(np.median(times)),
            "seconds_per_rep": times,
        }
    res["per_anchor_difference_int8_minus_fp32"] = res["int8"]["per_anchor_spearman"] - res["fp32"]["per_anchor_spearman"]
    res["speedup_int8"] = res["int8"]["examples_per_s_median"] / res["fp32"]["examples_per_s_median"]
    res["within_0.01"] = abs(res["per_anchor_difference_int8_minus_fp32"]) <= 0.01
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    md = [f"# int8 encoder path vs fp32 (held-out {len(vp)} pool × {len(vq)} queries vs the teacher)", "",
          f"Command: `{res['command']}`", "", "| path | per-anchor Spearman | aggregated Spearman | examples/s (median) |",
          "|---|---:|---:|---:|"]
    for name in ("fp32", "int8"):
        r = res[name]
        md.append(f"| {name} | {r['per_anchor_spearman']:.4f} | {r['aggregated_spearman']:.4f} | {r['examples_per_s_median']:.1f} |")
    md += ["", f"int8 − fp32 per-anchor: {res['per_anchor_difference_int8_minus_fp32']:+.4f} (within 0.01: {res['within_0.01']}); "
           f"int8 speed-up: {res['speedup_int8']:.2f}×. Machine shared with a test run: speeds are indicative."]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
