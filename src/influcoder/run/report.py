"""The fidelity report of a run: how well the trained encoder reproduces the teacher on data it never saw.

On the held-out block of the run (pool rows and queries stocked but never trained on, see
``pipeline``), the teacher's cosine-influence labels are compared with

  * the student (the trained encoder),
  * the untrained encoder (the same base model and head before distillation),
  * the length heuristic (shorter pool response ⇒ more influence; ``data.heuristics.length_scores``),

by per-anchor / aggregated / query-specific Spearman (``influcoder.core.metrics``) and by the precision of the
teacher's top-k among each method's top-k. A verdict line says whether to use the scores, from a
bootstrap (over held-out queries) of the student's per-anchor gain over the best baseline. The report
also checks whether the OOD flag of ``attribute`` (nearest-neighbour similarity to the training
queries) predicts low per-query fidelity, and sets the time spent against the estimated time to stock
the whole pool. Written to ``report/fidelity.md``, ``.json`` and ``.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..core import metrics
from ..core.fileio import atomic_write_text
from .layout import RunLayout

if TYPE_CHECKING:  # pragma: no cover
    from .config import RunConfig

__all__ = ["fidelity_report", "precision_of_teacher_top_k", "verdict", "trust_summary", "last_screen", "stock_advice"]


def precision_of_teacher_top_k(pred: np.ndarray, true: np.ndarray, k: int) -> np.ndarray:
    """Per query (column): the share of the teacher's top-k pool rows that are among ``pred``'s top-k."""
    k = min(k, pred.shape[0])
    out = np.empty(pred.shape[1])
    for j in range(pred.shape[1]):
        t = set(np.argsort(-true[:, j], kind="stable")[:k].tolist())
        p = set(np.argsort(-pred[:, j], kind="stable")[:k].tolist())
        out[j] = len(t & p) / k
    return out


def _scores(pred: np.ndarray, true: np.ndarray, k: int) -> dict:
    per_query = metrics.per_anchor_spearman_values(pred, true)
    prec = precision_of_teacher_top_k(pred, true, k)
    return {
        "per_anchor_spearman": float(per_query.mean()),
        "aggregated_spearman": metrics.aggregated_spearman(pred, true),
        "query_specific_spearman": metrics.query_specific_spearman(pred, true),
        f"precision_at_{k}": float(prec.mean()),
        "per_query_spearman": per_query.tolist(),
        "per_query_precision": prec.tolist(),
    }


SCORED = {"student": "student", "exact-query": "exact_query"}
"""The report's method row that a run's scorer (RunConfig.scorer) is judged by."""
WHO = {"student": "the encoder", "exact_query": "the exact-query scorer"}


def verdict(per_query: dict[str, np.ndarray], margin: float, n_boot: int, seed: int, n_pool: int,
            min_spearman: float = 0.5, method: str = "student") -> dict:
    """Bootstrap over held-out queries of mean(method − best baseline) per-anchor Spearman → one actionable line
    (``method``: the row of the scorer the run uses, student or exact_query)."""
    base = max(("untrained", "length"), key=lambda m: float(np.mean(per_query[m])))
    diff = np.asarray(per_query[method]) - np.asarray(per_query[base])
    rng = np.random.default_rng(seed)
    boots = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    lo, hi = (float(x) for x in np.quantile(boots, [0.025, 0.975]))
    gain = float(diff.mean())
    s, b = float(np.mean(per_query[method])), float(np.mean(per_query[base]))
    who = WHO.get(method, method)
    what = f"per-anchor Spearman {s:.3f} vs {b:.3f} for the {base} baseline (gain {gain:+.3f}, 95% CI {lo:+.3f} to {hi:+.3f})"
    if lo > 0 and gain >= margin and s >= min_spearman:
        level, line = "use", f"USE {who}'s scores: it beats the best baseline on held-out data ({what})."
    elif lo > 0 and gain >= margin:
        level, line = "weak", (f"WEAK: {who} beats the baselines but reproduces little of the teacher's ranking "
                               f"({what}; below {min_spearman:.2f}); use its scores to rank coarsely, not to filter "
                               f"precisely; stock more examples (sample.n_stock) or score a subset with the teacher.")
    elif gain > 0:
        level, line = "weak", (f"WEAK: {who} is not clearly better than the {base} baseline ({what}); stock more "
                               f"examples (sample.n_stock) or train longer (student.epochs) before relying on its scores.")
    else:
        level, line = "do-not-use", (f"DO NOT USE {who}'s scores: on held-out data it is no better than the {base} "
                                     f"baseline ({what}); stock more examples (sample.n_stock), or score a subset with "
                                     f"the teacher directly.")
    small = len(diff) < 10 or n_pool < 30
    if small:
        line += f" (The held-out block is small, {n_pool} pool × {len(diff)} queries: the interval is wide.)"
    return {"level": level, "line": line, "baseline": base, "gain": gain, "ci95": [lo, hi], "small_block": small,
            "method": method}


def _ood(enc, q_emb: np.ndarray, q_ids: list[str], per_query: np.ndarray, batch_size: int) -> dict:
    """NN similarity of each held-out query to the encoder's training queries (as ``attribute`` flags OOD),
    and whether it predicts the scorer's per-query fidelity."""
    from ..search.ood import OODConfig, build_references, ood_report
    from ..search.embed import normalise

    refs, note = build_references(enc, OODConfig(), batch_size)
    if "query" not in refs:
        return {"available": False, "note": note}
    rows = ood_report(refs, "query", q_ids, normalise(q_emb))
    sim = np.array([r["nn_similarity"] for r in rows])
    flag = np.array([bool(r["ood"]) for r in rows])
    rho = metrics.spearman(sim, per_query) if len(sim) > 2 else float("nan")
    return {
        "available": True,
        "threshold": refs["query"].threshold,
        "nn_similarity": sim.tolist(),
        "flagged": flag.tolist(),
        "n_flagged": int(flag.sum()),
        "spearman_similarity_vs_fidelity": rho,
        "mean_fidelity_flagged": float(per_query[flag].mean()) if flag.any() else None,
        "mean_fidelity_unflagged": float(per_query[~flag].mean()) if (~flag).any() else None,
    }


def _cost(layout: RunLayout) -> dict:
    rec = {s: layout.record(s) for s in ("mix", "sample", "stock", "labels", "train", "embed", "index", "attribute", "filter")}
    seconds = {s: r["seconds"] for s, r in rec.items() if r}
    split = json.loads(layout.path("sample", "split.json").read_text())
    st = (rec.get("stock") or {}).get("info", {})
    n_stocked = st.get("pool_n", 0) + st.get("queries_n", 0)
    per_ex = (st.get("pool_seconds", 0) + st.get("queries_seconds", 0)) / n_stocked if n_stocked else None
    n_pool = split["n_pool"]
    return {
        "seconds_by_step": seconds,
        "seconds_total": float(sum(seconds.values())),
        "stock_seconds_per_example": per_ex,
        "n_pool": n_pool,
        "n_stocked": n_stocked,
        "estimated_seconds_to_stock_whole_pool": per_ex * n_pool if per_ex else None,
    }


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = res["top_k"]
    keys = ["per_anchor_spearman", "aggregated_spearman", "query_specific_spearman", f"precision_at_{k}"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    shown = list(res["methods"])
    w = 0.8 / len(shown)
    for i, m in enumerate(shown):
        ax.bar(np.arange(len(keys)) + i * w, [res["methods"][m][x] for x in keys], w, label=m)
    ax.set_xticks(np.arange(len(keys)) + w * (len(shown) - 1) / 2)
    ax.set_xticklabels(["per-anchor ρ", "aggregated ρ", "query-specific ρ", f"precision@{k}"])
    ax.axhline(0, color="black", lw=0.5)
    ax.set_title(f"held-out block {res['block']['n_pool']} pool × {res['block']['n_queries']} queries vs the teacher")
    ax.legend()
    ax = axes[1]
    ood = res["ood"]
    if ood.get("available"):
        sim = np.array(ood["nn_similarity"])
        fid = np.array(res["methods"][res.get("scorer", "student")]["per_query_spearman"])
        flag = np.array(ood["flagged"])
        ax.scatter(sim[~flag], fid[~flag], label="in distribution")
        ax.scatter(sim[flag], fid[flag], color="red", label="flagged OOD")
        if ood["threshold"] is not None:
            ax.axvline(ood["threshold"], color="red", ls="--", lw=1, label="OOD threshold")
        ax.set_xlabel(f"query's NN similarity to the training queries ({res.get('scorer', 'student')})")
        ax.set_ylabel(f"{res.get('scorer', 'student')} per-query Spearman vs teacher")
        ax.set_title(f"does the OOD flag predict low fidelity? Spearman {ood['spearman_similarity_vs_fidelity']:+.2f}")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no OOD reference: " + str(ood.get("note")), ha="center", va="center", wrap=True)
        ax.set_axis_off()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def _markdown(res: dict) -> str:
    k = res["top_k"]
    c = res["cost"]
    lines = [
        f"# Fidelity report: {res['run']}",
        "",
        f"**Verdict.** {res['verdict']['line']}",
        "",
        f"Held-out block: {res['block']['n_pool']} pool examples × {res['block']['n_queries']} queries, stocked by the "
        f"teacher ({res['teacher']}) and never seen in training. The encoder was trained on "
        f"{res['block']['n_train_pool']} × {res['block']['n_train_queries']}.",
        "",
        f"| method | per-anchor ρ | aggregated ρ | query-specific ρ | precision@{k} of the teacher's top-{k} |",
        "|---|---|---|---|---|",
    ]
    for m in res["methods"]:
        r = res["methods"][m]
        lines.append(f"| {m} | {r['per_anchor_spearman']:.3f} | {r['aggregated_spearman']:.3f} | "
                     f"{r['query_specific_spearman']:.3f} | {r[f'precision_at_{k}']:.3f} |")
    lines += ["", ("Student: the trained encoder; " if "student" in res["methods"] else "")
              + "untrained: the same base encoder and head before distillation; length: −len(pool response)" + ("; exact_query: the queries' exact gradients, the pool's coordinates "
              "predicted by the exact_query step's head (influcoder.student.exact_query)" if "exact_query" in res["methods"] else "")
              + ". ρ = Spearman against the teacher's gradient cosine.", ""]
    rs = res.get("response_seen")
    if rs:
        lines += [f"What the encoder reads ({rs['text_mode']}, {rs['max_length']} tokens): " + "; ".join(
            f"{side}: response seen fully {v['full']:.0%}, in part {v['part']:.0%}, not at all {v['none']:.0%}"
            for side, v in (("held-out pool", rs["pool"]), ("held-out queries", rs["queries"]))) + ".", ""]
    ood = res["ood"]
    lines.append("## Does the OOD flag predict low fidelity?")
    if ood.get("available"):
        mf, mu = ood["mean_fidelity_flagged"], ood["mean_fidelity_unflagged"]
        lines += ["", f"{ood['n_flagged']} of {res['block']['n_queries']} held-out queries are flagged out of distribution "
                  f"(NN similarity to the training queries below {ood['threshold']:.3f}). Spearman between a query's NN "
                  f"similarity and the {res.get('scorer', 'student')}'s per-query ρ: {ood['spearman_similarity_vs_fidelity']:+.3f}. Mean per-query ρ: "
                  f"flagged {'—' if mf is None else f'{mf:.3f}'}, not flagged {'—' if mu is None else f'{mu:.3f}'}."]
    else:
        lines += ["", f"Not available: {ood.get('note')}"]
    est = c["estimated_seconds_to_stock_whole_pool"]
    lines += ["", "## Cost", "",
              f"This run: {c['seconds_total']:.0f} s in all (" + ", ".join(f"{s} {v:.0f} s" for s, v in c["seconds_by_step"].items())
              + "; a resumed step counts its last attempt only).",
              (f"Stocking cost {c['stock_seconds_per_example']:.2f} s per example: stocking the whole pool of {c['n_pool']} "
               f"would take about {est:.0f} s ({est / 3600:.1f} h), {est / max(c['seconds_total'], 1e-9):.1f}× this whole run."
               if est else "Stocking time unknown."),
              "", "![fidelity](fidelity.png)", ""]
    return "\n".join(lines)


def fidelity_report(cfg: "RunConfig", layout: RunLayout, *, active: set[str], log: Callable[[str], None] = print) -> dict:
    """Compute and write the report of a run (``cfg``, in the folder ``layout``) whose steps before the report are
    done; ``active``: the steps on in this run. Returns the report's JSON content."""
    from ..data.heuristics import length_scores
    from ..student.encoder import InfluenceEncoder
    from ..teacher.labels import load_labels

    split = json.loads(layout.path("sample", "split.json").read_text())
    pool, _ = read(layout.path("sample", "holdout_pool.jsonl"))
    queries, _ = read(layout.path("sample", "holdout_queries.jsonl"))
    lab = load_labels(layout.path("labels", "labels.npy"))
    pi = {p: i for i, p in enumerate(lab.pool_ids)}
    qi = {q: j for j, q in enumerate(lab.query_ids)}
    true = np.asarray(lab.matrix)[np.ix_([pi[r.id] for r in pool], [qi[r.id] for r in queries])].astype(np.float64)
    k = min(cfg.report.top_k, len(pool))

    from ..student.loading import load_encoder
    from ..core.hardware import resolve

    dev, prec = resolve(cfg.embed.device, cfg.embed.precision)  # the report scores as the embed step does
    scored = SCORED[cfg.scorer]
    s = cfg.student
    untrained = InfluenceEncoder.from_pretrained(s.encoder, pooling=s.pooling, projection_dim=s.projection_dim,
                                                 max_length=s.max_length, pool_prefix=s.pool_prefix,
                                                 query_prefix=s.query_prefix, seed=s.seed, device=dev)
    untrained.precision = prec
    bs = s.eval_batch_size
    preds = {}
    if "train" in active:  # the student (always under scorer student; beside exact-query when asked)
        student = load_encoder(layout.path("encoder"), device=dev, precision=prec, stage="report")
        q_student = student.encode_query(queries, batch_size=bs)
        preds["student"] = student.encode_document(pool, batch_size=bs) @ q_student.T
    preds["untrained"] = untrained.encode_document(pool, batch_size=bs) @ untrained.encode_query(queries, batch_size=bs).T
    preds["length"] = length_scores(pool, len(queries))
    eq = layout.path("exact_query", "heldout_scores.npy")
    if "exact_query" in active and eq.exists():  # exact-query scoring (the exact_query step)
        preds["exact_query"] = np.load(eq)
    # the scorer the run uses: its encoder is what the OOD check and the response-seen shares are about
    scorer = student if scored == "student" else load_encoder(layout.scorer(cfg.scorer), device=dev, precision=prec)
    q_emb = q_student if scored == "student" else scorer.encode_query(queries, batch_size=bs)
    methods = {m: _scores(np.asarray(p, dtype=np.float64), true, k) for m, p in preds.items()}
    per_query = {m: np.asarray(r["per_query_spearman"]) for m, r in methods.items()}
    res = {
        "format": "influcoder-fidelity/1",
        "run": str(layout.root),
        "teacher": lab.meta.get("teacher", {}).get("model"),
        "block": {"n_pool": len(pool), "n_queries": len(queries), "pool_ids": [r.id for r in pool],
                  "query_ids": [r.id for r in queries], "n_train_pool": len(split["train_pool_ids"]),
                  "n_train_queries": len(split["train_query_ids"])},
        "top_k": k,
        "device": dev,
        "precision": prec,
        "methods": methods,
        "scorer": scored,
        "verdict": verdict(per_query, cfg.report.margin, cfg.report.bootstrap, cfg.sample.seed, len(pool),
                           cfg.report.min_spearman, method=scored),
        "ood": _ood(scorer, q_emb, [r.id for r in queries], per_query[scored], bs),
        # how much of each held-out record's response the scorer's encoder reads (its input contract and token limit)
        "response_seen": {"text_mode": scorer.text_mode, "max_length": scorer.max_length,
                          "pool": scorer.response_seen(pool, "pool"), "queries": scorer.response_seen(queries, "query")},
        "cost": _cost(layout),
    }
    d = layout.path("report")
    d.mkdir(parents=True, exist_ok=True)
    _plot(res, d / "fidelity.png")
    atomic_write_text(d / "fidelity.json", json.dumps(res, indent=1))
    atomic_write_text(d / "fidelity.md", _markdown(res))
    log(res["verdict"]["line"])
    return res


WORDS = {"use": "USE", "weak": "WEAK", "do-not-use": "DO NOT USE"}
"""The verdict levels as the report, the last screen and the explorer print them."""

NEXT_STEP = {
    "use": "the scores reproduce the teacher on held-out data: rank and filter with them (influcoder attribute / filter).",
    "weak": "rank coarsely only; to improve: stock more examples (sample.n_stock), a longer token budget "
            "(teacher.max_length, student.max_length), or a larger encoder (student.encoder mpnet-base).",
    "do-not-use": "do not rank or filter with these scores; stock more examples (sample.n_stock), or score the "
                  "examples you care about with the teacher directly (influcoder stock + influence).",
}
"""What to do after each verdict (the README's "Reading the report" says the same)."""


def trust_summary(report: dict | None) -> dict:
    """How far a run's scores can be trusted, in the few fields every screen shows: the verdict word and level,
    the student's held-out per-anchor Spearman and the baseline it was compared with. ``report`` is the content of
    ``report/fidelity.json`` (None: the scores were never checked against the teacher)."""
    if not report or "verdict" not in report:
        return {"level": "unknown", "word": "NOT CHECKED", "per_anchor": None, "baseline": None,
                "baseline_per_anchor": None, "line": "No fidelity report: these scores were never compared with the "
                "teacher on held-out data; treat them as unchecked.", "next": NEXT_STEP["do-not-use"]}
    v = report["verdict"]
    m = report["methods"]
    base = v["baseline"]
    return {"level": v["level"], "word": WORDS.get(v["level"], v["level"].upper()),
            "per_anchor": float(m[report.get("scorer", "student")]["per_anchor_spearman"]), "baseline": base,
            "scorer": report.get("scorer", "student"),
            "baseline_per_anchor": float(m[base]["per_anchor_spearman"]),
            "n_pool": report["block"]["n_pool"], "n_queries": report["block"]["n_queries"],
            "line": v["line"], "next": (NEXT_NO_STOCK if v["level"] == "do-not-use" and
                                        curve_reaches_use(report.get("scorer", "student")) is False
                                        else NEXT_STEP.get(v["level"], ""))}


CURVE_FILE = Path(__file__).parent / "configs" / "stock_curve.json"
"""How fidelity grew with stocked pool rows on our data, per scorer (written by ``benchmarks/distill_ablation.py
--package-curve``): what the last screen's advice on stocking more is read from."""


NEXT_NO_STOCK = ("do not rank or filter with these scores; on data like the measured curve's, stocking more did not "
                 "get this scorer there (below) — score the examples you care about with the teacher directly "
                 "(influcoder stock + influence).")
"""The last screen's next step when the packaged curve shows no size reaching USE for the run's scorer."""


def _curve(scorer: str, curve_file: str | Path) -> tuple[dict, list[dict], dict | None] | None:
    """The packaged curve, ``scorer``'s measured points and the first that reached USE-level fidelity (≥ the USE
    threshold and above the length baseline; None if none did) — or None without a curve for ``scorer``."""
    p = Path(curve_file)
    c = json.loads(p.read_text()) if p.exists() else {}
    pts = c.get("scorers", {}).get(scorer)
    if not pts:
        return None
    hit = next((q for q in pts if q["per_anchor"] >= c["use_per_anchor"] and q["per_anchor"] > c["length_per_anchor"]),
               None)
    return c, pts, hit


def curve_reaches_use(scorer: str, curve_file: str | Path = CURVE_FILE) -> bool | None:
    """Whether ``scorer`` reached USE-level fidelity at some size of the packaged curve (None: no curve for it)."""
    found = _curve(scorer, curve_file)
    return None if found is None else found[2] is not None


def stock_advice(scorer: str, seconds_per_example: float | None, curve_file: str | Path = CURVE_FILE) -> str | None:
    """One line for a run short of USE: the size at which ``scorer`` (student or exact_query) reached USE-level
    fidelity on the measured curve and how long stocking that many takes at this run's rate — or that no size measured
    got there, so stocking more is not what it lacks on data like that. None without a curve for the scorer."""
    found = _curve(scorer, curve_file)
    if found is None:
        return None
    c, pts, hit = found
    need, base = c["use_per_anchor"], c["length_per_anchor"]
    name = {"student": "the student", "exact_query": "exact-query scoring"}.get(scorer, scorer)
    seen = ", ".join(f"{q['per_anchor']:.2f} at {q['n']:,}" for q in pts)
    cost = (lambda n: f"≈ {n * seconds_per_example / 60:.0f} min of stocking at this run's "
            f"{seconds_per_example:.2f} s per example") if seconds_per_example else (lambda n: "")
    if hit is not None:
        return (f"How much to stock: on {c['data']}, {name} reached per-anchor {hit['per_anchor']:.2f} (USE needs "
                f"≥ {need:.2f} and a gain over the length baseline, {base:.2f} there) at {hit['n']:,} stocked pool rows "
                f"(sample.n_stock {hit['n']}): {cost(hit['n'])}. Measured: {seen}.")
    big = pts[-1]["n"]
    return (f"How much to stock: on {c['data']}, {name} reached USE-level fidelity at no size measured (per-anchor "
            f"{seen} stocked pool rows; USE needs ≥ {need:.2f}, the length baseline was {base:.2f}): stocking more is "
            f"not what it lacks on data like that — score the examples you care about with the teacher directly. "
            f"The largest size measured, {big:,} rows, would be {cost(big) or 'unknown here'}.")


def last_screen(root: str | Path) -> str:
    """What ``influcoder run`` (and ``make demo``) prints at its end: what was done, the verdict with its numbers,
    where the report and the top attributions are, and the command that explores them."""
    root = Path(root)
    m = json.loads((root / "run_manifest.json").read_text())
    rep_p = root / "report" / "fidelity.json"
    rep = json.loads(rep_p.read_text()) if rep_p.exists() else None
    t = trust_summary(rep)
    out = [f"Run folder: {root}   (steps done: {', '.join(m.get('steps_done', []))})"]
    if rep is not None:
        c = rep["cost"]
        b = rep["block"]
        fitted = ("an encoder trained" if rep.get("scorer", "student") == "student" else
                  "an exact-query head (the queries' own gradients, the pool's predicted) fitted")
        out.append(f"Done: {c['n_stocked']} examples stocked with the teacher ({rep.get('teacher')}), {fitted} on "
                   f"{b['n_train_pool']} pool × {b['n_train_queries']} queries of their influence labels, the whole pool "
                   f"of {c['n_pool']} embedded and indexed, in {c['seconds_total']:.0f} s.")
        out.append(f"Verdict: {t['word']} — held-out per-anchor Spearman {t['per_anchor']:.3f} vs {t['baseline_per_anchor']:.3f} "
                   f"for the {t['baseline']} baseline ({b['n_pool']} pool × {b['n_queries']} queries never trained on).")
        out.append(f"Next: {t['next']}")
        rs = rep.get("response_seen")
        if rs:
            out.append("Read by the encoder: " + "; ".join(
                f"{side} responses fully {v['full']:.0%} / in part {v['part']:.0%} / not at all {v['none']:.0%}"
                for side, v in (("held-out pool", rs["pool"]), ("held-out query", rs["queries"]))) + ".")
        est = c.get("estimated_seconds_to_stock_whole_pool")
        if est and t["level"] != "use":
            out.append(f"      Stocking ran at {c['stock_seconds_per_example']:.2f} s per example here: the whole pool "
                       f"({c['n_pool']}) would take ≈ {est / 60:.0f} min.")
        advice = stock_advice(rep.get("scorer", "student"), c.get("stock_seconds_per_example")) if t["level"] != "use" else None
        if advice:
            out.append(advice)
        out.append(f"Report: {root / 'report' / 'fidelity.md'}   (figure: {root / 'report' / 'fidelity.png'})")
    else:
        out.append(f"Verdict: {t['word']} — {t['line']}")
    if m.get("attribution"):
        out.append(f"Top attributions: {root / m['attribution']}")
    if m.get("filter"):
        out.append(f"Filtered data: {root / m['filter']}")
    out.append(f"Explore: influcoder serve {root}   (then open http://127.0.0.1:8000/)")
    return "\n".join(out)


def read(path: Path):
    from ..data.records import read_records

    return read_records(path)
