"""Attribution at scale: FAISS latency/recall on synthetic vectors, bytes per example vs LESS, encoder vs
gradient-stocking throughput on the same real pool examples, and an int8 (dynamic quantisation) encoder path.

Everything is measured side by side in one run and ratios are printed; results go to
benchmarks/results/attribution_scale.{json,md}. Usage (the committed results record the exact command):

    python benchmarks/attribution_scale.py                       # full: 1M vectors, 240 pool examples
    python benchmarks/attribution_scale.py --n 100000 --quick    # smoke run

Parts (each can be skipped): --skip-faiss, --skip-speed, --skip-int8.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from influcoder.core.hardware import cpu_info, cpu_line  # noqa: F401  (the CPU beside every figure)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

LESS_DIM = 8192
LESS_BYTES = LESS_DIM * 2  # float16 per example, as LESS stores its projected gradients


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _busy_cpu_s() -> float:
    """Busy CPU seconds of the whole machine since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


class LoadMeter:
    """Machine load over one part of the benchmark, recorded (never typed in): the 1-minute load average at
    its start and end, and the CPU the *other* processes used meanwhile (machine busy time minus ours)."""

    def __init__(self):
        self.load0, self.busy0, self.own0, self.t0 = os.getloadavg()[0], _busy_cpu_s(), _own_cpu_s(), time.perf_counter()

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        other = (_busy_cpu_s() - self.busy0) - (_own_cpu_s() - self.own0)
        return {"load_1min_start": round(self.load0, 2), "load_1min_end": round(os.getloadavg()[0], 2),
                "other_processes_cpu_cores": round(max(0.0, other) / max(wall, 1e-9), 2), "wall_s": round(wall, 1),
                "cores": os.cpu_count()}


def load_sentence(part: dict) -> str:
    ld = part.get("load")
    if not ld:
        return "Machine load was not recorded for this part (run before the script recorded it)."
    return (f"Machine load during this part (recorded by the script): 1-minute load average {ld['load_1min_start']:.1f} at "
            f"the start, {ld['load_1min_end']:.1f} at the end, on {ld['cores']} cores; other processes used "
            f"{ld['other_processes_cpu_cores']:.2f} cores on average over its {ld['wall_s']:.0f} s.")


# ------------------------------------------------------------------------------------------- FAISS


def synthetic(n: int, dim: int, seed: int, *, latent: int = 48, clusters: int = 1000, block: int = 100_000):
    """Unit vectors with cluster structure in a low-dimensional latent space, embedded in ``dim`` dims
    (sentence embeddings have low intrinsic dimension; i.i.d. Gaussian vectors would be an unrealistic worst case)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, latent)).astype(np.float32)
    lift = (rng.standard_normal((latent, dim)) / np.sqrt(latent)).astype(np.float32)
    scales = rng.uniform(0.3, 0.8, size=clusters).astype(np.float32)

    def draw(m, r):
        c = r.integers(0, clusters, size=m)
        z = centers[c] + scales[c, None] * r.standard_normal((m, latent), dtype=np.float32)
        x = z @ lift + 0.05 * r.standard_normal((m, dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    out = np.empty((n, dim), dtype=np.float32)
    for a in range(0, n, block):
        out[a : a + block] = draw(min(block, n - a), np.random.default_rng([seed, a]))
    return out, draw


def single_query_ms(index, queries: np.ndarray, k: int, reps: int) -> float:
    ts = []
    for i in range(min(reps, len(queries))):
        q = queries[i : i + 1]
        t0 = time.perf_counter()
        index.search(q, k)
        ts.append(1000 * (time.perf_counter() - t0))
    return float(statistics.median(ts))


def batched_ms(index, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    _, I = index.search(queries, k)
    return 1000 * (time.perf_counter() - t0) / len(queries), I


def bench_faiss(args) -> dict:
    import faiss

    from influcoder.search.index import IndexConfig, build_faiss, recall_at_k, set_search_params

    k = 10
    log(f"faiss: generating {args.n:,} × {args.dim} synthetic unit vectors")
    t0 = time.perf_counter()
    x, draw = synthetic(args.n, args.dim, args.seed)
    q = draw(args.queries, np.random.default_rng(args.seed + 12345))
    log(f"  generated in {time.perf_counter() - t0:.1f} s; rss {rss_mb():.0f} MB; faiss threads {faiss.omp_get_max_threads()}")
    res: dict = {"n": args.n, "dim": args.dim, "queries": args.queries, "k": k, "threads": faiss.omp_get_max_threads(),
                 "data": "clustered synthetic: 1000 Gaussian clusters in a 48-d latent space, random linear lift to "
                         f"{args.dim}-d plus isotropic noise, L2-normalised; queries are fresh draws (not in the index)",
                 "runs": []}

    flat = build_faiss(x, IndexConfig("-", "-", kind="flat"))
    ms_b, truth = batched_ms(flat, q, k)
    ms_1 = single_query_ms(flat, q, k, args.single_reps)
    res["runs"].append({"kind": "flat (exact)", "params": {}, "build_s": 0.0, "recall@10": 1.0,
                        "single_query_ms_median": ms_1, "batched_ms_per_query": ms_b,
                        "bytes_per_vector": 4 * args.dim})
    log(f"  exact: single {ms_1:.2f} ms/query, batched {ms_b:.3f} ms/query")
    del flat
    gc.collect()

    def run(kind: str, cfg: IndexConfig, sweep: list[tuple[str, int]], build_note: str | None = None, data=x, gt=truth):
        t0 = time.perf_counter()
        idx = build_faiss(data, cfg)
        build = time.perf_counter() - t0
        tmp = Path(args.work) / "bench.index"
        faiss.write_index(idx, str(tmp))
        nbytes = tmp.stat().st_size
        tmp.unlink()
        for knob, val in sweep:
            set_search_params(idx, **{knob: val})
            ms_b, I = batched_ms(idx, q, k)
            ms_1 = single_query_ms(idx, q, k, args.single_reps)
            rec = recall_at_k(I, gt, k)
            row = {"kind": kind, "params": {knob: val, **({"nlist": idx.nlist} if hasattr(idx, "nlist") else {})},
                   "build_s": round(build, 1), "recall@10": rec, "single_query_ms_median": ms_1,
                   "batched_ms_per_query": ms_b, "bytes_per_vector": nbytes / data.shape[0]}
            if build_note:
                row["note"] = build_note
            res["runs"].append(row)
            log(f"  {kind} {knob}={val}: recall@10 {rec:.4f}, single {ms_1:.2f} ms, batched {ms_b:.3f} ms/query, build {build:.0f} s")
        del idx
        gc.collect()

    nlist = args.nlist
    run("ivf-flat", IndexConfig("-", "-", kind="ivf-flat", nlist=nlist, train_size=args.train_size, seed=args.seed),
        [("nprobe", p) for p in (8, 16, 32, 64)])
    run("ivf-pq", IndexConfig("-", "-", kind="ivf-pq", nlist=nlist, pq_m=args.dim // 8, train_size=args.train_size, seed=args.seed),
        [("nprobe", p) for p in (16, 64)])
    # HNSW: build time-boxed; if the budget runs out, evaluate on the prefix built (with its own exact truth)
    hn = args.n
    t_probe = time.perf_counter()
    probe_n = min(args.n, 50_000)
    build_faiss(x[:probe_n], IndexConfig("-", "-", kind="hnsw", hnsw_m=32, ef_construction=80))
    per_vec = (time.perf_counter() - t_probe) / probe_n
    est = per_vec * args.n * 1.3  # builds slow down a little as the graph grows
    note = None
    if est > args.hnsw_budget_s:
        hn = int(min(args.n, args.hnsw_budget_s / (per_vec * 1.3)) // 10_000 * 10_000) or probe_n
        note = (f"HNSW build on all {args.n:,} vectors was estimated at {est / 60:.0f} min on this machine "
                f"(> {args.hnsw_budget_s / 60:.0f} min budget); built and evaluated on the first {hn:,} vectors instead")
        log("  " + note)
    if hn == args.n:
        gt = truth
    else:
        gt = build_faiss(x[:hn], IndexConfig("-", "-", kind="flat")).search(q, k)[1]
    run("hnsw" if hn == args.n else f"hnsw (first {hn:,})", IndexConfig("-", "-", kind="hnsw", hnsw_m=32, ef_construction=80),
        [("ef_search", e) for e in (32, 64, 128)], note, data=x[:hn], gt=gt)
    del x
    gc.collect()
    ok = [r for r in res["runs"] if r["recall@10"] >= 0.95 and not r.get("note")]
    best = min(ok, key=lambda r: r["single_query_ms_median"]) if ok else None
    res["best_meeting_recall_0.95"] = best
    res["goal"] = "top-10 < 20 ms per query with recall@10 ≥ 0.95"
    res["goal_met"] = bool(best and best["single_query_ms_median"] < 20)
    return res


# ---------------------------------------------------------------------------------- encoder vs stocking


def make_pool(work: Path, n: int) -> Path:
    from influcoder.data.mix import mix_records, write_mix

    D = os.environ.get("INFLUCODER_DATA", str(ROOT.parent / "shared" / "data"))
    rows = mix_records([f"alpaca={D}/alpaca/alpaca_en_demo.json", f"dolly={D}/dolly/databricks-dolly-15k-safety-only.jsonl",
                        f"alpaca={D}/code_alpaca/code_alpaca_2k.json"], n=n, seed=0)
    return write_mix(rows, work / "pool.jsonl")


def make_queries(work: Path, n: int) -> Path:
    from influcoder.data.mix import mix_records, write_mix

    D = os.environ.get("INFLUCODER_DATA", str(ROOT.parent / "shared" / "data"))
    return write_mix(mix_records([f"bbh={D}/bbh/bbh/*.json"], n=n, seed=0), work / "queries.jsonl")


def bench_speed(args, work: Path) -> dict:
    from influcoder.search.embed import EmbedConfig, embed_file, open_embeddings
    from influcoder.data.records import read_records
    from influcoder.teacher.stock import StockConfig, stock
    from influcoder.teacher.store import open_store

    pool = make_pool(work, args.pool_examples)
    n_stock = min(args.stock_examples, args.pool_examples)
    res: dict = {"pool": {"file": "mix of alpaca_en_demo, dolly safety-only, code_alpaca_2k (influcoder mix, seed 0)",
                          "n_encoder": args.pool_examples, "n_stock": n_stock}, "encoder": args.encoder}
    import torch

    res["torch_threads"] = torch.get_num_threads()
    log(f"speed: encoder {args.encoder} on {args.pool_examples} pool examples")
    times = []
    for rep in range(args.encoder_reps):
        out = work / f"emb{rep}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        embed_file(EmbedConfig(args.encoder, str(pool), str(out), batch_size=32), progress=False)
        wall = time.perf_counter() - t0
        s = open_embeddings(out)
        times.append(s.manifest["stats"]["examples_per_s_last_run"])
        log(f"  encoder rep {rep}: {times[-1]:.1f} ex/s (wall incl. load {wall:.1f} s)")
    s = open_embeddings(work / "emb0")
    store_bytes = sum(p.stat().st_size for p in (s.root / "shards").iterdir())
    res["encoder_examples_per_s"] = float(statistics.median(times))
    res["encoder_examples_per_s_reps"] = times
    res["embedding_dim"] = s.dim
    res["embedding_dtype"] = s.manifest["dtype"]
    res["embedding_store_bytes_per_example"] = store_bytes / len(s)
    res["embedding_bytes_per_example"] = s.dim * np.dtype(s.manifest["dtype"]).itemsize

    # gradient stocking on the first n_stock of the same examples (file order)
    sub = work / "pool_stock.jsonl"
    sub.write_text("".join(pool.read_text().splitlines(keepends=True)[:n_stock]))
    log(f"speed: stocking {n_stock} of the same examples with {args.teacher} (max_length {args.max_length}, proj {args.proj_dim})")
    sdir = work / "stock"
    shutil.rmtree(sdir, ignore_errors=True)
    t0 = time.perf_counter()
    stock(StockConfig(model=args.teacher, data=str(sub), out=str(sdir), max_length=args.max_length, proj_dim=args.proj_dim,
                      store_dtype="float16"), progress=False)
    wall = time.perf_counter() - t0
    st = open_store(sdir)
    res["stock_examples_per_s"] = st.manifest["stats"]["examples_per_s_last_run"]
    res["stock_wall_s_incl_load"] = round(wall, 1)
    res["stock_settings"] = {"model": args.teacher, "max_length": args.max_length, "proj_dim": args.proj_dim,
                             "projection": "countsketch", "dtype": "float32", "store_dtype": "float16", "batch_size": 8}
    res["stock_store_bytes_per_example"] = sum(p.stat().st_size for p in (sdir / "shards").iterdir()) / len(st)
    res["speedup_encoder_over_stock"] = res["encoder_examples_per_s"] / res["stock_examples_per_s"]
    res["speed_goal"] = "≥ 25× over our stocking"
    res["speed_goal_met"] = res["speedup_encoder_over_stock"] >= 25
    log(f"  stocking {res['stock_examples_per_s']:.2f} ex/s; encoder/stock = {res['speedup_encoder_over_stock']:.1f}×")
    return res


def bench_bytes(speed: dict | None, dim: int) -> dict:
    emb = speed["embedding_bytes_per_example"] if speed else dim * 2
    res = {"less_bytes_per_example": LESS_BYTES, "less_definition": f"{LESS_DIM}-d float16 projected gradient",
           "embedding_bytes_per_example": emb, "ratio_less_over_embedding": LESS_BYTES / emb}
    if speed:
        res["embedding_store_bytes_per_example_on_disk"] = speed["embedding_store_bytes_per_example"]
        res["ratio_less_over_store_on_disk"] = LESS_BYTES / speed["embedding_store_bytes_per_example"]
        res["our_stock_store_bytes_per_example_on_disk"] = speed["stock_store_bytes_per_example"]
    res["goal"] = "≥ 20× smaller than LESS"
    res["goal_met"] = res["ratio_less_over_embedding"] >= 20
    return res


# --------------------------------------------------------------------------------------------- int8


def find_trained_encoder() -> Path | None:
    for cand in sorted((ROOT / "work").glob("**/influcoder_encoder.json")):
        meta = json.loads(cand.read_text())
        if meta.get("training") or meta.get("train_config") or meta.get("validation") or meta.get("teacher"):
            return cand.parent
    return None


def bench_int8(args, work: Path) -> dict:
    import warnings

    import torch
    from scipy.stats import spearmanr

    from influcoder.student.encoder import InfluenceEncoder
    from influcoder.data.records import read_records

    enc_name = args.int8_encoder or args.encoder
    trained = enc_name != args.encoder
    pool, _ = read_records(work / "pool.jsonl")
    queries, _ = read_records(make_queries(work, args.int8_queries))
    fp32 = InfluenceEncoder.from_pretrained(enc_name)

    def quantised(which: str):
        from torch.ao.quantization import per_channel_dynamic_qconfig

        enc = InfluenceEncoder.from_pretrained(enc_name)
        names = {n for n, m in enc.model.named_modules() if isinstance(m, torch.nn.Linear) and (which == "all" or "attention" in n)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            enc.model = torch.ao.quantization.quantize_dynamic(enc.model, {n: per_channel_dynamic_qconfig for n in names}, dtype=torch.qint8)
        return enc

    def timed(enc):
        enc.encode(pool[:16], batch_size=16, side="pool")  # warm-up
        ts = []
        for _ in range(args.encoder_reps):
            t0 = time.perf_counter()
            e = enc.encode(pool, batch_size=32, side="pool")
            ts.append(len(pool) / (time.perf_counter() - t0))
        return e, float(statistics.median(ts))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p32, r32 = timed(fp32)
        qe32 = fp32.encode(queries, batch_size=32, side="query")
    s32 = p32 @ qe32.T  # pool × query predicted influence
    res = {"encoder": enc_name, "trained_encoder": trained, "pool": len(pool), "queries": len(queries),
           "fp32_examples_per_s": r32, "variants": [],
           "method": "torch.ao.quantization.quantize_dynamic, qint8 per-channel weights, dynamic activations"}
    for which in ("all", "attention"):
        q8 = quantised(which)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p8, r8 = timed(q8)
            qe8 = q8.encode(queries, batch_size=32, side="query")
        s8 = p8 @ qe8.T
        per_anchor = [spearmanr(s32[:, j], s8[:, j]).statistic for j in range(s32.shape[1])]
        cos = np.sum(p32 * p8, 1)
        res["variants"].append({
            "linears": "all nn.Linear" if which == "all" else "attention nn.Linear only",
            "int8_examples_per_s": r8, "int8_speedup": r8 / r32,
            "cosine_fp32_vs_int8_median": float(np.median(cos)), "cosine_fp32_vs_int8_min": float(np.min(cos)),
            "per_anchor_spearman_int8_vs_fp32_mean": float(np.mean(per_anchor)),
            "per_anchor_spearman_int8_vs_fp32_min": float(np.min(per_anchor)),
        })
        log(f"int8 ({which}): {r8:.1f} vs fp32 {r32:.1f} ex/s ({r8 / r32:.2f}×); per-anchor Spearman vs fp32 {np.mean(per_anchor):.4f}, cosine median {np.median(cos):.4f}")
    if not trained:
        res["note"] = ("no trained encoder found under work/ (influcoder_encoder.json with training metadata): compared the "
                       "packaged minilm-l6's int8 and fp32 predictions with each other (per-query Spearman of pool rankings "
                       "and embedding cosine), not against teacher labels")
    return res


# --------------------------------------------------------------------------------------------- report


def write_md(res: dict, path: Path) -> None:
    cmds = res.get("commands") or [res["command"]]
    L = ["# Attribution at scale", "", f"Command: `{res['command']}`", "",
         f"Machine: {res['machine']}; CPU: {cpu_line(res.get('cpu'))}. " + (f"This file merges {len(cmds)} runs (the commands above, one after another; "
                                           "each part below comes from one of them). " if len(cmds) > 1 else "")
         + f"Last run started {res['started']} and took {res['seconds']:.0f} s. Ratios are within one part of one run.", ""]
    f = res.get("faiss")
    if f:
        L += [f"## FAISS: {f['n']:,} × {f['dim']}-d, {f['queries']} queries, k = 10", "", f"Data: {f['data']}.", "",
              "| index | params | recall@10 | single-query ms (median) | batched ms/query | bytes/vector | build s |",
              "|---|---|---|---|---|---|---|"]
        for r in f["runs"]:
            L.append(f"| {r['kind']} | {json.dumps(r['params'])} | {r['recall@10']:.4f} | {r['single_query_ms_median']:.2f} | "
                     f"{r['batched_ms_per_query']:.3f} | {r['bytes_per_vector']:.0f} | {r['build_s']} |")
        notes = {r["note"] for r in f["runs"] if r.get("note")}
        L += [""] + [f"Note: {n}." for n in notes] + ["", load_sentence(f)]
        b = f.get("best_meeting_recall_0.95")
        L += ["", f"Goal ({f['goal']}): {'met' if f['goal_met'] else 'NOT met'}" +
              (f" by {b['kind']} {json.dumps(b['params'])}: {b['single_query_ms_median']:.2f} ms/query single, recall@10 {b['recall@10']:.4f}." if b else "."), ""]
    b = res.get("bytes")
    if b:
        L += ["## Bytes stored per example", "",
              f"- LESS: {b['less_bytes_per_example']:,} bytes ({b['less_definition']}).",
              f"- Our embedding: {b['embedding_bytes_per_example']} bytes → **{b['ratio_less_over_embedding']:.1f}× smaller** (goal ≥ 20×: {'met' if b['goal_met'] else 'not met'})."]
        if "embedding_store_bytes_per_example_on_disk" in b:
            L += [f"- Our embedding store on disk (npy shards incl. headers, ids and rows files): {b['embedding_store_bytes_per_example_on_disk']:.0f} bytes → {b['ratio_less_over_store_on_disk']:.1f}× smaller.",
                  f"- Our own gradient store (8,192-d CountSketch, float16, same examples) on disk: {b['our_stock_store_bytes_per_example_on_disk']:.0f} bytes.",
                  "- A flat (exact) FAISS index adds 4·dim bytes per vector (float32); IVF-PQ needs ~dim/8 + 8 (see the table)."]
        L.append("")
    s = res.get("speed")
    if s:
        L += ["## Encoder scoring vs gradient stocking (same real pool examples)", "",
              f"- Encoder `{s['encoder']}` embedding {s['pool']['n_encoder']} pool examples (`influcoder embed` path, batch 32, "
              f"length-sorted): **{s['encoder_examples_per_s']:.1f} ex/s** (median of {len(s['encoder_examples_per_s_reps'])} runs: "
              f"{', '.join(f'{t:.1f}' for t in s['encoder_examples_per_s_reps'])}).",
              f"- Our stocking ({json.dumps(s['stock_settings'])}) on the first {s['pool']['n_stock']} of the same examples: "
              f"**{s['stock_examples_per_s']:.2f} ex/s** (wall incl. model load {s['stock_wall_s_incl_load']} s).",
              f"- Ratio: **{s['speedup_encoder_over_stock']:.1f}×** (goal ≥ 25×: {'met' if s['speed_goal_met'] else 'NOT met'}). "
              "Both rates exclude model loading. The LESS-style reference of the stocking benchmark was not re-run here.", "",
              load_sentence(s), ""]
        if s["pool"]["n_stock"] < s["pool"]["n_encoder"]:
            L += [f"Stocking used only {s['pool']['n_stock']} of the {s['pool']['n_encoder']} examples to keep the run short.", ""]
    q = res.get("int8")
    if q:
        L += ["## int8 encoder path", "",
              f"- {q['method']}; encoder {q['encoder']} ({'trained' if q['trained_encoder'] else 'untrained, packaged'}).",
              f"- {q['pool']} pool examples, {q['queries']} BBH queries; fp32: {q['fp32_examples_per_s']:.1f} ex/s.", "",
              "| int8 layers | ex/s | speed-up vs fp32 | cosine fp32↔int8 (median / min) | per-query Spearman of pool ranking vs fp32 (mean / min) |",
              "|---|---|---|---|---|"]
        for v in q["variants"]:
            L.append(f"| {v['linears']} | {v['int8_examples_per_s']:.1f} | {v['int8_speedup']:.2f}× | {v['cosine_fp32_vs_int8_median']:.4f} / {v['cosine_fp32_vs_int8_min']:.4f} | "
                     f"{v['per_anchor_spearman_int8_vs_fp32_mean']:.4f} / {v['per_anchor_spearman_int8_vs_fp32_min']:.4f} |")
        L.append("")
        if q.get("note"):
            L.append(f"- Note: {q['note']}.")
        sp = res.get("speed")
        if sp:
            L.append(f"- Not the speed section's measurement: this fp32 rate is `InfluenceEncoder.encode` (batch 32, file order) on "
                     f"`{q['encoder']}`; the speed section's {sp['encoder_examples_per_s']:.1f} ex/s is the `influcoder embed` path "
                     f"(batch 32, length-sorted) on `{sp['encoder']}`" + (", another encoder" if q["encoder"] != sp["encoder"] else "")
                     + ", and the two ran at different times.")
        L += ["", load_sentence(q), ""]
    path.write_text("\n".join(L))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single-reps", type=int, default=200)
    ap.add_argument("--nlist", type=int, default=4096)
    ap.add_argument("--train-size", type=int, default=100_000)
    ap.add_argument("--hnsw-budget-s", type=float, default=600)
    ap.add_argument("--pool-examples", type=int, default=240)
    ap.add_argument("--stock-examples", type=int, default=48)
    ap.add_argument("--encoder", default="minilm-l6")
    ap.add_argument("--int8-encoder", default=None, help="encoder for the int8 comparison (default: --encoder)")
    ap.add_argument("--int8-queries", type=int, default=40)
    ap.add_argument("--encoder-reps", type=int, default=3)
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--proj-dim", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(ROOT / "work" / "bench_attribution"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "attribution_scale"))
    ap.add_argument("--skip-faiss", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-int8", action="store_true")
    ap.add_argument("--quick", action="store_true", help="fewer queries/reps (smoke run)")
    ap.add_argument("--merge", action="store_true", help="update only the parts run in an existing results JSON")
    ap.add_argument("--rewrite-md", action="store_true", help="only rewrite the .md from the existing .json (no measurement)")
    args = ap.parse_args()
    if args.quick:
        args.queries, args.single_reps, args.encoder_reps = 200, 50, 1
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
           "started": time.strftime("%Y-%m-%d %H:%M:%S"),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
           "cpu": cpu_info()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.merge and out.with_suffix(".json").exists():
        old = json.loads(out.with_suffix(".json").read_text())
        cmds = old.get("commands", [old.get("command")])
        old.update({k: res[k] for k in ("started", "machine", "cpu")})
        old["commands"] = cmds + [res["command"]]
        old["command"] = " && ".join(old["commands"])
        res = old

    def save():
        res["seconds"] = time.perf_counter() - t0
        res["peak_rss_mb"] = rss_mb()
        out.with_suffix(".json").write_text(json.dumps(res, indent=1))
        write_md(res, out.with_suffix(".md"))

    if args.rewrite_md:  # the Markdown from the committed JSON, nothing measured
        write_md(json.loads(out.with_suffix(".json").read_text()), out.with_suffix(".md"))
        return
    if not args.skip_speed:
        m = LoadMeter()
        res["speed"] = bench_speed(args, work)
        res["speed"]["load"] = m.stop()
        save()
    if not (args.merge and args.skip_speed and "bytes" in res):
        res["bytes"] = bench_bytes(res.get("speed"), args.dim)
    save()
    if not args.skip_int8:
        if not (work / "pool.jsonl").exists():
            make_pool(work, args.pool_examples)
        m = LoadMeter()
        res["int8"] = bench_int8(args, work)
        res["int8"]["load"] = m.stop()
        save()
    if not args.skip_faiss:
        m = LoadMeter()
        res["faiss"] = bench_faiss(args)
        res["faiss"]["load"] = m.stop()
        save()
    log(f"done in {time.perf_counter() - t0:.0f} s → {out.with_suffix('.json')} and .md")
    print(json.dumps({k: v for k, v in res.items() if k in ("bytes",)}, indent=1))


if __name__ == "__main__":
    main()
