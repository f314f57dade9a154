"""Compose benchmarks/results/eval_report.md (the README-ready headline tables) from the experiment results.

    python benchmarks/eval_report.py

Reads benchmarks/results/eval_exp1_ranking.json, eval_exp2_toxicity_datelm.json (experiment 2 as DATE-LM builds
it; the earlier planted construction, eval_exp2_toxicity.json, is kept as a labelled earlier run) and
eval_exp3_fidelity.json (whichever exist) and writes the report with the exact commands recorded in them.
"""

from __future__ import annotations

import json
from pathlib import Path

R = Path("benchmarks/results")


def f(x, nd=3):
    return "–" if x is None else f"{x:.{nd}f}"


def ms(d):
    return f"{f(d['mean'])} ± {f(d['std'])}" if d.get("std") else f(d["mean"])


def gflops(res, n):
    v = res.get("flops", {}).get(n, {}).get("flops_per_example")
    return "–" if v is None else f"{v / 1e9:.1f}"


def kb(b):
    return "–" if b is None else f"{b / 1024:.1f}"


NON_GRADIENT = ("semantic", "tfidf", "bm25", "repsim", "rds", "length", "random")


def exp2_path() -> Path:
    """Experiment 2's results: DATE-LM's construction when it has been run, else the earlier planted one."""
    p = R / "eval_exp2_toxicity_datelm.json"
    return p if p.exists() else R / "eval_exp2_toxicity.json"


def goal_checks() -> list[str]:
    """The issue's two goals, computed from the results (not asserted)."""
    out = ["## Goal checks (computed from the results below)", ""]
    p2 = exp2_path()
    close = []
    if p2.exists():
        r = json.loads(p2.read_text())
        for v, rows in r["summary"].items():
            if "influcoder" in rows and "less_r8" in rows:
                a, b = rows["influcoder"], rows["less_r8"]
                ratio = b["seconds_per_1000"] / a["seconds_per_1000"]
                fl = r.get("flops", {})
                fr = (fl["less_r8"]["flops_per_example"] / fl["influcoder"]["flops_per_example"]
                      if fl.get("less_r8", {}).get("flops_per_example") and fl.get("influcoder", {}).get("flops_per_example")
                      else None)
                d = a["auprc"]["mean"] - b["auprc"]["mean"]
                seeds = min(a.get("n_seeds", 1), b.get("n_seeds", 1))
                out.append(f"- Experiment 2 {v}: Influcoder AUPRC {ms(a['auprc'])} vs LESS r8 {ms(b['auprc'])} "
                           f"({seeds} seed{'s' if seeds > 1 else ''}; difference {d:+.3f}; goal: within 0.05 → "
                           f"{'met' if d >= -0.05 else 'not met'}), inference {ratio:.0f}× less time"
                           + (f" and {fr:.0f}× fewer FLOPs" if fr else "") + " per example (goal ≥ 25×).")
                close.append(d >= -0.05 and ratio >= 25 and (fr is None or fr >= 25))
        if close:
            out.append("- Goal \"within 0.05 AUPRC of LESS at ≥ 25× less inference\" (both variants): "
                       + ("met." if all(close) else f"**not met** (holds in {sum(close)} of {len(close)})."))
    # "ahead of every non-gradient baseline": met only where it holds in every experiment and variant
    verdicts = []
    p1 = R / "eval_exp1_ranking.json"
    if p1.exists():
        r = json.loads(p1.read_text())
        s = r["summary"]
        if "influcoder" in s:
            best = max((n for n in s if n in NON_GRADIENT), key=lambda n: s[n]["per_anchor"]["mean"])
            a, b = s["influcoder"]["per_anchor"], s[best]["per_anchor"]
            behind = [n for n in s if n in NON_GRADIENT and s[n]["per_anchor"]["mean"] >= a["mean"]]
            verdicts.append(not behind)
            margin = a["mean"] - b["mean"]
            noise = max(a.get("std") or 0.0, b.get("std") or 0.0)
            out.append(f"- Experiment 1 (per-anchor ρ): Influcoder {ms(a)}; best non-gradient baseline {best} {ms(b)}: "
                       + ("ahead of every non-gradient baseline" if not behind else "behind " + ", ".join(behind))
                       + (f", by {margin:+.3f}, less than one seed-std ({noise:.3f}): not evidence either way."
                          if not behind and margin < noise else "."))
    if p2.exists():
        r = json.loads(p2.read_text())
        for v, rows in r["summary"].items():
            if "influcoder" not in rows:
                continue
            a = rows["influcoder"]["auprc"]["mean"]
            above = sorted((n for n in rows if n in NON_GRADIENT and rows[n]["auprc"]["mean"] >= a),
                           key=lambda n: -rows[n]["auprc"]["mean"])
            verdicts.append(not above)
            out.append(f"- Experiment 2 {v} (AUPRC): Influcoder {a:.3f}; "
                       + ("ahead of every non-gradient baseline." if not above else "non-gradient baselines at or above it: "
                          + ", ".join(f"{n} {rows[n]['auprc']['mean']:.3f}" for n in above) + "."))
    if verdicts:
        out.append("- Goal \"ahead of every non-gradient baseline\" (every experiment and variant above): "
                   + ("met." if all(verdicts) else f"**not met** (holds in {sum(verdicts)} of {len(verdicts)})."))
    out += ["", "Sizes, seeds and every reduction from the paper's set-up are stated with each table and under "
            "*Reductions*; differences smaller than the seed-to-seed std are not evidence either way.", ""]
    return out


def teacher_line(r: dict) -> str:
    """How experiment 1's ground truth was made, from the results themselves."""
    from influcoder.eval.report import teacher_description

    line = teacher_description(r["per_seed"][0].get("teacher") or {})
    cfg_t = r["config"].get("teacher", {})
    if cfg_t.get("kind") == "stores":
        line += f" of the stores `{cfg_t.get('pool_store')}` × `{cfg_t.get('query_store')}`"
    sd = [p["sketch_vs_dense"] for p in r["per_seed"] if p.get("sketch_vs_dense")]
    if sd:
        line += ("; the sketch's own error on each test block, Spearman of sketched vs unprojected teacher: per-anchor "
                 + ", ".join(f"{x['per_anchor']:.3f}" for x in sd) + ", aggregated "
                 + ", ".join(f"{x['aggregated']:.3f}" for x in sd))
    return line


def datelm_section(r: dict) -> list[str]:
    """Experiment 2 as DATE-LM builds it: the construction, the table (mean ± std over the seeds each row has),
    DATE-LM's leaderboard beside ours, the student's bar — from eval_exp2_toxicity_datelm.json."""
    from influcoder.eval.report import bar_lines, datelm_bar, datelm_comparison

    ps = r["per_seed"][0]
    variants = list(r["summary"])
    ks = r["config"]["ks"]
    desc = "; ".join(f"{v} {vr['n_pool']:,} rows, {vr['n_positive']} Unsafe ({100 * vr['n_positive'] / vr['n_pool']:.2f} %; "
                     + ", ".join(f"{k} {n}" for k, n in vr["kinds"].items()) + ")" for v, vr in ps["variants"].items())
    warm = ps["variants"][variants[-1]].get("warmup_on")
    out = ["## Experiment 2 — toxicity filtering, DATE-LM's XSTest-response construction", "",
           f"Command: `{r['command']}` (each (seed, method) result is committed under "
           f"`{r['config'].get('parts_dir')}` as it finishes; this table is rebuilt from those files by "
           "`influcoder evaluate configs/exp2_toxicity_datelm.yaml --committed-only`).", "",
           f"Pools per seed: {desc}; {ps['variants'][variants[0]]['n_refs']} references (Unsafe XSTest completions of other "
           "prompts), score = mean over references, AUPRC = `auc(recall, precision)` of sklearn's `precision_recall_curve` "
           "(DATE-LM). Reduced protocol (agreed in issue 21): "
           + (f"one LoRA warm-up per seed on the {warm} pool scores both subsets; " if warm else "")
           + "LESS r16 and LoGra + FIM not run; seed 0 runs every method, seeds 1 and 2 the teacher, LESS r8, the "
           "student and the text baselines. Details, per-seed values and the machine of each result: "
           "`eval_exp2_toxicity_datelm.md` / `.json`.", "",
           "| Method | seeds | " + " | ".join(f"AUPRC {v}" for v in variants) + " | "
           + " | ".join(f"P@{k} Het" for k in ks) + " | " + " | ".join(f"R@{k} Het" for k in ks)
           + " | s / 1,000 ex | GFLOPs / ex | KB / ex |"]
    out.append("|" + "---|" * (out[-1].count("|") - 1))
    first = r["summary"][variants[0]]
    for n in sorted(first, key=lambda k: -first[k]["auprc"]["mean"]):
        t = first[n]["seconds_per_1000"]
        seeds = [str(p["seed"]) for p in r["per_seed"] if n in p["variants"][variants[0]]["methods"]]
        out.append(f"| {n} | {','.join(seeds)} | " + " | ".join(ms(r["summary"][v][n]["auprc"]) for v in variants) + " | "
                   + " | ".join(ms(first[n][f"precision@{k}"]) for k in ks) + " | "
                   + " | ".join(ms(first[n][f"recall@{k}"]) for k in ks)
                   + f" | {'–' if t is None else f'{t:.0f}'} | {gflops(r, n)} | {kb(first[n]['bytes_per_example'])} |")
    out += ["", "A random ranking's expected AUPRC is about the positive rate: "
            + ", ".join(f"{v} {vr['n_positive'] / vr['n_pool']:.4f}" for v, vr in ps["variants"].items()) + "."]
    if r.get("missing"):
        out += ["", "**Not yet run:** " + "; ".join(f"seed {m['seed']} {m['method']}" for m in r["missing"]) + "."]
    out += ["", *datelm_comparison(r), "", *bar_lines(datelm_bar(r)), ""]
    return out


def main() -> None:
    out = ["# Influcoder evaluation report", "",
           "All numbers below were produced on a 2-core CPU machine (no GPU); see "
           "*Reductions* for everything that is smaller than the paper's set-up. Per-experiment reports with "
           "per-seed details: `eval_exp1_ranking.md`, `eval_exp2_toxicity_datelm.md` (the earlier planted "
           "construction: `eval_exp2_toxicity.md`), `eval_exp3_fidelity.md`; "
           "figures: `eval_exp1_ranking.png` (Spearman vs inference time, the paper's Figure 2), "
           "`eval_exp2_toxicity_datelm.png` (precision–recall curves and AUPRC vs time).", ""]
    out += goal_checks()
    p1 = R / "eval_exp1_ranking.json"
    if p1.exists():
        r = json.loads(p1.read_text())
        ps = r["per_seed"][0]
        out += ["## Experiment 1 — influence ranking estimation", "",
                f"Command: `{r['command']}`", "",
                f"Teacher: {teacher_line(r)}. Test block per seed: {ps['n_test_pool']} pool × "
                f"{ps['n_test_queries']} BBH queries; seeds {r['config']['seeds']} (mean ± std over seeds).", "",
                "| Method | Per-anchor ρ | Query-specific ρ | Aggregated ρ | s / 1,000 ex | GFLOPs / ex | KB / ex |",
                "|---|---|---|---|---|---|---|"]
        for n, row in sorted(r["summary"].items(), key=lambda kv: -kv[1]["per_anchor"]["mean"]):
            t = row["seconds_per_1000"]
            out.append(f"| {n} | {ms(row['per_anchor'])} | {ms(row['query_specific'])} | {ms(row['aggregated'])} | "
                       f"{'–' if t is None else f'{t:.0f}'} | {gflops(r, n)} | {kb(row['bytes_per_example'])} |")
        out.append("")
    p1s = R / "eval_exp1_student.json"
    if p1s.exists():
        r = json.loads(p1s.read_text())
        out += ["### Experiment 1, student rerun (issue 9: the distillation study's default recipe)", "",
                f"Command: `{r['command']}` — the same split seeds, test blocks and store teacher as above; only the "
                "student and the text baselines are recomputed (the text baselines reproduce the table above "
                "exactly, which checks that the blocks and the truth are the same).", "",
                "| Method | Per-anchor ρ | Query-specific ρ | Aggregated ρ |", "|---|---|---|---|"]
        for n, row in sorted(r["summary"].items(), key=lambda kv: -kv[1]["per_anchor"]["mean"]):
            out.append(f"| {n} | {ms(row['per_anchor'])} | {ms(row['query_specific'])} | {ms(row['aggregated'])} |")
        out.append("")
    pd = R / "eval_exp2_toxicity_datelm.json"
    if pd.exists():
        out += datelm_section(json.loads(pd.read_text()))
    p2 = R / "eval_exp2_toxicity.json"
    if p2.exists():
        r = json.loads(p2.read_text())
        ps = r["per_seed"][0]
        variants = list(r["summary"])
        out += ["### Experiment 2, earlier run: the planted construction (an easy pool, kept for the record)"
                if pd.exists() else "## Experiment 2 — toxicity filtering (DATE-LM XSTest-response style)", "",
                f"Command: `{r['command']}`", "",
                f"Pool: {ps['n_pool']} examples with {ps['n_positive']} planted unsafe XSTest full-compliance "
                f"responses ({100 * ps['n_positive'] / ps['n_pool']:.1f}%); references per variant: "
                f"{ps['variants'][variants[0]]['n_refs']}. Hom references: {', '.join(ps['types']['Hom'])}; Het references: "
                f"{', '.join(ps['types']['Het'])}; planted: {', '.join(ps['types']['planted'])}. "
                f"Score = mean over references; AUPRC = `auc(recall, precision)` of sklearn's `precision_recall_curve` "
                f"(DATE-LM). Student training split: {ps['overlap_check']['n_train_pool']} pool × "
                f"{ps['overlap_check']['n_train_queries']} queries, no prompt shared with the pool or references "
                f"(checked by the harness).", "",
                "| Method | " + " | ".join(f"AUPRC {v}" for v in variants) + " | s / 1,000 ex | GFLOPs / ex | KB / ex |",
                "|---|" + "---|" * (len(variants) + 3)]
        first = r["summary"][variants[0]]
        for n in sorted(first, key=lambda k: -first[k]["auprc"]["mean"]):
            t = first[n]["seconds_per_1000"]
            out.append(f"| {n} | " + " | ".join(ms(r["summary"][v][n]["auprc"]) for v in variants) +
                       f" | {'–' if t is None else f'{t:.0f}'} | {gflops(r, n)} | {kb(first[n]['bytes_per_example'])} |")
        out += ["", f"A random ranking's expected AUPRC is about the positive rate, "
                    f"{ps['n_positive'] / ps['n_pool']:.3f}.", ""]
    p3 = R / "eval_exp3_fidelity.json"
    if p3.exists():
        r = json.loads(p3.read_text())
        out += ["## Experiment 3 — projection fidelity (Table A.1)", ""]
        out.append("Computed by `benchmarks/projection_fidelity.py` (issue 2); linked, not duplicated:")
        out.append("")
        for item in r["linked"]:
            out.append(f"- `{item['path']}`: {'present' if item['exists'] else 'not found when this report was built'}")
        out.append("")
        md = Path("benchmarks/results/projection_fidelity_256.md")
        if md.exists():
            text = md.read_text().splitlines()
            out += [ln for ln in text if ln.startswith("Command:") or ln.startswith("|")][:8]
            out.append("")
    notes = R / "eval_notes.md"
    if notes.exists():
        out += [notes.read_text()]
    (R / "eval_report.md").write_text("\n".join(out) + "\n")
    print(R / "eval_report.md")


if __name__ == "__main__":
    main()
