"""Stocking, like for like in one run: ``influcoder stock`` vs ``bergson build`` vs a LESS-style loop vs a floor.

Every figure in the result file comes from this one run (no merged runs, no figures typed in). All tools
get the same inputs and knobs:

* the same records: the first ``--n`` Alpaca examples (``alpaca_en_demo.json``, alpaca preset) whose
  chat-templated prompt + response fits in ``--max-length`` tokens, so neither tool truncates; written once
  to ``records.jsonl`` (id, prompt, response) and given to both CLIs, which each tokenise it themselves;
* the same model weights (SmolLM2-135M-Instruct, the packaged GGUF dequantised once: influcoder gets its
  short name, Bergson the cached folder), LoRA r=8, alpha 16, all block linears;
* the same precision (``--dtype``), token budget per batch (``--token-budget``: ours ``--token-budget``,
  Bergson ``--token_batch_size``), most examples per batch (``--batch-size``: Bergson ``--max_batch_size``)
  and threads (``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = ``--threads`` for every process).

Reps are interleaved: rep 1 runs every mode once, in order, then rep 2 does, and so on (ABAB), so a
change of machine load hits every tool. Every mode runs in a fresh process; the model files are read once
beforehand (page cache) and Bergson gets a fresh datasets cache per run, so no run reuses another's work.

Modes
* ``ours``: ``python -m influcoder stock ...`` (the ``influcoder stock`` entry point) exactly as a user
  runs it: start-up, model load, hashing, tokenisation, gradients, CountSketch 8,192, store writes.
  End to end: wall time and peak RSS of the process tree. In-process: the store's
  ``examples_per_s_last_run`` (its batch loop: tokenising each shard, gradients, projection, writes).
* ``bergson``: ``bergson build`` 2.5.1 (its own venv; ``--bergson``) on the same records.jsonl with
  ``--prompt_column prompt --completion_column response`` (its chat-template tokenisation), per-module
  projection 16. End to end as above. In-process: the elapsed time of its "Collecting gradients" progress
  bar (parsed from its stderr).
* ``floor``: the plain batched forward + backward of the same batches (ours' packing, forward path and
  response-position chunked LM head; bf16 by autocast, as a plain loop does it: frozen weights are recast
  at every op, a cost ours avoids by caching those casts, so ours can come out faster) with every
  weight frozen: backward runs through every layer to the input embeddings (``torch.autograd.grad`` with
  respect to them) and no weight gradient is formed or accumulated, no per-example gradient, no projection,
  no storage, no FLOP counter. In-process rate of the timed pass (after one untimed warm-up batch).
* ``less``: LESS-style reference on the first ``--less-n`` examples: batch size 1, HF loss, per-example
  ``.grad`` of every LoRA parameter (A and B), flattened. Reported as three rows: the gradient pass alone;
  + TRAK's CPU ``BasicProjector`` to 8,192 (Rademacher matrix regenerated in 100-column blocks every call,
  applied once per 16 examples as LESS does; with ``--less-proj-blocks B`` only B of the 82 identical
  blocks are timed and the time scaled by 82/B, said so in the file); + influcoder's CountSketch to 8,192
  on the same rows instead (the fast projector).

Measured per run and written to the result file: wall time; peak RSS of the process tree (sum over the
process and its children, sampled every 50 ms, and the largest single process from ``wait4``); CPU
seconds of the tree (user + system, from ``wait4``); the 1-minute load average before and after; and the
CPU the *other* processes of the machine used meanwhile (busy time from ``/proc/stat`` minus ours, as
cores on average). Ratios are medians over reps of the same run.

Regenerate the committed result (the exact command is also written into the file):
  python benchmarks/stock_throughput.py --n 64 --reps 2 --less-n 4 --less-proj-blocks 4 \\
      --out benchmarks/results/stock_throughput
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
LORA_TARGETS = "q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"


# --------------------------------------------------------------------------------------------- machine load
def _proc_stat() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / tick, sum(v[:8]) / tick


def _tree_rss_mb(proc) -> float:
    import psutil

    total = 0
    try:
        for p in [proc] + proc.children(recursive=True):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total / 2**20


def measured_run(cmd: list[str], env: dict, log_path: Path) -> dict:
    """Run ``cmd`` in a fresh process; wall time, process-tree peak RSS, CPU seconds and machine load."""
    import psutil

    load0 = os.getloadavg()[0]
    busy0, _ = _proc_stat()
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        proc = psutil.Process(p.pid)
        peak = [0.0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], _tree_rss_mb(proc))
                stop.wait(0.05)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        stop.set()
        th.join()
        p.returncode = os.waitstatus_to_exitcode(status)
    busy1, _ = _proc_stat()
    ours_cpu = ru.ru_utime + ru.ru_stime
    return {"cmd": cmd, "rc": p.returncode, "wall_s": round(wall, 2), "peak_rss_tree_mb": round(peak[0], 1),
            "peak_rss_largest_process_mb": round(ru.ru_maxrss / 1024.0, 1), "cpu_s": round(ours_cpu, 2),
            "load_1min_before": round(load0, 2), "load_1min_after": round(os.getloadavg()[0], 2),
            "other_processes_cpu_cores": round(max(0.0, (busy1 - busy0) - ours_cpu) / wall, 2)}


# --------------------------------------------------------------------------------------------- data
def prepare(args, work: Path) -> dict:
    """The first --n Alpaca examples that fit --max-length untruncated; records.jsonl + tokens.json."""
    from influcoder.core.models import load_decoder
    from influcoder.data.records import PRESETS, read_records
    from influcoder.teacher.tokenization import encode_record

    data = Path(os.environ.get("INFLUCODER_DATA", ROOT.parent / "shared" / "data")) / "alpaca" / "alpaca_en_demo.json"
    recs, _ = read_records(data, PRESETS["alpaca"])
    _, tok, path = load_decoder(MODEL)
    chosen, enc, skipped = [], [], 0
    for r in recs:
        e = encode_record(tok, r, 10**6)
        if len(e.ids) > args.max_length:
            skipped += 1
            continue
        chosen.append(r)
        enc.append(e)
        if len(chosen) == args.n:
            break
    if len(chosen) < args.n:
        raise SystemExit(f"only {len(chosen)} examples of {data} fit {args.max_length} tokens")
    with open(work / "records.jsonl", "w") as f:
        for r in chosen:
            f.write(json.dumps({"id": r.id, "prompt": r.prompt, "response": r.response}) + "\n")
    (work / "tokens.json").write_text(json.dumps([{"ids": e.ids, "prompt_len": e.prompt_len} for e in enc]))
    info = {"data": str(data), "n": len(enc), "skipped_longer_than_max_length": skipped,
            "tokens": sum(len(e.ids) for e in enc), "response_tokens": sum(len(e.ids) - e.prompt_len for e in enc),
            "model_path": path, "pad_id": tok.pad_token_id}
    (work / "info.json").write_text(json.dumps(info))
    for f in Path(path).iterdir():  # read the weights once so no tool's first run pays the disk alone
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass
    return info


def _encoded(work: Path, n: int | None = None):
    from influcoder.teacher.tokenization import Encoded

    return [Encoded(r["ids"], r["prompt_len"]) for r in json.loads((work / "tokens.json").read_text())[:n]]


def _batches(work: Path, args):
    from influcoder.teacher.tokenization import collate, pack_by_tokens

    enc = _encoded(work)
    pad = json.loads((work / "info.json").read_text())["pad_id"]
    return [collate([enc[i] for i in b], pad) for b in pack_by_tokens([len(e) for e in enc], args.batch_size, args.token_budget)]


# --------------------------------------------------------------------------------------------- CLI commands
def ours_cmd(args, work: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "influcoder", "stock", "--model", MODEL, "--data", str(work / "records.jsonl"),
            "--out", str(out), "--preset", "prompt-response", "--max-length", str(args.max_length),
            "--proj-dim", "8192", "--dtype", args.dtype, "--batch-size", str(args.batch_size),
            "--token-budget", str(args.token_budget), "--overwrite", "--quiet"]


def bergson_cmd(args, work: Path, out: Path, model_path: str) -> list[str]:
    prec = {"float32": "fp32", "bfloat16": "bf16"}[args.dtype]
    return [args.bergson, "build", str(out), "--model", model_path, "--precision", prec,
            "--dataset", str(work / "records.jsonl"), "--prompt_column", "prompt", "--completion_column", "response",
            "--loss_reduction", "mean", "--projection_dim", "16", "--token_batch_size", str(args.token_budget),
            "--max_batch_size", str(args.batch_size), "--overwrite", "true",
            "--peft_init_kwargs", f"r=8,lora_alpha=16,lora_dropout=0.0,target_modules={LORA_TARGETS}"]


_TQDM = re.compile(r"Collecting gradients:\s*100%\|[^|]*\|\s*(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<")


def bergson_collect_seconds(log_text: str) -> float | None:
    """Elapsed time of Bergson's final 'Collecting gradients' progress-bar update (its collection loop)."""
    hits = _TQDM.findall(log_text.replace("\r", "\n"))
    if not hits:
        return None
    h, m, s = hits[-1][2:]
    return int(h or 0) * 3600 + int(m) * 60 + int(s)


# --------------------------------------------------------------------------------------------- in-process children
def child_floor(args, work: Path) -> dict:
    import torch

    from influcoder.teacher.gradients import LoraGradients, LoraSettings, _right_padded, per_example_losses
    from influcoder.core.models import load_decoder

    model, _, _ = load_decoder(MODEL)
    lg = LoraGradients(model, LoraSettings(), dtype=args.dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    batches = _batches(work, args)

    def one_pass(bs):
        for b in bs:
            x = lg.embed(b.input_ids).detach().requires_grad_(True)  # gradients flow to activations only
            mask = None if _right_padded(b.attention_mask) else b.attention_mask  # as ours: causal mask suffices
            with lg.autocast():
                out = lg.decoder(inputs_embeds=x, attention_mask=mask, position_ids=b.position_ids, use_cache=False)
                loss = per_example_losses(out.last_hidden_state, b.labels, lg.lm_head, chunk=lg.lm_head_chunk).sum()
            (g,) = torch.autograd.grad(loss, x)
            del g

    one_pass(batches[:1])  # untimed warm-up on the first batch
    t = time.perf_counter()
    one_pass(batches)
    s = time.perf_counter() - t
    n = sum(b.input_ids.shape[0] for b in batches)
    return {"loop_s": s, "loop_ex_per_s": n / s, "batches": [list(b.input_ids.shape) for b in batches]}


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

    from influcoder.teacher.gradients import LoraGradients, LoraSettings
    from influcoder.core.models import load_decoder
    from influcoder.teacher.projection import ProjectionConfig, make_projector

    model, _, _ = load_decoder(MODEL)
    lg = LoraGradients(model, LoraSettings(), dtype=args.dtype)
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
        with lg.autocast():
            loss = lg.causal_lm(input_ids=ids, labels=labels).loss  # HF loss: mean over response tokens
        loss.backward()
        return torch.cat([p.grad.float().flatten() for p in params])

    grad_of(enc[0])  # warm-up
    t = time.perf_counter()
    grads = torch.stack([grad_of(e) for e in enc])
    t_grad = time.perf_counter() - t
    batch16 = grads.repeat((16 + len(enc) - 1) // len(enc), 1)[:16]
    n_blocks = (8192 + 99) // 100
    timed = min(n_blocks, args.less_proj_blocks) if args.less_proj_blocks else n_blocks
    t = time.perf_counter()
    _trak_basic_projector(batch16, 8192, 0, max_blocks=timed)
    t_dense = (time.perf_counter() - t) * n_blocks / timed
    cs = make_projector(grads.shape[1], ProjectionConfig("countsketch", 8192, 0))
    cs.project(batch16[:1])  # warm-up (builds its hash tables)
    t = time.perf_counter()
    cs.project(batch16)
    t_cs = time.perf_counter() - t
    return {"examples": len(enc), "gradient_dim": int(grads.shape[1]), "grad_s_per_example": t_grad / len(enc),
            "dense_projection_s_per_example": t_dense / 16, "countsketch_projection_s_per_example": t_cs / 16,
            "dense_projection_blocks_timed": f"{timed}/{n_blocks}"}


def run_child(args, work: Path, mode: str) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    if mode == "floor":
        return child_floor(args, work)
    if mode == "less":
        return child_less(args, work)
    raise SystemExit(f"unknown child mode {mode}")


# --------------------------------------------------------------------------------------------- one rep of one mode
def run_mode(args, work: Path, info: dict, mode: str, rep: int, env: dict) -> dict:
    log = work / f"log-{mode}-{rep}.txt"
    if mode == "ours":
        out = work / f"store-ours-{rep}"
        r = measured_run(ours_cmd(args, work, out), env, log)
        if r["rc"] == 0:
            stats = json.loads((out / "manifest.json").read_text()).get("stats", {})
            r["loop_ex_per_s"] = stats.get("examples_per_s_last_run")
            r["tokens"] = stats.get("tokens_last_run")
    elif mode == "bergson":
        if not Path(args.bergson).exists():
            return {"error": f"{args.bergson} not found (install Bergson into its own venv, see --help)"}
        out = work / f"bergson-{rep}"
        # a fresh datasets cache per run: Bergson converts records.jsonl to Arrow as on a first run, the way
        # influcoder reads its input afresh every run
        cache = work / f"hf-datasets-cache-{rep}"
        shutil.rmtree(cache, ignore_errors=True)
        r = measured_run(bergson_cmd(args, work, out, info["model_path"]), env | {"HF_DATASETS_CACHE": str(cache)}, log)
        if r["rc"] == 0:
            text = log.read_text(errors="replace")
            sec = bergson_collect_seconds(text)
            m = re.findall(r"Total processed: (\d+)", text)
            r["tokens"] = int(m[-1]) if m else None  # as Bergson's log reports it
            r["collect_s"] = sec
            r["loop_ex_per_s"] = info["n"] / sec if sec else None
    else:
        cmd = [sys.executable, __file__, "--child", mode] + list(args.raw_argv)
        r = measured_run(cmd, env, log)
        if r["rc"] == 0:
            line = [x for x in log.read_text().splitlines() if x.startswith("RESULT ")]
            r.update(json.loads(line[-1][7:]))
    if r.get("rc", 0) != 0:
        r["error"] = f"exit {r['rc']}: " + log.read_text(errors="replace")[-1200:]
    r["rep"] = rep
    return r


# --------------------------------------------------------------------------------------------- report
def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarise(info: dict, runs: dict) -> tuple[dict, dict]:
    """Per-mode medians over reps and the ratios between modes (all from this run)."""
    ok = {m: [r for r in rs if "error" not in r] for m, rs in runs.items()}
    med = {}
    for m, rs in ok.items():
        if not rs:
            continue
        d = {k: _med([r.get(k) for r in rs]) for k in ("wall_s", "peak_rss_tree_mb", "peak_rss_largest_process_mb",
                                                       "cpu_s", "loop_ex_per_s", "other_processes_cpu_cores")}
        if m == "less":
            for k in ("grad_s_per_example", "dense_projection_s_per_example", "countsketch_projection_s_per_example"):
                d[k] = _med([r[k] for r in rs])
        med[m] = d
    ratios = {}
    o, b = med.get("ours"), med.get("bergson")
    if o and b:
        ratios["end to end: bergson wall / ours wall (speed-up)"] = b["wall_s"] / o["wall_s"]
        ratios["end to end: ours CPU s / bergson CPU s"] = o["cpu_s"] / b["cpu_s"]
        ratios["end to end: ours peak RSS / bergson peak RSS (process tree)"] = o["peak_rss_tree_mb"] / b["peak_rss_tree_mb"]
        if o["loop_ex_per_s"] and b["loop_ex_per_s"]:
            ratios["in-process: ours loop / bergson collection (examples/s)"] = o["loop_ex_per_s"] / b["loop_ex_per_s"]
    f = med.get("floor")
    if o and f and o["loop_ex_per_s"]:
        ratios["in-process: ours time / floor time − 1 (overhead over frozen-weight fwd+bwd)"] = f["loop_ex_per_s"] / o["loop_ex_per_s"] - 1
    le = med.get("less")
    if o and le and o["loop_ex_per_s"]:
        ours_s = 1.0 / o["loop_ex_per_s"]
        ratios["in-process: LESS-style gradient pass alone / ours (time per example)"] = le["grad_s_per_example"] / ours_s
        ratios["in-process: LESS-style + CountSketch / ours (time per example)"] = (
            le["grad_s_per_example"] + le["countsketch_projection_s_per_example"]) / ours_s
        ratios["in-process: LESS-style + TRAK dense projector / ours (time per example)"] = (
            le["grad_s_per_example"] + le["dense_projection_s_per_example"]) / ours_s
    return med, ratios


def report(args, info: dict, runs: dict, command: str, out: Path) -> None:
    med, ratios = summarise(info, runs)
    loads = [x for rs in runs.values() for r in rs for x in (r.get("load_1min_before"), r.get("load_1min_after")) if x is not None]
    others = [r["other_processes_cpu_cores"] for rs in runs.values() for r in rs if "other_processes_cpu_cores" in r]
    cores = os.cpu_count() or 1
    lines = [f"# Stocking like for like (SmolLM2-135M-Instruct, LoRA r=8, {info['n']} Alpaca examples, ≤ {args.max_length} tokens, {args.dtype})", "",
             f"Command (regenerates this file): `{command}`  ",
             f"Inputs: {info['n']} examples ({info['tokens']} tokens, {info['response_tokens']} response; the first {info['n']} of "
             f"alpaca_en_demo.json that fit {args.max_length} tokens untruncated, {info['skipped_longer_than_max_length']} longer ones skipped), "
             f"the same records.jsonl for every tool. Knobs for every tool: {args.dtype}, token budget {args.token_budget} per batch, "
             f"≤ {args.batch_size} examples per batch, {args.threads} threads. Reps: {args.reps}, interleaved (every mode once per rep, "
             "in the order below); every run a fresh process; medians quoted.  ",
             f"Machine: {cores} cores, {platform.platform()}. Load (recorded by this script at every run's start and end): 1-minute "
             f"load average {min(loads):.1f}–{max(loads):.1f}; other processes used {min(others):.2f}–{max(others):.2f} cores on average "
             "during the runs." if loads and others else "Machine load: not recorded (no run finished).", "",
             "## End to end (fresh process, as a user runs it: start-up, model load, tokenisation, compute, writes)", "",
             "| tool | wall s (median) | per rep wall s | CPU s (median) | peak RSS process tree MiB | largest process MiB | load before→after per rep | other procs' cores per rep |",
             "|---|---:|---|---:|---:|---:|---|---|"]
    for m in ("ours", "bergson", "floor", "less"):
        rs = runs.get(m, [])
        errs = [r for r in rs if "error" in r]
        if m not in med:
            if rs:
                lines.append(f"| {m} | FAILED: {errs[0]['error'][:300].replace(chr(10), ' ').replace('|', '/')} | | | | | | |")
            continue
        d = med[m]
        ok = [r for r in rs if "error" not in r]
        walls = ", ".join("%.1f" % r["wall_s"] for r in ok)
        load = ", ".join("%.1f→%.1f" % (r["load_1min_before"], r["load_1min_after"]) for r in ok)
        other = ", ".join("%.2f" % r["other_processes_cpu_cores"] for r in ok)
        lines.append(f"| {m} | {d['wall_s']:.1f} | {walls} | {d['cpu_s']:.1f} | {d['peak_rss_tree_mb']:.0f} | "
                     f"{d['peak_rss_largest_process_mb']:.0f} | {load} | {other} |")
    toks = {m: sorted({r.get("tokens") for r in runs.get(m, []) if r.get("tokens") is not None}) for m in ("ours", "bergson")}
    lines += ["", f"Tokens processed as each tool reports them: ours {toks['ours'] or '–'} (manifest tokens_last_run), "
              f"bergson {toks['bergson'] or '–'} (its log's 'Total processed'); this script's own tokenisation: {info['tokens']}."]
    lines += ["", "(floor and less are this script's own child processes, not user-facing tools: their end-to-end rows "
              "are given for completeness; their in-process figures below are the ones compared.)", "",
              "## In process (the compute loop only)", "", "| mode | examples/s (median) | per rep | what is timed |", "|---|---:|---|---|"]
    what = {"ours": "stock()'s batch loop: shard tokenisation, LoRA gradients, CountSketch, store writes (manifest examples_per_s_last_run)",
            "bergson": "its 'Collecting gradients' progress bar (elapsed, whole seconds)",
            "floor": "frozen-weight fwd+bwd to the input embeddings, same batches, no weight gradients, no FLOP counter"}
    for m in ("ours", "bergson", "floor"):
        if m in med and med[m]["loop_ex_per_s"]:
            ok = [r for r in runs[m] if "error" not in r and r.get("loop_ex_per_s")]
            per = ", ".join("%.3f" % r["loop_ex_per_s"] for r in ok)
            lines.append(f"| {m} | {med[m]['loop_ex_per_s']:.3f} | {per} | {what[m]} |")
    if "less" in med:
        le = med["less"]
        r0 = [r for r in runs["less"] if "error" not in r][0]
        for name, s in (("less: gradient pass alone", le["grad_s_per_example"]),
                        ("less: + CountSketch 8,192", le["grad_s_per_example"] + le["countsketch_projection_s_per_example"]),
                        ("less: + TRAK dense projector 8,192", le["grad_s_per_example"] + le["dense_projection_s_per_example"])):
            lines.append(f"| {name} | {1.0 / s:.3f} | | bs=1, HF loss, .grad of A and B ({r0['gradient_dim']:,} dims), "
                         f"{r0['examples']} examples |")
        lines += ["", f"LESS-style split (medians, seconds per example): gradient pass {le['grad_s_per_example']:.3f}; "
                  f"CountSketch projection {le['countsketch_projection_s_per_example']:.4f}; TRAK dense projection "
                  f"{le['dense_projection_s_per_example']:.3f} (one call on 16 rows / 16; {r0['dense_projection_blocks_timed']} "
                  "of its identical 100-column blocks timed, scaled to all)."]
    lines += ["", "## Ratios (same run, medians)", "", "| ratio | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in ratios.items()]
    if loads and max(loads) > cores:
        lines += ["", f"Load average reached {max(loads):.1f} on {cores} cores: the machine was shared while this ran. Wall times "
                  "and rates are slower than on a quiet machine and noisier; the interleaved reps expose every tool to the "
                  "same drift, and CPU seconds and peak RSS are less affected by contention than wall time."]
    for m in ("ours", "bergson"):
        ok = [r for r in runs.get(m, []) if "cmd" in r]
        if ok:
            lines += ["", f"{m} command (rep 1): `{shlex.join(ok[0]['cmd'])}`"]
    out.parent.mkdir(parents=True, exist_ok=True)
    from influcoder.core.hardware import cpu_info, cpu_line

    cpu = cpu_info()
    lines += ["", f"CPU: {cpu_line(cpu)}."]
    payload = {"command": command, "info": info, "args": vars(args), "runs": runs, "medians": med, "ratios": ratios,
               "cpu": cpu}
    for ext, text in (("json", json.dumps(payload, indent=1)), ("md", "\n".join(lines) + "\n")):
        tmp = out.with_name(out.name + f".{ext}.tmp")
        tmp.write_text(text)
        os.replace(tmp, out.with_name(out.name + f".{ext}"))
    print("\n".join(lines), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="examples (the first N of alpaca_en_demo.json that fit --max-length)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--token-budget", type=int, default=1024)
    ap.add_argument("--less-n", type=int, default=8, help="examples for the LESS-style loop")
    ap.add_argument("--less-proj-blocks", type=int, default=8, help="TRAK blocks to time (0 = all 82)")
    ap.add_argument("--modes", default="ours,bergson,floor,less")
    ap.add_argument("--bergson", default="/work/bergson-venv/bin/bergson",
                    help="bergson CLI in its own venv: pip install torch==2.13.0 first, then Bergson 2.5.1's "
                         "dependencies, then pip install --no-deps bergson==2.5.1 (../shared/docs/PEERS-MEASURED.md)")
    ap.add_argument("--workdir", default=str(ROOT / "work" / "bench_stock"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stock_throughput"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.raw_argv = list(sys.argv[1:] if argv is None else argv)
    work = Path(args.workdir)
    if args.child:
        res = run_child(args, work, args.child)
        print("RESULT " + json.dumps(res), flush=True)
        return
    command = "python benchmarks/stock_throughput.py " + shlex.join(args.raw_argv)
    work.mkdir(parents=True, exist_ok=True)
    info = prepare(args, work)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    env = os.environ.copy() | {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
                               "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    runs: dict = {m: [] for m in modes}
    for rep in range(1, args.reps + 1):  # interleaved: A B C D, A B C D, ...
        for mode in modes:
            r = run_mode(args, work, info, mode, rep, env)
            runs[mode].append(r)
            print(f"rep {rep} {mode}: " + json.dumps({k: v for k, v in r.items() if k not in ("cmd", "error")})
                  + (f" ERROR {r['error'][-300:]}" if "error" in r else ""), flush=True)
    report(args, info, runs, command, Path(args.out))


if __name__ == "__main__":
    main()
