"""Stocking throughput, side by side in one run: influcoder vs Bergson 2.5.1 vs a LESS-style loop vs floors.

Same model (SmolLM2-135M-Instruct, LoRA r=8 on all block linears), same first N Alpaca examples
(prompt = instruction and input joined by the alpaca preset, chat template, ≤ --max-length tokens) with
identical token ids for every row (tokenised once here with influcoder's ``encode_record``; Bergson gets
the pre-tokenised ``input_ids``/``labels``). Every mode runs in its own subprocess (one after another,
all reps of a mode in its process; Bergson: one CLI process per rep) so its peak RSS is its own.
Quoted figures are medians over reps; the load average before and after is printed because the
machine is shared.

Modes
* ``ours-fp32`` / ``ours-bf16``: ``influcoder.stock.stock`` (the code behind ``influcoder stock``),
  CountSketch 8,192, written to a store. Rate = N / time of its batch loop (gradients + projection +
  store writes); the end-to-end time of the ``stock()`` call (model load, hashing, tokenising) is kept too.
* ``bergson-fp32`` / ``bergson-bf16``: ``bergson build`` CLI (separate venv) with LoRA r=8 and per-module
  projection 16, token batch 2048. Rate = N / wall time of the CLI process (includes its start-up).
  Bergson's own collection-only time is not exposed by its CLI.
* ``floor-fp32`` / ``floor-bf16``: the plain batched LoRA forward+backward of the same batches (peft's
  forward, logits at response positions only, sum of per-example mean CE, LoRA ``.grad`` accumulated, no
  per-example gradients, no projection, no storage). Also counts forward+backward FLOPs with
  ``torch.utils.flop_counter.FlopCounterMode`` (on its warm-up pass) and measures this machine's matmul rate.
* ``less-fp32``: LESS-style reference on the first --less-n examples: batch size 1, HF loss, per-example
  ``.grad`` of all LoRA parameters (A and B), dense Rademacher projection to 8,192 the way TRAK's CPU
  ``BasicProjector`` does it (matrix regenerated in 100-column blocks at every call) applied, as LESS
  does, once per 16 examples: its cost per example = one call on 16 rows / 16. With
  --less-proj-blocks B > 0 only B of the 82 identical 100-column blocks are timed and the call time is
  scaled by 82 / B (said so in the report).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------------------------- data
def prepare(args, work: Path) -> dict:
    from influcoder.models import load_decoder
    from influcoder.records import PRESETS, read_records
    from influcoder.tokenization import encode_record

    data = Path(os.environ.get("INFLUCODER_DATA", ROOT.parent / "shared" / "data")) / "alpaca" / "alpaca_en_demo.json"
    recs, _ = read_records(data, PRESETS["alpaca"], limit=args.n)
    _, tok, path = load_decoder(MODEL)
    enc = [encode_record(tok, r, args.max_length) for r in recs]
    with open(work / "records.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps({"id": r.id, "prompt": r.prompt, "response": r.response}) + "\n")
    tokens = [{"input_ids": e.ids, "labels": [-100] * e.prompt_len + e.ids[e.prompt_len:]} for e in enc]
    (work / "tokens.json").write_text(json.dumps(tokens))
    info = {"data": str(data), "n": len(enc), "tokens": sum(len(e) for e in enc),
            "response_tokens": sum(e.n_response for e in enc), "model_path": path, "pad_id": tok.pad_token_id}
    (work / "info.json").write_text(json.dumps(info))
    return info


def _encoded(work: Path, n: int | None = None):
    from influcoder.tokenization import Encoded

    rows = json.loads((work / "tokens.json").read_text())[:n]
    return [Encoded(r["input_ids"], sum(1 for x in r["labels"] if x == -100)) for r in rows]


def _batches(work: Path, args):
    from influcoder.tokenization import collate, pack_by_tokens

    enc = _encoded(work)
    pad = json.loads((work / "info.json").read_text())["pad_id"]
    return [collate([enc[i] for i in b], pad) for b in pack_by_tokens([len(e) for e in enc], args.batch_size, args.token_budget)]


# --------------------------------------------------------------------------------------------- children
def child_ours(args, work: Path, dtype: str) -> dict:
    from influcoder.stock import StockConfig, stock

    reps = []
    for rep in range(-1, args.reps):  # rep -1: untimed warm-up on the first batch's worth of examples
        out = work / f"store-ours-{dtype}"
        cfg = StockConfig(model=MODEL, data=str(work / "records.jsonl"), out=str(out), preset="prompt-response",
                          max_length=args.max_length, proj_dim=8192, dtype=dtype, batch_size=args.batch_size,
                          token_budget=args.token_budget, overwrite=True, limit=args.batch_size if rep < 0 else None)
        t = time.perf_counter()
        stock(cfg, progress=False)
        wall = time.perf_counter() - t
        if rep < 0:
            continue
        man = json.loads((out / "manifest.json").read_text())
        stats = man.get("stats", man)
        rate = stats.get("examples_per_s_last_run")
        reps.append({"loop_ex_per_s": rate, "stock_call_s": round(wall, 2), "tokens": stats.get("tokens_last_run")})
    return {"reps": reps, "ex_per_s": [r["loop_ex_per_s"] for r in reps], "peak_rss_mb": _rss_mb()}


def child_floor(args, work: Path, dtype: str) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from influcoder.gradients import LoraGradients, LoraSettings, per_example_losses
    from influcoder.models import load_decoder

    model, _, _ = load_decoder(MODEL)
    lg = LoraGradients(model, LoraSettings(), dtype=dtype, lm_head_chunk=None)
    params = [p for _, p in lg.lora_parameters()]
    batches = _batches(work, args)

    def one_pass(batches):
        for p in params:
            p.requires_grad_(True)
        for b in batches:
            with lg.autocast():
                out = lg.decoder(input_ids=b.input_ids, attention_mask=b.attention_mask,
                                 position_ids=b.position_ids, use_cache=False)
                loss = per_example_losses(out.last_hidden_state, b.labels, lg.lm_head, chunk=None).sum()
            loss.backward()
            for p in params:
                p.grad = None
        for p in params:
            p.requires_grad_(False)

    one_pass(batches[:1])  # untimed warm-up on the first batch
    times = []
    flops = None
    for rep in range(args.reps):
        t = time.perf_counter()
        if rep == 0:  # FLOPs counted on the first timed pass (the counter's dispatch overhead is ~µs per op)
            with FlopCounterMode(display=False) as fc:
                one_pass(batches)
            flops = fc.get_total_flops()
        else:
            one_pass(batches)
        times.append(time.perf_counter() - t)
    n = sum(b.input_ids.shape[0] for b in batches)
    # matmul rate of this machine at a shape typical of the model (2048 tokens × 576 → 1536)
    rates = {}
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a, w = torch.randn(2048, 576, dtype=dt), torch.randn(576, 1536, dtype=dt)
        best = float("inf")
        for _ in range(20):
            t = time.perf_counter()
            for _ in range(5):
                a @ w
            best = min(best, (time.perf_counter() - t) / 5)
        rates[name] = 2 * 2048 * 576 * 1536 / best
    return {"ex_per_s": [n / t for t in times], "seconds": times, "flops": flops, "matmul_flop_per_s": rates,
            "batches": [list(b.input_ids.shape) for b in batches], "peak_rss_mb": _rss_mb()}


def _trak_basic_projector(grads, proj_dim: int, seed: int, block_size: int = 100, max_blocks: int = 0):
    """TRAK's CPU BasicProjector: Rademacher matrix regenerated in ``block_size``-column blocks per call."""
    import torch

    out = torch.empty(grads.shape[0], proj_dim)
    gen = torch.Generator().manual_seed(seed)
    states = []
    for _ in range(0, proj_dim, block_size):
        states.append(gen.get_state())
        gen.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    m = torch.empty(grads.shape[1], block_size)
    for i, c0 in enumerate(range(0, proj_dim, block_size)):
        if max_blocks and i >= max_blocks:
            break
        c1 = min(proj_dim, c0 + block_size)
        gen.set_state(states[i])
        m.bernoulli_(0.5, generator=gen)
        m.mul_(2.0).sub_(1.0)
        out[:, c0:c1] = grads @ m[:, : c1 - c0]
    return out


def child_less(args, work: Path) -> dict:
    import torch

    from influcoder.gradients import LoraGradients, LoraSettings
    from influcoder.models import load_decoder

    model, _, _ = load_decoder(MODEL)
    lg = LoraGradients(model, LoraSettings())
    params = [p for _, p in lg.lora_parameters()]
    for p in params:
        p.requires_grad_(True)
    enc = _encoded(work, args.less_n)

    def grad_of(e):
        ids = torch.tensor([e.ids])
        labels = ids.clone()
        labels[0, : e.prompt_len] = -100
        for p in params:
            p.grad = None
        lg.causal_lm(input_ids=ids, labels=labels).loss.backward()  # HF loss: mean over response tokens
        return torch.cat([p.grad.flatten() for p in params])

    grad_of(enc[0])  # warm-up
    t = time.perf_counter()
    grads = torch.stack([grad_of(e) for e in enc])
    t_grad = time.perf_counter() - t
    batch16 = grads.repeat((16 + len(enc) - 1) // len(enc), 1)[:16]
    n_blocks = (8192 + 99) // 100
    timed = min(n_blocks, args.less_proj_blocks) if args.less_proj_blocks else n_blocks
    t = time.perf_counter()
    _trak_basic_projector(batch16, 8192, 0, max_blocks=timed)
    t_proj = (time.perf_counter() - t) * n_blocks / timed
    per_ex = t_grad / len(enc) + t_proj / 16
    return {"ex_per_s": [1.0 / per_ex], "grad_s_per_example": t_grad / len(enc), "projection_s_per_16": t_proj,
            "examples": len(enc), "gradient_dim": grads.shape[1], "projection_blocks_timed": f"{timed}/{n_blocks}",
            "peak_rss_mb": _rss_mb()}


BERGSON_DRIVER = r"""
import json, os, resource, subprocess, sys, time
from datasets import Dataset
work, precision, n_threads, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
ds_dir = os.path.join(work, "bergson-tokens.hf")
if not os.path.exists(ds_dir):
    Dataset.from_list(json.load(open(os.path.join(work, "tokens.json")))).save_to_disk(ds_dir)
info = json.load(open(os.path.join(work, "info.json")))
cmd = [os.path.join(os.path.dirname(sys.executable), "bergson"), "build", out, "--model", info["model_path"],
       "--precision", precision, "--dataset", ds_dir, "--loss_reduction", "mean", "--projection_dim", "16",
       "--token_batch_size", "2048", "--overwrite", "true", "--peft_init_kwargs",
       "r=8,lora_alpha=16,lora_dropout=0.0,target_modules=q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"]
t = time.perf_counter()
p = subprocess.run(cmd, capture_output=True, text=True)
wall = time.perf_counter() - t
print(json.dumps({"rc": p.returncode, "wall_s": wall, "cmd": cmd, "tail": (p.stdout + p.stderr)[-1500:],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0}))
"""


def child_bergson(args, work: Path, precision: str) -> dict:
    py = Path(args.bergson_python)
    if not py.exists():
        return {"error": f"{py} not found (install Bergson into a separate venv, see PEERS-MEASURED.md)"}
    reps, rss, err = [], 0.0, None
    for rep in range(args.reps):
        p = subprocess.run([str(py), "-c", BERGSON_DRIVER, str(work), precision, str(args.threads),
                            str(work / f"bergson-{precision}-{rep}")], capture_output=True, text=True, env=os.environ.copy())
        try:
            res = json.loads(p.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            return {"error": f"driver failed: {p.stderr[-1500:]}"}
        if res["rc"] != 0:
            return {"error": f"bergson build exited {res['rc']}: {res['tail']}"}
        reps.append(res["wall_s"])
        rss = max(rss, res["peak_rss_mb"])
        cmd = res["cmd"]
    return {"ex_per_s": [args.n / t for t in reps], "wall_s": reps, "peak_rss_mb": rss, "cmd": " ".join(cmd)}


def run_child(args, work: Path, mode: str) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    if mode.startswith("ours-"):
        return child_ours(args, work, {"fp32": "float32", "bf16": "bfloat16"}[mode[5:]])
    if mode.startswith("floor-"):
        return child_floor(args, work, {"fp32": "float32", "bf16": "bfloat16"}[mode[6:]])
    if mode == "less-fp32":
        return child_less(args, work)
    if mode.startswith("bergson-"):
        return child_bergson(args, work, mode[8:])
    raise SystemExit(f"unknown mode {mode}")


# --------------------------------------------------------------------------------------------- report
def _med(xs):
    return statistics.median(xs) if xs else None


def report(args, info: dict, results: dict, out: Path) -> None:
    r = {m: v for m, v in results.items()}
    med = {m: _med(v.get("ex_per_s", [])) for m, v in r.items()
           if not m.startswith("_") and "error" not in v and "skipped" not in v}
    lines = [f"# Stocking throughput (SmolLM2-135M-Instruct, LoRA r=8, {info['n']} Alpaca examples, ≤{args.max_length} tokens)", "",
             f"Command: `{' '.join(sys.argv)}`  ", f"Tokens: {info['tokens']} ({info['response_tokens']} response); torch threads: {args.threads}; "
             f"reps per mode: {args.reps} (medians quoted); ours: batch ≤ {args.batch_size}, token budget {args.token_budget}.  ",
             f"Load average at start / end: {results.get('_load', ['?', '?'])[0]} / {results.get('_load', ['?', '?'])[1]} (2 cores, shared machine).", "",
             "| mode | examples/s (median) | per-rep examples/s | peak RSS (MiB) | notes |", "|---|---:|---|---:|---|"]
    for m, v in r.items():
        if m.startswith("_"):
            continue
        if "error" in v or "skipped" in v:
            why = ("FAILED: " + v["error"]) if "error" in v else ("NOT RUN: " + v["skipped"])
            lines.append(f"| {m} | – | – | – | {why[:400].replace(chr(10), ' ')} |")
            continue
        note = ""
        if m.startswith("less"):
            note = (f"{v['examples']} examples; grad {v['grad_s_per_example']:.2f} s/ex + projection {v['projection_s_per_16']:.1f} s per 16 "
                    f"(blocks timed {v['projection_blocks_timed']}, scaled)")
        if m.startswith("bergson"):
            note = "CLI wall time incl. start-up"
        if m.startswith("ours"):
            note = "batch loop (grads+projection+store)" + (
                "; stock() call: " + ", ".join(f"{x['stock_call_s']} s" for x in v["reps"]) if v.get("reps") else "")
        if m.startswith("floor"):
            note = f"FLOPs {v['flops']:.3e}"
        lines.append(f"| {m} | {med[m]:.3f} | {', '.join(f'{x:.3f}' for x in v['ex_per_s'])} | {v['peak_rss_mb']:.0f} | {note} |")
    ratios = {}
    for prec in ("fp32", "bf16"):
        o, b, f = med.get(f"ours-{prec}"), med.get(f"bergson-{prec}"), med.get(f"floor-{prec}")
        if o and b:
            ratios[f"ours/bergson {prec} (examples/s, same run)"] = o / b
            ratios[f"ours/bergson {prec} (peak RSS, same run)"] = r[f"ours-{prec}"]["peak_rss_mb"] / r[f"bergson-{prec}"]["peak_rss_mb"]
        elif o:
            ext = BERGSON_EXTERNAL[f"bergson-{prec}"]
            ratios[f"ours/bergson {prec} (examples/s) vs EXTERNAL PEERS-MEASURED.md figure {ext['ex_per_s']}"] = o / ext["ex_per_s"]
            ratios[f"ours/bergson {prec} (peak RSS) vs EXTERNAL PEERS-MEASURED.md figure {ext['peak_rss_mb']} MiB"] = r[f"ours-{prec}"]["peak_rss_mb"] / ext["peak_rss_mb"]
        if o and f:
            ratios[f"ours overhead over plain fwd+bwd {prec} (time ratio − 1)"] = f / o - 1
    if med.get("ours-fp32") and med.get("less-fp32"):
        ratios["ours-fp32/less-fp32 (examples/s)"] = med["ours-fp32"] / med["less-fp32"]
    fl = r.get("floor-fp32")
    if fl and "flops" in fl:
        for prec, key in (("fp32", "float32"), ("bf16", "bfloat16")):
            floor_s = fl["flops"] / fl["matmul_flop_per_s"][key]
            ratios[f"FLOP floor {prec}: examples/s at the measured matmul rate"] = info["n"] / floor_s
            if med.get(f"ours-{prec}"):
                ratios[f"ours-{prec} / FLOP floor (fraction of peak)"] = med[f"ours-{prec}"] / (info["n"] / floor_s)
        lines += ["", f"Matmul rate (2048×576 @ 576×1536, best of 20): fp32 {fl['matmul_flop_per_s']['float32'] / 1e9:.1f} GFLOP/s, "
                  f"bf16 {fl['matmul_flop_per_s']['bfloat16'] / 1e9:.1f} GFLOP/s; forward+backward FLOPs of the plain LoRA pass: {fl['flops']:.3e}."]
    lines += ["", "| ratio | value |", "|---|---:|"] + [f"| {k} | {v:.3f} |" for k, v in ratios.items()]
    load = [x for x in results.get("_load", []) if isinstance(x, (int, float))]
    cores = os.cpu_count() or 1
    if load and max(load) > cores:
        lines += ["", f"**Warning:** load average up to {max(load):.1f} on {cores} cores during this run: every mode got a small, "
                  "varying share of the CPU. Absolute rates are not comparable with figures measured on a quiet machine, so "
                  "ratios against EXTERNAL (PEERS-MEASURED.md) figures say nothing about speed; same-run ratios are indicative only "
                  "(modes ran one after another, not simultaneously). Peak RSS figures are unaffected by CPU contention."]
    if "bergson-fp32" in r and "cmd" in r["bergson-fp32"]:
        lines += ["", f"Bergson command: `{r['bergson-fp32']['cmd']}`"]
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": " ".join(sys.argv), "info": info, "args": vars(args), "results": r, "medians": med, "ratios": ratios}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, out.with_suffix(".json"))
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out.with_suffix(".md"))
    print("\n".join(lines))


def _available_gb() -> float:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("inf")


# Bergson 2.5.1 on this machine kind, from ../shared/docs/PEERS-MEASURED.md (64 Alpaca, ≤256 tokens, LoRA r=8, p=16)
BERGSON_EXTERNAL = {"bergson-fp32": {"ex_per_s": 1.08, "peak_rss_mb": 11797}, "bergson-bf16": {"ex_per_s": 1.42, "peak_rss_mb": 7917}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="examples (first N of alpaca_en_demo.json)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--less-n", type=int, default=8, help="examples for the (slow) LESS-style loop")
    ap.add_argument("--less-proj-blocks", type=int, default=8, help="TRAK blocks to time (0 = all 82)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--token-budget", type=int, default=4096)
    ap.add_argument("--modes", default="ours-fp32,ours-bf16,floor-fp32,floor-bf16,bergson-fp32,bergson-bf16,less-fp32")
    ap.add_argument("--bergson-python", default="/work/bergson-venv/bin/python")
    ap.add_argument("--min-free-gb", type=float, default=4.0, help="skip a mode when less memory is available")
    ap.add_argument("--wait-memory-s", type=float, default=300, help="wait this long for memory before skipping a mode")
    ap.add_argument("--bergson-min-free-gb", type=float, default=13.0, help="Bergson peaked at 8-12 GB here")
    ap.add_argument("--workdir", default=str(ROOT / "work" / "bench_stock"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stock_throughput"))
    ap.add_argument("--reuse", action="store_true", help="reuse result-<mode>.json files already in --workdir (same settings!)")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report from result files in --workdir")
    ap.add_argument("--missing-reason", default="no result file (see the run's log)", help="text for modes without a result file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.workdir)
    if args.report_only:  # rebuild the report from result-<mode>.json files of an earlier run
        info = json.loads((work / "info.json").read_text())
        results = {"_load": json.loads((work / "load.json").read_text()) if (work / "load.json").exists() else [None, None]}
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            f = work / f"result-{mode}.json"
            results[mode] = json.loads(f.read_text()) if f.exists() else {"skipped": args.missing_reason}
        report(args, info, results, Path(args.out))
        return
    if args.child:
        res = run_child(args, work, args.child)
        print("RESULT " + json.dumps(res))
        return
    work.mkdir(parents=True, exist_ok=True)
    info = prepare(args, work)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    results = {"_load": [os.getloadavg()[0], None]}
    env = os.environ.copy() | {"OMP_NUM_THREADS": str(args.threads)}
    # each child runs all its reps (one model load); children run one after another
    for i, mode in enumerate(modes):
        saved = work / f"result-{mode}.json"
        if args.reuse and saved.exists():
            results[mode] = json.loads(saved.read_text()) | {"reused_from": str(saved)}
            print(f"{mode}: reused {saved}", flush=True)
            continue
        need = args.bergson_min_free_gb if mode.startswith("bergson") else args.min_free_gb
        deadline = time.time() + args.wait_memory_s
        while _available_gb() < need and time.time() < deadline:
            time.sleep(10)
        free = _available_gb()
        if free < need:
            results[mode] = {"skipped": f"only {free:.1f} GB of memory available on the shared machine, this mode needs ≥ {need} GB; not started (it could OOM-kill other users' jobs)"}
            print(f"{mode}: skipped ({results[mode]['skipped']})", flush=True)
            continue
        t = time.perf_counter()
        cmd = [sys.executable, __file__, "--child", mode] + [a for a in sys.argv[1:] if a != "--child"]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        results[mode] = json.loads(line[-1][7:]) if line else {"error": f"exit {p.returncode}: {p.stderr[-800:]}"}
        results[mode]["child_wall_s"] = round(time.perf_counter() - t, 1)
        if "error" not in results[mode]:
            tmp = saved.with_suffix(".tmp")
            tmp.write_text(json.dumps(results[mode]))
            os.replace(tmp, saved)
        print(f"{mode}: {json.dumps(results[mode])}", flush=True)
        results["_load"][1] = os.getloadavg()[0]
        results["_load"] = [results["_load"][0], max(results["_load"][1], *(os.getloadavg()))]
        (work / "load.json").write_text(json.dumps(results["_load"]))
        partial = dict(results) | {m: {"skipped": "pending (run interrupted before this mode)"} for m in modes[i + 1:]}
        report(args, info, partial, Path(args.out))  # rewritten after every mode: an interrupted run keeps what it measured


if __name__ == "__main__":
    main()
