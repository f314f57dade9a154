"""An experiment's results as Markdown tables and figures (``eval_<name>.md`` / ``.png``), with the DATE-LM
leaderboard comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import EvalConfig

__all__ = ["report_markdown", "make_figures", "teacher_description", "datelm_comparison"]


# ============================================================================ report
def _fmt(x, nd=3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    return f"{x:.{nd}f}"


def _ms(d: dict) -> str:
    return f"{_fmt(d['mean'])} ± {_fmt(d['std'])}" if d["std"] else _fmt(d["mean"])


def _human_flops(f) -> str:
    return "–" if f is None else f"{f / 1e9:.1f} G"


def _human_bytes(b) -> str:
    if b is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if b < 1024 or unit == "GB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024


def teacher_description(t: dict) -> str:
    """One readable line for a ground-truth description (stores' teacher settings, or the exact teacher's)."""
    if t.get("kind") == "stores":
        m = t.get("teacher") or {}
        lora, proj = m.get("lora") or {}, m.get("projection") or {}
        return (f"gradient stores of `{m.get('model')}` (LoRA r {lora.get('rank')}, alpha {lora.get('alpha')}, seed "
                f"{lora.get('seed')}; {proj.get('kind')} {proj.get('dim')}; {m.get('dtype')}), cosine")
    return "exact LoRA-gradient cosine recomputed on the block (" + \
        ", ".join(f"{k} {v}" for k, v in t.items() if k != "kind") + ")"


DATELM_LEADERBOARD = {"LESS": (0.734, 0.724), "Grad-Sim": (0.601, 0.647), "Rep-Sim": (0.580, 0.657),
                      "DataInf": (0.392, 0.487)}
"""DATE-LM's leaderboard AUPRC (XSTest-response, Pythia-1b), (Het, Hom) — ../shared/docs/DATE-LM-TOXICITY.md."""
_OURS = {"LESS": "less_r8", "Grad-Sim": "teacher", "Rep-Sim": "repsim", "DataInf": "datainf"}


def datelm_comparison(res: dict) -> list[str]:
    """Our rows beside DATE-LM's leaderboard, with what differs named."""
    summ = res["summary"]
    lines = ["Beside DATE-LM's leaderboard (XSTest-response, AUPRC Het / Hom):", "",
             "| DATE-LM method | DATE-LM (Pythia-1b) | here | ours (SmolLM2-135M) |", "|---|---|---|---|"]
    for lb, (het, hom) in DATELM_LEADERBOARD.items():
        ours = _OURS[lb]
        got = " / ".join(_ms(summ[v][ours]["auprc"]) if ours in summ[v] else "not run" for v in ("Het", "Hom") if v in summ)
        lines.append(f"| {lb} | {het:.3f} / {hom:.3f} | {ours} | {got} |")
    lines += ["", "What differs: the decoder (SmolLM2-135M-Instruct here, Pythia-1b there); the pool at 1/5 of DATE-LM's "
              "size with its proportions (Benign from Alpaca / Dolly / Code-Alpaca, not UltraChat; Unsafe and "
              "Safety-Aligned rows from XSTest's released completions, not WildGuard's XSTest-response); LoRA r 8 "
              "warmed up one epoch here, DATE-LM's checkpoint recipe unpublished; Grad-Sim here is the exact "
              "(unprojected) LoRA-gradient cosine, LESS a Rademacher projection to 8,192 of the same gradients."]
    return lines


def datelm_bar(res: dict) -> list[dict]:
    """Issue 21's bar for the student, checked on each subset: the pool is hard (untrained encoder and TF-IDF ≥ 0.2
    AUPRC below LESS r8); the student ≥ 0.15 above the untrained encoder, above TF-IDF and BM25, within 0.05 of
    LESS r8, at ≥ 25× less inference time per example. Means over the seeds that have every row it compares (paired),
    named in each check."""
    need = ("less_r8", "influcoder", "semantic", "tfidf", "bm25")
    out = []
    for v in res["summary"]:
        per = [(r["seed"], r["variants"][v]["methods"]) for r in res["per_seed"]]
        seeds = [sd for sd, m in per if all(n in m for n in need)]

        def check(what, ok, detail):
            out.append({"subset": v, "check": what, "met": ok, "detail": detail, "seeds": seeds})

        if not seeds:
            check("all rows present", None, ", ".join(need) + " needed on one seed at least")
            continue
        a = {n: float(np.mean([m[n]["auprc"] for sd, m in per if sd in seeds])) for n in need}
        L, S, U = a["less_r8"], a["influcoder"], a["semantic"]
        on = f" (seeds {', '.join(map(str, seeds))})"
        check("pool is hard: untrained encoder ≤ LESS r8 − 0.2", U <= L - 0.2, f"{U:.3f} vs {L:.3f} − 0.2 = {L - 0.2:.3f}{on}")
        check("pool is hard: TF-IDF ≤ LESS r8 − 0.2", a["tfidf"] <= L - 0.2, f"{a['tfidf']:.3f} vs {L - 0.2:.3f}{on}")
        check("student ≥ untrained encoder + 0.15", S >= U + 0.15, f"{S:.3f} vs {U + 0.15:.3f} ({S - U:+.3f}){on}")
        check("student > TF-IDF and BM25", S > a["tfidf"] and S > a["bm25"],
              f"{S:.3f} vs {a['tfidf']:.3f} / {a['bm25']:.3f}{on}")
        check("student ≥ LESS r8 − 0.05", S >= L - 0.05, f"{S:.3f} vs {L - 0.05:.3f} ({S - L:+.3f}){on}")
        rows = res["summary"][v]
        tl, ts = rows["less_r8"].get("seconds_per_1000"), rows["influcoder"].get("seconds_per_1000")
        if tl and ts:
            check("student ≥ 25× less inference time / example than LESS r8", tl / ts >= 25, f"{tl / ts:.0f}×")
    return out


def bar_lines(bar: list[dict]) -> list[str]:
    if not bar:
        return []
    mark = {True: "met", False: "**not met**", None: "not checked"}
    return ["The bar the student is judged by (issue 21; a finding either way is a result):", "",
            "| subset | check | result | values |", "|---|---|---|---|"] + \
        [f"| {b['subset']} | {b['check']} | {mark[b['met']]} | {b['detail']} |" for b in bar]


def report_markdown(cfg: EvalConfig, res: dict, command: str) -> str:
    lines = [f"# Evaluation `{cfg.name}` ({cfg.experiment})", "", f"Command: `{command}`", "",
             f"Decoder: `{cfg.model}`, max length {cfg.max_length}; seeds {res.get('seeds', cfg.seeds)}.", ""]
    flops = res.get("flops", {})
    if cfg.experiment == "ranking":
        ps = res["per_seed"][0]
        lines += [f"Held-out block: {ps['n_test_pool']} pool × {ps['n_test_queries']} queries per seed; "
                  f"ground truth: {teacher_description(ps['teacher'])}.", ""]
        sd = [(p["seed"], p["sketch_vs_dense"]) for p in res["per_seed"] if "sketch_vs_dense" in p]
        if sd:
            lines += ["Sketched vs unprojected teacher on each test block (the sketch's own error): " +
                      "; ".join(f"seed {sd_seed}: per-anchor {_fmt(v['per_anchor'])}, aggregated {_fmt(v['aggregated'])}"
                                for sd_seed, v in sd) + ".", ""]
        drops = [(p["seed"], p["train_dropped_duplicates_of_test"]) for p in res["per_seed"]
                 if any((p.get("train_dropped_duplicates_of_test") or {}).values())]
        if drops:
            lines += ["Training rows left out because their text duplicates a test row: " +
                      "; ".join(f"seed {d_seed}: {d['pool']} pool, {d['queries']} queries" for d_seed, d in drops) + ".", ""]
        lines += ["| Method | Per-anchor ρ | Query-specific ρ | Aggregated ρ | s / 1,000 ex | FLOPs / ex | bytes / ex |",
                  "|---|---|---|---|---|---|---|"]
        for n, row in sorted(res["summary"].items(), key=lambda kv: -kv[1]["per_anchor"]["mean"]):
            fl = flops.get(n, {}).get("flops_per_example")
            lines.append(f"| {n} | {_ms(row['per_anchor'])} | {_ms(row['query_specific'])} | {_ms(row['aggregated'])} | "
                         f"{_fmt(row['seconds_per_1000'], 1)} | {_human_flops(fl)} | {_human_bytes(row['bytes_per_example'])} |")
    elif cfg.experiment == "toxicity":
        ps = res["per_seed"][0]
        if ps.get("construction") == "datelm":
            desc = []
            for v, vr in ps["variants"].items():
                desc.append(f"{v}: {vr['n_pool']} rows, {vr['n_positive']} Unsafe "
                            f"({100 * vr['n_positive'] / vr['n_pool']:.2f}%; " +
                            ", ".join(f"{k} {n}" for k, n in vr["kinds"].items()) + ")")
                if vr.get("warmup"):
                    w = next(iter(vr["warmup"].values()))
                    on = vr.get("warmup_on") or v
                    desc[-1] += (f", adapters warmed up {w['steps']} steps ({w['epochs']:.2f} epochs of {w['n_rows']} "
                                 "rows) on " + ("this pool" if on == v else f"the {on} pool"))
            kv = lambda d: ", ".join(f"{k} {v}" for k, v in d.items())  # noqa: E731
            lines += ["DATE-LM XSTest-response construction (per seed): " + "; ".join(desc) +
                      f"; {ps['variants'][next(iter(ps['variants']))]['n_refs']} references (Unsafe XSTest completions "
                      f"of other prompts). Student training split: pool ({kv(ps['sizes']['train_pool'])}) × queries "
                      f"({kv(ps['sizes']['train_queries'])}); distinct prompts checked ({kv(ps['overlap_check']['prompts_checked'])}): "
                      "none shared between the training split, the pools and the references.", ""]
        else:
            lines += [f"Pool: {ps['n_pool']} examples, {ps['n_positive']} planted unsafe "
                      f"({100 * ps['n_positive'] / ps['n_pool']:.1f}%); planted types {ps['types']['planted']}; "
                      f"Hom references {ps['types']['Hom']}; Het references {ps['types']['Het']}. "
                      f"Student training split: {ps['overlap_check']} (no prompt or example shared with the pool or references).", ""]
        variants = list(res["summary"])
        reduced = ps["variants"][variants[-1]].get("warmup_on")
        if reduced and any(vr.get("warmup_on") != v for v, vr in ps["variants"].items()):
            lines += [f"Reduced protocol: one LoRA warm-up per (rank, seed) on the {reduced} pool; its adapter scores "
                      "every subset (DATE-LM fine-tunes a checkpoint per subset).", ""]
        seeds_of = {n: [r["seed"] for r in res["per_seed"] if n in r["variants"][variants[0]]["methods"]]
                    for n in res["summary"][variants[0]]}
        head = "| Method | seeds | " + " | ".join(f"AUPRC {v}" for v in variants) + " | " + \
               " | ".join(f"P@{k} {v}" for v in variants for k in cfg.ks) + " | " + \
               " | ".join(f"R@{k} {v}" for v in variants for k in cfg.ks) + " | s / 1,000 ex | FLOPs / ex | bytes / ex |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        first = res["summary"][variants[0]]
        for n in sorted(first, key=lambda k: -first[k]["auprc"]["mean"]):
            fl = flops.get(n, {}).get("flops_per_example")
            aucs = " | ".join(_ms(res["summary"][v][n]["auprc"]) for v in variants)
            pk = " | ".join(_ms(res["summary"][v][n][f"precision@{k}"]) for v in variants for k in cfg.ks)
            rk = " | ".join(_ms(res["summary"][v][n][f"recall@{k}"]) for v in variants for k in cfg.ks)
            lines.append(f"| {n} | {','.join(map(str, seeds_of[n]))} | {aucs} | {pk} | {rk} | "
                         f"{_fmt(first[n]['seconds_per_1000'], 1)} | {_human_flops(fl)} | "
                         f"{_human_bytes(first[n]['bytes_per_example'])} |")
        lines += ["", "Mean ± std over the seeds listed (std 0.000 where one seed); per-seed values in the JSON. "
                  "Random ranking's expected AUPRC ≈ the positive rate: " +
                  ", ".join(f"{v} {vr['n_positive'] / vr['n_pool']:.4f}" for v, vr in ps["variants"].items()) + "."]
        if res.get("missing"):
            lines += ["", "**Not yet run** (no committed result with this construction): " +
                      "; ".join(f"seed {m['seed']} {m['method']} ({m['why']})" for m in res["missing"]) + "."]
        if ps.get("construction") == "datelm":
            lines += ["", *datelm_comparison(res), "", *bar_lines(datelm_bar(res))]
    else:
        for item in res["linked"]:
            lines.append(f"- `{item['path']}` ({'present' if item['exists'] else 'not found'})")
    lines += ["", "Seconds are featurisation (+ projection) time per example, measured when the features were "
              "computed (single runs on this machine: noisy). FLOPs from "
              "torch.utils.flop_counter.FlopCounterMode on a small sample with eager attention (numpy/scipy "
              "methods: not counted). bytes / ex = what a method stores per example to score new queries.", ""]
    return "\n".join(lines)


def make_figures(cfg: EvalConfig, res: dict, path: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return []
    written = []
    if cfg.experiment == "ranking":
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for n, row in res["summary"].items():
            t = row["seconds_per_1000"]
            if t is None or t <= 0:
                continue
            ax.scatter(t, row["per_anchor"]["mean"])
            ax.annotate(n, (t, row["per_anchor"]["mean"]), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("inference seconds per 1,000 examples (log)")
        ax.set_ylabel("per-anchor Spearman vs teacher")
        ax.set_title(f"{cfg.name}: quality vs inference time")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        written.append(str(path))
    elif cfg.experiment == "toxicity":
        variants = list(res["summary"])
        fig, axes = plt.subplots(1, len(variants) + 1, figsize=(5 * (len(variants) + 1), 4.5))
        ps = res["per_seed"][0]
        for ax, v in zip(axes, variants):
            for n, m in ps["variants"][v]["methods"].items():
                ax.plot(m["pr_curve"]["recall"], m["pr_curve"]["precision"], label=f"{n} ({m['auprc']:.2f})", lw=1)
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            ax.set_title(f"{v} (seed {ps['seed']})")
            ax.legend(fontsize=6)
        ax = axes[-1]
        first = res["summary"][variants[0]]
        for n, row in first.items():
            t = row["seconds_per_1000"]
            if t is None or t <= 0:
                continue
            ax.scatter(t, row["auprc"]["mean"])
            ax.annotate(n, (t, row["auprc"]["mean"]), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("inference s / 1,000 examples (log)")
        ax.set_ylabel(f"AUPRC {variants[0]}")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        written.append(str(path))
    return written
