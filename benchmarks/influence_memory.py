"""Memory bounds, measured: peak resident memory (RSS) and throughput of

1. influence labels (``influcoder.teacher.influence.compute_influence``, blockwise) for a synthetic fp16 gradient
   store of N_pool × k against N_query × k (issue 6: 1,000,000 × 1,000, k = 8,192, goal < 4 GB), and
2. stocking (``influcoder.teacher.stock.stock``) on a small real run at two data sizes with the same shard size,
   next to the RSS of loading the model alone, to check that stocking holds model + one batch + one shard
   rather than something that grows with the data.

Every measured step runs in its own subprocess (this script with ``--child``); peak RSS is the child's own
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (which counts file-backed memory-mapped pages while mapped)
and, as a cross-check, the maximum of psutil samples taken by the parent every 0.1 s. The synthetic
stores are written with ``influcoder.teacher.store.StoreWriter`` shard by shard under ``--workdir`` and deleted at
the end unless ``--keep``. Free disk is checked before anything is written.

    python benchmarks/influence_memory.py --n-pool 1000000 --n-query 1000 --k 8192
    python benchmarks/influence_memory.py --n-pool 20000 --n-query 1000 --k 8192 --no-stock   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from influcoder.core.hardware import cpu_info, cpu_line  # noqa: F401  (the CPU beside every figure)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
GB = 1e9


# ------------------------------------------------------------------------------------------ children


def _child_write(args) -> dict:
    """Write pool and query synthetic stores with StoreWriter, one shard in memory at a time."""
    from influcoder.teacher.store import StoreWriter

    header = {  # identical compatibility keys in both stores, as two stocks of one model would have
        "model": "synthetic", "model_hash": "synthetic", "adapter_hash": None, "lora": {"rank": 8},
        "projection": {"kind": "synthetic-gaussian", "dim": args.k, "seed": args.seed}, "gradient_dim": args.k,
        "layout_hash": "synthetic", "dtype": "float32", "loss": "synthetic",
    }
    t0 = time.perf_counter()
    for name, n, seed in (("query", args.n_query, args.seed + 1), ("pool", args.n_pool, args.seed)):
        root = Path(args.workdir) / name
        w = StoreWriter(root, dict(header, data={"synthetic": name, "n": n}), [f"{name}:{i}" for i in range(n)],
                        args.shard_rows, "float16")
        rng = np.random.default_rng(seed)
        for i in w.todo():
            a, b = w.shard_rows(i)
            rows = rng.standard_normal((b - a, args.k), dtype=np.float32)
            w.write_shard(i, rows.astype(np.float16))
            del rows
        w.finish({"synthetic": True})
    return {"seconds": time.perf_counter() - t0}


def _child_influence(args) -> dict:
    from influcoder.teacher.influence import compute_influence

    t0 = time.perf_counter()
    compute_influence(Path(args.workdir) / "pool", Path(args.workdir) / "query", Path(args.workdir) / "labels.npy",
                      pool_block=args.pool_block, query_block=args.query_block, verify=False, progress=False)
    return {"seconds": time.perf_counter() - t0}


def _child_load_model(args) -> dict:
    """RSS of the stocking fixed cost: decoder + LoRA gradient machinery + projector, no data."""
    import torch

    from influcoder.teacher.gradients import LoraGradients, LoraSettings
    from influcoder.core.models import load_decoder
    from influcoder.teacher.projection import ProjectionConfig, make_projector

    t0 = time.perf_counter()
    model, tok, _ = load_decoder(args.model)
    lg = LoraGradients(model, LoraSettings(), dtype="float32")
    proj = make_projector(lg.dim, ProjectionConfig(kind="countsketch", dim=args.k, seed=0))
    del proj, tok
    torch.manual_seed(0)
    return {"seconds": time.perf_counter() - t0, "gradient_dim": lg.dim}


def _child_stock(args) -> dict:
    from influcoder.data.records import DataSpec
    from influcoder.teacher.stock import StockConfig, stock

    t0 = time.perf_counter()
    cfg = StockConfig(model=args.model, data=DataSpec(args.stock_data, preset=args.stock_preset, limit=args.stock_n),
                      out=args.stock_out, max_length=args.stock_max_length, proj_dim=args.k,
                      batch_size=args.stock_batch, shard_size=args.stock_shard, overwrite=True)
    stock(cfg, progress=False)
    return {"seconds": time.perf_counter() - t0}


def _child_prepare(args) -> dict:
    """RSS taken by stocking's up-front read + tokenisation of all records (stock._prepare), no model."""
    import gc

    import psutil

    from influcoder.core.models import resolve_decoder
    from influcoder.data.records import DataSpec
    from influcoder.teacher.stock import StockConfig, _prepare
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(resolve_decoder(args.model)))
    cfg = StockConfig(model=args.model, data=DataSpec(args.prepare_data, preset=args.prepare_preset, limit=args.stock_n, skip_invalid=True),
                      out="unused", max_length=args.stock_max_length)
    gc.collect()
    before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    records, encoded, _ = _prepare(cfg, tok)
    gc.collect()
    after = psutil.Process().memory_info().rss
    from influcoder.teacher.tokenization import pack_by_tokens

    lengths = [len(e) for e in encoded]
    packs = pack_by_tokens(lengths, cfg.batch_size, cfg.token_budget)
    return {"n": len(records), "seconds": time.perf_counter() - t0, "rss_before_bytes": before, "rss_after_bytes": after,
            "held_bytes_per_example": (after - before) / len(records), "mean_tokens": float(np.mean(lengths)),
            "max_tokens": int(max(lengths)), "batch_size": cfg.batch_size,
            "max_padded_batch_tokens": int(max(len(b) * max(lengths[i] for i in b) for b in packs))}


CHILDREN = {"prepare": _child_prepare, "write": _child_write, "influence": _child_influence, "load-model": _child_load_model, "stock": _child_stock}


# ------------------------------------------------------------------------------------------- parent


def run_child(kind: str, argv: list[str]) -> dict:
    """Run ``--child kind`` in a subprocess; return its JSON plus peak RSS (getrusage and psutil sampling)."""
    import psutil

    cmd = [sys.executable, __file__, "--child", kind] + argv
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = {"rss": 0}
    stop = threading.Event()

    def sample():
        try:
            p = psutil.Process(proc.pid)
            while not stop.is_set():
                try:
                    peak["rss"] = max(peak["rss"], p.memory_info().rss)
                except psutil.Error:
                    break
                stop.wait(0.1)
        except psutil.Error:
            pass

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"child {kind} failed with exit code {proc.returncode}")
    res = json.loads(out.strip().splitlines()[-1])
    res["peak_rss_sampled_bytes"] = peak["rss"]
    return res


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-pool", type=int, default=1_000_000)
    ap.add_argument("--n-query", type=int, default=1000)
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--shard-rows", type=int, default=16384, help="rows per synthetic store shard")
    ap.add_argument("--pool-block", type=int, default=8192, help="compute_influence pool block")
    ap.add_argument("--query-block", type=int, default=8192, help="compute_influence query block")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=str(ROOT / "work" / "influence_memory"))
    ap.add_argument("--keep", action="store_true", help="keep the synthetic stores and labels")
    ap.add_argument("--reuse", action="store_true", help="reuse finished synthetic stores in --workdir")
    ap.add_argument("--no-influence", action="store_true", help="skip the influence part")
    ap.add_argument("--no-stock", action="store_true", help="skip the stocking part")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--stock-data", default=os.path.join(os.environ.get("INFLUCODER_DATA", "../shared/data"),
                                                         "alpaca", "alpaca_en_demo.json"))
    ap.add_argument("--stock-preset", default="alpaca")
    ap.add_argument("--stock-sizes", default="16,48", help="data sizes stocked with the same shard size")
    ap.add_argument("--stock-shard", type=int, default=16)
    ap.add_argument("--stock-batch", type=int, default=8)
    ap.add_argument("--stock-max-length", type=int, default=128)
    ap.add_argument("--prepare-sizes", default="", help="also measure stocking's up-front tokenisation at these sizes")
    ap.add_argument("--prepare-data", default=os.path.join(os.environ.get("INFLUCODER_DATA", "../shared/data"),
                                                           "dolly", "databricks-dolly-15k-safety-only.jsonl"))
    ap.add_argument("--prepare-preset", default="dolly")
    ap.add_argument("--merge", action="store_true", help="update the parts run in an existing results JSON")
    ap.add_argument("--out", default=str(RESULTS / "influence_memory"), help="results path stem (.json/.md)")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--stock-n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--stock-out", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        res = CHILDREN[args.child](args)
        res["peak_rss_getrusage_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps(res))
        return

    command = "python benchmarks/" + " ".join([Path(__file__).name] + sys.argv[1:])
    report: dict = {"command": command, "host": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                 "python": platform.python_version()}, "cpu": cpu_info(),
                    "load_before": load(), "numpy": np.__version__}
    import torch

    report["torch"] = torch.__version__
    report["torch_threads"] = torch.get_num_threads()
    common = ["--n-pool", str(args.n_pool), "--n-query", str(args.n_query), "--k", str(args.k),
              "--shard-rows", str(args.shard_rows), "--pool-block", str(args.pool_block),
              "--query-block", str(args.query_block), "--seed", str(args.seed), "--workdir", args.workdir]
    work = Path(args.workdir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.merge and out.with_suffix(".json").exists():
        old = json.loads(out.with_suffix(".json").read_text())
        report = dict(old, **{k: v for k, v in report.items() if k != "command"},
                      commands=old.get("commands", [old["command"]]) + [command])

    def save():  # after each part, so a later failure keeps what was measured
        report["load_after"] = load()
        out.with_suffix(".json").write_text(json.dumps(report, indent=1))
        out.with_suffix(".md").write_text(markdown(report))

    if not args.no_influence:
        store_bytes = (args.n_pool + args.n_query) * args.k * 2
        label_bytes = args.n_pool * args.n_query * 4
        need = store_bytes + label_bytes + 1 * 2**30
        work.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(work).free
        have_stores = args.reuse and (work / "pool" / "manifest.json").exists() and \
            json.loads((work / "pool" / "manifest.json").read_text()).get("complete")
        if not have_stores and free < need:
            raise SystemExit(f"{work}: {free / GB:.1f} GB free, need {need / GB:.1f} GB; use a smaller --n-pool")
        inf: dict = {"n_pool": args.n_pool, "n_query": args.n_query, "k": args.k, "store_dtype": "float16",
                     "shard_rows": args.shard_rows, "pool_block": args.pool_block, "query_block": args.query_block,
                     "store_bytes": store_bytes, "label_bytes": label_bytes, "disk_free_before_bytes": free}
        if not have_stores:
            for sub in ("pool", "query"):
                shutil.rmtree(work / sub, ignore_errors=True)
            print(f"writing synthetic stores ({store_bytes / GB:.1f} GB) ...", flush=True)
            inf["write"] = run_child("write", common)
            inf["write"]["mb_per_s"] = store_bytes / 1e6 / inf["write"]["seconds"]
            print(json.dumps(inf["write"]), flush=True)
        print("computing influence ...", flush=True)
        inf["load_before"] = load()
        r = run_child("influence", common)
        inf["load_after"] = load()
        r["pool_rows_per_s"] = args.n_pool / r["seconds"]
        r["pairs_per_s"] = args.n_pool * args.n_query / r["seconds"]
        r["gflop_per_s"] = 2.0 * args.n_pool * args.n_query * args.k / r["seconds"] / 1e9
        r["store_gb_read_per_s"] = store_bytes / GB / r["seconds"]
        inf["influence"] = r
        # Spot check: 64 random pool rows against all queries, recomputed from the stores directly.
        from influcoder.teacher.store import open_store

        pool, query = open_store(work / "pool"), open_store(work / "query")
        labels = np.load(work / "labels.npy", mmap_mode="r")
        rng = np.random.default_rng(1)
        rows = np.sort(rng.choice(args.n_pool, size=min(64, args.n_pool), replace=False))
        q = np.asarray(query.matrix.rows(0, args.n_query), dtype=np.float64)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        p = np.stack([np.asarray(pool.matrix[int(i)], dtype=np.float64) for i in rows])
        p /= np.linalg.norm(p, axis=1, keepdims=True)
        inf["spot_check_max_abs_err"] = float(np.abs(np.asarray(labels[rows], dtype=np.float64) - p @ q.T).max())
        inf["labels_shape"] = list(labels.shape)
        del labels
        peak = max(r["peak_rss_getrusage_bytes"], r["peak_rss_sampled_bytes"])
        inf["peak_rss_gb"] = peak / GB
        inf["goal_rss_gb"] = 4.0
        inf["meets_goal"] = peak < 4 * GB
        report["influence"] = inf
        print(json.dumps(r), flush=True)
        save()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    if not args.no_stock:
        st: dict = {"model": args.model, "data": args.stock_data, "preset": args.stock_preset,
                    "shard_size": args.stock_shard, "batch_size": args.stock_batch, "max_length": args.stock_max_length,
                    "proj_dim": args.k, "store_dtype": "float32"}
        print("stocking: model only ...", flush=True)
        st["model_only"] = run_child("load-model", common + ["--model", args.model])
        st["runs"] = []
        for n in [int(x) for x in args.stock_sizes.split(",")]:
            print(f"stocking {n} examples ...", flush=True)
            argv = common + ["--model", args.model, "--stock-data", args.stock_data, "--stock-preset", args.stock_preset,
                             "--stock-n", str(n), "--stock-out", str(work / f"stock-{n}"), "--stock-shard",
                             str(args.stock_shard), "--stock-batch", str(args.stock_batch), "--stock-max-length",
                             str(args.stock_max_length)]
            r = run_child("stock", argv)
            r["n"] = n
            r["examples_per_s"] = n / r["seconds"]
            st["runs"].append(r)
            shutil.rmtree(work / f"stock-{n}", ignore_errors=True)
        base = max(st["model_only"]["peak_rss_getrusage_bytes"], st["model_only"]["peak_rss_sampled_bytes"])
        for r in st["runs"]:
            r["peak_rss_bytes"] = max(r["peak_rss_getrusage_bytes"], r["peak_rss_sampled_bytes"])
            r["over_model_only_bytes"] = r["peak_rss_bytes"] - base
        st["one_shard_bytes"] = args.stock_shard * args.k * 4
        st["one_batch_tokens_max"] = args.stock_batch * args.stock_max_length
        if len(st["runs"]) >= 2:
            a, b = st["runs"][0], st["runs"][-1]
            st["rss_growth_bytes_per_extra_example"] = (b["peak_rss_bytes"] - a["peak_rss_bytes"]) / (b["n"] - a["n"])
        report["stock"] = st
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    if args.prepare_sizes:
        pr = {"data": args.prepare_data, "preset": args.prepare_preset, "max_length": args.stock_max_length, "runs": []}
        for n in [int(x) for x in args.prepare_sizes.split(",")]:
            print(f"tokenising {n} examples as stocking does ...", flush=True)
            pr["runs"].append(run_child("prepare", common + ["--model", args.model, "--prepare-data", args.prepare_data,
                                                            "--prepare-preset", args.prepare_preset, "--stock-n", str(n),
                                                            "--stock-max-length", str(args.stock_max_length)]))
        report["stock_prepare"] = [x for x in report.get("stock_prepare", []) if x["data"] != pr["data"]] + [pr]
    save()
    print(markdown(report))


def markdown(r: dict) -> str:
    lines = ["# Memory bounds: influence labels and stocking", "", f"Command: `{r['command']}`", "",
             f"Host: {r['host']['cpus']} CPUs, {r['host']['platform']}, torch {r['torch']} ({r['torch_threads']} threads), "
             f"numpy {r['numpy']}; load average before {r['load_before']}, after {r['load_after']} (shared machine).", ""]
    if "influence" in r:
        i = r["influence"]
        x = i["influence"]
        lines += ["## Influence labels (compute_influence, blockwise)", "",
                  f"Synthetic stores: pool {i['n_pool']:,} × k {i['k']:,} and query {i['n_query']:,} × k, float16, "
                  f"{i['store_bytes'] / GB:.2f} GB on disk (shards of {i['shard_rows']:,} rows); labels float32 "
                  f"{i['label_bytes'] / GB:.2f} GB. Pool block {i['pool_block']:,}, query block {i['query_block']:,}; "
                  "checksums not re-verified (verify=False).", "",
                  "| metric | value |", "|---|---|",
                  f"| peak RSS (getrusage) | {x['peak_rss_getrusage_bytes'] / GB:.3f} GB |",
                  f"| peak RSS (psutil, 0.1 s samples) | {x['peak_rss_sampled_bytes'] / GB:.3f} GB |",
                  f"| goal | < {i['goal_rss_gb']} GB: {'met' if i['meets_goal'] else 'NOT met'} |",
                  f"| wall time | {x['seconds']:.1f} s |",
                  f"| pool rows / s | {x['pool_rows_per_s']:,.0f} |",
                  f"| (pool, query) pairs / s | {x['pairs_per_s']:,.3g} |",
                  f"| matmul GFLOP/s | {x['gflop_per_s']:.1f} |",
                  f"| store read GB/s | {x['store_gb_read_per_s']:.2f} |",
                  f"| spot check (64 rows, max abs err vs float64) | {i['spot_check_max_abs_err']:.2e} |"]
        if "write" in i:
            lines.append(f"| writing the synthetic stores | {i['write']['seconds']:.1f} s, "
                         f"{i['write']['mb_per_s']:.0f} MB/s, peak RSS {i['write']['peak_rss_getrusage_bytes'] / GB:.3f} GB |")
        lines.append("")
    if "stock" in r:
        s = r["stock"]
        mo = s["model_only"]
        lines += ["## Stocking memory", "",
                  f"`{s['model']}`, `{Path(s['data']).name}` ({s['preset']}), max_length {s['max_length']}, batch "
                  f"{s['batch_size']}, shard {s['shard_size']} rows × k {s['proj_dim']:,} float32 "
                  f"= {s['one_shard_bytes'] / 1e6:.2f} MB per shard buffer.", "",
                  "| run | examples | peak RSS (getrusage) | peak RSS (sampled) | over model-only | ex/s |", "|---|---|---|---|---|---|",
                  f"| model + LoRA + projector only | 0 | {mo['peak_rss_getrusage_bytes'] / GB:.3f} GB | "
                  f"{mo['peak_rss_sampled_bytes'] / GB:.3f} GB | – | – |"]
        for x in s["runs"]:
            lines.append(f"| stock | {x['n']} | {x['peak_rss_getrusage_bytes'] / GB:.3f} GB | {x['peak_rss_sampled_bytes'] / GB:.3f} GB "
                         f"| {x['over_model_only_bytes'] / 1e6:+.0f} MB | {x['examples_per_s']:.2f} |")
        if "rss_growth_bytes_per_extra_example" in s:
            lines += ["", f"Peak RSS growth per extra example stocked: {s['rss_growth_bytes_per_extra_example'] / 1e3:+.1f} kB "
                      "(same shard and batch size)."]
        lines.append("")
    if r.get("stock_prepare"):
        lines += ["## Stocking's up-front tokenisation (held for the whole run)", "",
                  "`stock._prepare` reads and tokenises every record before the first batch; RSS after minus before, "
                  "in one process without the model. The largest padded batch (batch size × its longest example, "
                  "as `pack_by_tokens` packs them) is what the batch activations scale with.", "",
                  "| data | examples | mean / max tokens | largest padded batch (tokens) | RSS held | per example |",
                  "|---|---|---|---|---|---|"]
        for p in r["stock_prepare"]:
            for x in p["runs"]:
                lines.append(f"| `{Path(p['data']).name}` (max_length {p['max_length']}) | {x['n']:,} | {x['mean_tokens']:.0f} / "
                             f"{x.get('max_tokens', '?')} | {x.get('max_padded_batch_tokens', '?')} | "
                             f"{(x['rss_after_bytes'] - x['rss_before_bytes']) / 1e6:.1f} MB | {x['held_bytes_per_example'] / 1e3:.1f} kB |")
        lines.append("")
    if r.get("commands"):
        lines += ["All commands merged into this file: " + "; ".join(f"`{c}`" for c in r["commands"]), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
