"""Projection fidelity on real gradients (the paper's Table A.1 in spirit).

Exact, unprojected SmolLM2-135M-Instruct LoRA gradients (r = 8, all block linears, fresh adapter, so
the lora_B coordinates; fp32) of a real pool (Alpaca / Dolly / Code-Alpaca via ``influcoder.data.mix``) and
real BBH queries. The reference is the dense cosine influence (pool × query) of those gradients; each
CountSketch dimension k is compared with it by per-anchor and aggregated Spearman
(``influcoder.core.metrics``), mean (and min/max) over sketch seeds.

Gradients are cached under --workdir (keyed by the example ids and settings), so changing k or seeds
does not recompute them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _records(rows):
    from influcoder.data.records import Record

    return [Record(r["id"], r["prompt"], r["response"], None, i, r.get("source", "")) for i, r in enumerate(rows)]


def gradients(rows, args, work: Path) -> np.ndarray:
    from influcoder.teacher.gradients import LoraGradients, LoraSettings
    from influcoder.core.models import load_decoder
    from influcoder.teacher.tokenization import collate, encode_record, pack_by_tokens

    key = hashlib.sha256(json.dumps([[r["id"] for r in rows], args.max_length, args.dtype]).encode()).hexdigest()[:16]
    path = work / f"grads-{key}.npy"
    if path.exists():
        return np.load(path)
    model, tok, _ = load_decoder("smollm2-135m-instruct")
    lg = LoraGradients(model, LoraSettings(), dtype=args.dtype)
    enc = [encode_record(tok, r, args.max_length) for r in _records(rows)]
    out = np.zeros((len(enc), lg.dim), dtype=np.float32)
    t = time.perf_counter()
    done = 0
    for b in pack_by_tokens([len(e) for e in enc], 4, 1024):  # small batches: bounded memory on a shared machine
        out[b] = lg.flat(collate([enc[i] for i in b], tok.pad_token_id)).numpy()
        done += len(b)
        print(f"  gradients {done}/{len(enc)} ({done / (time.perf_counter() - t):.2f} ex/s)", flush=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=64)
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--dims", default="8192,16384,32768,65536")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=str(ROOT / "work" / "fidelity"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "projection_fidelity"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from influcoder.core.metrics import aggregated_spearman, per_anchor_spearman
    from influcoder.data.mix import mix_records
    from influcoder.teacher.projection import ProjectionConfig, make_projector

    D = Path(os.environ.get("INFLUCODER_DATA", ROOT.parent / "shared" / "data"))
    pool_src = [f"alpaca={D}/alpaca/alpaca_en_demo.json", f"dolly={D}/dolly/databricks-dolly-15k-safety-only.jsonl",
                f"alpaca={D}/code_alpaca/code_alpaca_2k.json"]
    query_src = [f"bbh={D}/bbh/bbh/*.json"]
    pool = mix_records(pool_src, args.pool, seed=0)
    queries = mix_records(query_src, args.queries, seed=0)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    g = gradients(pool + queries, args, work)
    t_grad = time.perf_counter() - t0
    dense = cosine(g[: len(pool)], g[len(pool):]).astype(np.float64)  # float32 dot products over d: rel. err ~1e-6
    rows = []
    for k in [int(x) for x in args.dims.split(",")]:
        pa, ag = [], []
        for seed in range(args.seeds):
            proj = make_projector(g.shape[1], ProjectionConfig("countsketch", k, seed))
            s = proj.project(torch.from_numpy(g)).double().numpy()
            sk = cosine(s[: len(pool)], s[len(pool):])
            pa.append(per_anchor_spearman(sk, dense))
            ag.append(aggregated_spearman(sk, dense))
        rows.append({"k": k, "per_anchor_mean": float(np.mean(pa)), "per_anchor_seeds": pa,
                     "aggregated_mean": float(np.mean(ag)), "aggregated_seeds": ag})
        print(f"k={k}: per-anchor {np.mean(pa):.4f} (seeds {', '.join(f'{x:.4f}' for x in pa)}), "
              f"aggregated {np.mean(ag):.4f} (seeds {', '.join(f'{x:.4f}' for x in ag)})", flush=True)
    sources = {}
    for r in pool:
        sources[r["source"]] = sources.get(r["source"], 0) + 1
    payload = {"command": " ".join(["python"] + sys.argv), "pool": len(pool), "queries": len(queries),
               "pool_sources": sources, "gradient_dim": int(g.shape[1]), "max_length": args.max_length,
               "dtype": args.dtype, "gradient_seconds": round(t_grad, 1), "results": rows,
               "pool_ids": [r["id"] for r in pool], "query_ids": [r["id"] for r in queries]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = [f"# CountSketch fidelity vs dense cosine influence (SmolLM2-135M-Instruct LoRA r=8)", "",
          f"Command: `{payload['command']}`  ",
          f"{len(pool)} pool examples ({', '.join(f'{k}: {v}' for k, v in sources.items())}) × {len(queries)} BBH queries; "
          f"unprojected gradient dimension {g.shape[1]:,} (lora_B of a fresh adapter; lora_A is exactly 0); "
          f"≤ {args.max_length} tokens, {args.dtype}. Mean over {args.seeds} sketch seeds (per-seed values in the JSON).", "",
          "| k | per-anchor Spearman (mean) | min–max over seeds | aggregated Spearman (mean) | min–max over seeds |",
          "|---:|---:|---|---:|---|"]
    for r in rows:
        md.append(f"| {r['k']:,} | {r['per_anchor_mean']:.4f} | {min(r['per_anchor_seeds']):.4f}–{max(r['per_anchor_seeds']):.4f} | "
                  f"{r['aggregated_mean']:.4f} | {min(r['aggregated_seeds']):.4f}–{max(r['aggregated_seeds']):.4f} |")
    md += ["", "Reference points (issue 2): an independent computation on 48 Alpaca × 16 BBH gave per-anchor 0.951 at 8,192 "
           "and 0.986 at 32,768 (aggregated 0.974 / 0.994); the paper's Table A.1: 0.955 / 0.970."]
    for suffix, text in ((".json", json.dumps(payload, indent=1)), (".md", "\n".join(md) + "\n")):
        tmp = out.with_suffix(suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out.with_suffix(suffix))
    print("\n".join(md))


if __name__ == "__main__":
    main()
