"""GPU check (issue 20): stock, train and embed on a GPU in fp32 and bf16, and on the CPU, side by side.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check      # < 5 min on one modern GPU

What it runs, for each mode in ``--modes`` (default: cuda float32, cuda bfloat16, cpu auto):
  1. stock: LoRA gradients of SmolLM2-135M-Instruct for ``--n-stock`` Alpaca / Code-Alpaca examples (pool) and
     ``--n-queries`` BBH examples (queries), ≤ 256 tokens, CountSketch 8,192 (``influcoder stock``'s code);
  2. train: the student (MiniLM-L6, the default recipe without warm-up and trees) for a fixed number of
     steps (``--epochs`` over the stocked pool: the step count is the same in every mode);
  3. embed: ``--n-embed`` rows (the Alpaca / Code-Alpaca / Dolly files, repeated with new ids up to that
     many) with the trained encoder.
On the CPU the sizes are divided by ``--cpu-divide`` (default 8) and rates are per example, so that the
script stays within minutes; every figure is a rate (examples/s or steps/s) measured in this one run.
Between modes: the same inputs, knobs and code; only device and precision change. The CPU (model, capability,
threads, bf16 probe), the GPU name and torch's CUDA version are recorded beside the figures.

Without a GPU the cuda modes are reported as skipped (never silently run on the CPU). Nothing here is a unit
test: the CPU path of every stage is tested by the suite; this script is the one GPU measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("INFLUCODER_DATA", ROOT.parent / "shared" / "data"))


def _rows(n: int) -> list[dict]:
    """``n`` prompt/response rows from the Alpaca, Code-Alpaca and Dolly files, repeated with new ids as needed."""
    from influcoder.data.records import PRESETS, iter_records

    base = []
    for preset, path in (("alpaca", DATA / "alpaca" / "alpaca_en_demo.json"),
                         ("alpaca", DATA / "code_alpaca" / "code_alpaca_2k.json"),
                         ("dolly", DATA / "dolly" / "databricks-dolly-15k-safety-only.jsonl")):
        for r in iter_records(path, PRESETS[preset], skip_invalid=True):
            base.append({"prompt": r.prompt, "response": r.response})
    return [{"id": f"r{i}", **base[i % len(base)]} for i in range(n)]


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_mode(device: str, precision: str, n_stock: int, n_queries: int, n_embed: int, epochs: int, work: Path) -> dict:
    import torch

    from influcoder.student.config import DistillConfig
    from influcoder.student.distill import train
    from influcoder.search.embed import EmbedConfig, embed_file
    from influcoder.core.hardware import resolve_precision
    from influcoder.teacher.influence import compute_influence
    from influcoder.teacher.stock import StockConfig, stock

    work.mkdir(parents=True, exist_ok=True)
    rows = _rows(max(n_stock, n_embed))
    pool = _write(work / "pool.jsonl", rows[:n_stock])
    bbh = sorted((DATA / "bbh" / "bbh").glob("*.json"))
    from influcoder.data.records import PRESETS, iter_records

    qs = []
    for f in bbh:
        for r in iter_records(f, PRESETS["bbh"], skip_invalid=True):
            qs.append({"id": f"q{len(qs)}", "prompt": r.prompt, "response": r.response})
            break
        if len(qs) >= n_queries:
            break
    queries = _write(work / "queries.jsonl", qs)
    res: dict = {"device": device, "precision_asked": precision,
                 "precision": resolve_precision(precision, device)}
    sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)
    common = dict(model="smollm2-135m-instruct", proj_dim=8192, max_length=256, dtype=precision, device=device,
                  shard_size=64, overwrite=True)
    t = time.perf_counter()
    stock(StockConfig(data=str(pool), out=str(work / "s_pool"), **common), progress=False)
    stock(StockConfig(data=str(queries), out=str(work / "s_q"), **common), progress=False)
    sync()
    dt = time.perf_counter() - t
    res["stock"] = {"examples": n_stock + len(qs), "seconds": round(dt, 2), "ex_per_s": round((n_stock + len(qs)) / dt, 3)}
    labels = compute_influence(work / "s_pool", work / "s_q", work / "labels.npy", progress=False)
    t = time.perf_counter()
    enc = train(DistillConfig(pool_data=str(pool), query_data=str(queries), labels=str(labels), out=str(work / "enc"),
                              epochs=epochs, patience=None, prior_warmup_steps=0, prior_trees=False,
                              precision=precision, device=device), progress=False)
    sync()
    dt = time.perf_counter() - t
    meta = json.loads((enc / "influcoder_encoder.json").read_text())
    res["train"] = {"steps": meta["steps"], "seconds": round(dt, 2), "train_seconds": round(meta["train_seconds"], 2),
                    "steps_per_s": round(meta["steps"] / max(meta["train_seconds"], 1e-9), 3),
                    "val_per_anchor": meta["validation"]["per_anchor_spearman"]}
    emb_data = _write(work / "embed.jsonl", rows[:n_embed])
    t = time.perf_counter()
    embed_file(EmbedConfig(encoder=str(enc), data=str(emb_data), out=str(work / "emb"), device=device,
                           precision=precision, overwrite=True, batch_size=128), progress=False)
    sync()
    dt = time.perf_counter() - t
    res["embed"] = {"examples": n_embed, "seconds": round(dt, 2), "ex_per_s": round(n_embed / dt, 1)}
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results/gpu_check")
    ap.add_argument("--work", default="work/gpu_check")
    ap.add_argument("--modes", default="cuda:float32,cuda:bfloat16,cpu:auto")
    ap.add_argument("--n-stock", type=int, default=224)
    ap.add_argument("--n-queries", type=int, default=32)
    ap.add_argument("--n-embed", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--cpu-divide", type=int, default=8)
    args = ap.parse_args(argv)
    import torch

    from influcoder.core.hardware import cpu_info, cpu_line

    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/gpu_check.py"] + (argv or sys.argv[1:]))
    info = {"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": cpu_info(),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "modes": []}
    for mode in args.modes.split(","):
        device, precision = mode.split(":")
        if device.startswith("cuda") and not torch.cuda.is_available():
            info["modes"].append({"device": device, "precision_asked": precision, "skipped": "no CUDA GPU visible"})
            continue
        d = args.cpu_divide if device == "cpu" else 1
        info["modes"].append(run_mode(device, precision, max(16, args.n_stock // d), max(12, args.n_queries // d),
                                      max(64, args.n_embed // d), args.epochs, Path(args.work) / mode.replace(":", "-")))
        print(json.dumps(info["modes"][-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    L = ["# GPU check: stock, train, embed on GPU (fp32, bf16) and CPU", "", f"Command: `{command}`  ",
         f"GPU: {info['gpu'] or 'none visible'} (torch {info['torch']}, CUDA {info['cuda']}); CPU: {cpu_line(info['cpu'])}.", "",
         "| device | precision | stock ex/s | train steps/s (steps) | embed ex/s | val per-anchor |", "|---|---|---|---|---|---|"]
    for m in info["modes"]:
        if "skipped" in m:
            L.append(f"| {m['device']} | {m['precision_asked']} | skipped: {m['skipped']} | | | |")
        else:
            L.append(f"| {m['device']} | {m['precision']} ({m['precision_asked']}) | {m['stock']['ex_per_s']} | "
                     f"{m['train']['steps_per_s']} ({m['train']['steps']}) | {m['embed']['ex_per_s']} | "
                     f"{m['train']['val_per_anchor']:.3f} |")
    out.with_suffix(".json").write_text(json.dumps(info, indent=1))
    out.with_suffix(".md").write_text("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
