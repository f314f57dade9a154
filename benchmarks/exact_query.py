"""Exact-query scoring (issue 24) against the teacher on experiment 1's test blocks, with its oracles.

Data: experiment 1's inputs (``configs/exp1_ranking.yaml``: 1,350 Alpaca/Dolly/Code-Alpaca pool examples, 440 BBH
queries, SmolLM2-135M-Instruct LoRA gradients, CountSketch 65,536). For each split seed the 200 × 200 test block is
drawn exactly as ``influcoder evaluate`` draws it (``evaluate.ranking_split``), so the rows compare with the
committed experiment-1 tables (LoGra 0.736, the distilled student 0.413). The teacher's truth on the test block is
the cosine of the stored gradients.

The scorer (``influcoder.student.exact_query``): queries keep their exact gradient, projected on V, the top-k principal
directions of the *training* gradients; a ridge head predicts a pool example's coordinates from the untrained
encoder's embedding of its text and its 10 form features; score = ⟨ĉ_p, c_q⟩. Everything is chosen on a
selection block inside the training part (250 pool × 60 queries, seeded as ``distill_ablation.py`` draws it): the
basis (training pool + queries, or queries only), k, the ridge α, the features, and the text the encoder reads
(``record_to_text`` cut from the right, as the student reads today, or ``budget_text``: the response kept, the
prompt cut from the left) at 128 or 256 tokens. The chosen setting is refitted on the whole training part and
scored once on the test block. Rows also shown on the test block: each text variant at its own best selection
setting, the symmetric form (ridge on both sides), and oracles (true test-pool coordinates in the training basis).

    python benchmarks/exact_query.py --pool-data work/full/pool.jsonl --query-data work/full/bbh.jsonl \\
        --pool-store work/full/pool --query-store work/full/bbh --out benchmarks/results/exact_query_exp1

Embeddings are cached under ``--work`` (so a rerun is fast); the result file is regenerated exactly from the same
inputs (every step is deterministic; timings are the only figures that change).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool-data")
    ap.add_argument("--query-data")
    ap.add_argument("--pool-store")
    ap.add_argument("--query-store")
    ap.add_argument("--run-dir", help="instead of the four above: a finished `influcoder run` folder (its stocked "
                    "sample and stores); seed 0 is the run's own held-out block, other seeds re-split the stocked "
                    "rows at the same sizes")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--test-pool", type=int, default=200)
    ap.add_argument("--test-queries", type=int, default=200)
    ap.add_argument("--sel-pool", type=int, default=250)
    ap.add_argument("--sel-queries", type=int, default=60)
    ap.add_argument("--encoder", default="minilm-l6")
    ap.add_argument("--ks", default="16,32,64,128,200")
    ap.add_argument("--alphas", default="1,10,100,1000,10000")
    ap.add_argument("--work", default="work/exact_query")
    ap.add_argument("--out", default="benchmarks/results/exact_query_exp1")
    ap.add_argument("--toxicity", help="instead: a filtering case, the toxicity config of `influcoder evaluate` "
                    "(e.g. configs/exp2_toxicity.yaml): exact teacher gradients, AUPRC of the aggregated score")
    args = ap.parse_args()
    if args.toxicity:
        return run_toxicity(args)

    from distill_ablation import exp1_training_part, machine_load

    from influcoder.core import metrics as M
    from influcoder.student.encoder import InfluenceEncoder
    from influcoder.student.texts import budget_text
    from influcoder.student.exact_query import coordinates, fit_ridge_head, form_features, principal_basis, unit_rows
    from influcoder.core.hardware import cpu_info
    from influcoder.data.records import FieldSpec, read_records, record_to_text
    from influcoder.teacher.store import open_store

    t_start = time.time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    spec = FieldSpec.from_names(preset="prompt-response")
    run_split = None
    if args.run_dir:
        rd = Path(args.run_dir)
        args.pool_data, args.query_data = str(rd / "sample" / "stock_pool.jsonl"), str(rd / "sample" / "stock_queries.jsonl")
        args.pool_store, args.query_store = str(rd / "stores" / "pool"), str(rd / "stores" / "queries")
        run_split = json.loads((rd / "sample" / "split.json").read_text())
    elif not all((args.pool_data, args.query_data, args.pool_store, args.query_store)):
        ap.error("give --pool-data, --query-data, --pool-store and --query-store, or --run-dir")
    pool_all, _ = read_records(args.pool_data, spec)
    query_all, _ = read_records(args.query_data, spec)
    ps, qs = open_store(args.pool_store), open_store(args.query_store)
    prow = {i: k for k, i in enumerate(ps.ids)}
    qrow = {i: k for k, i in enumerate(qs.ids)}
    Up = unit_rows(np.asarray(ps.matrix)[[prow[r.id] for r in pool_all]])
    Uq = unit_rows(np.asarray(qs.matrix)[[qrow[r.id] for r in query_all]])
    print(f"gradients: pool {Up.shape}, queries {Uq.shape}", flush=True)

    # ------------------------------------------------------------------ features (cached)
    enc = InfluenceEncoder.from_pretrained(args.encoder)
    tok = enc.model.tokenizer
    texts, seen, feat_seconds = {}, {}, {}
    for variant, L in itertools.product(("right-cut", "response-kept"), (128, 256)):
        key = f"{variant}-{L}"
        path = work / f"emb-{args.encoder}-{key}.npy"
        if variant == "right-cut":
            tx = [record_to_text(r) for r in pool_all]
            # how much of the response a right-cut text shows: tokens of prompt+"\n" before it
            vis = []
            for r in pool_all:
                n_p = len(tok(r.prompt + "\n", add_special_tokens=False)["input_ids"]) if r.prompt else 0
                n_r = len(tok(r.response, add_special_tokens=False)["input_ids"])
                room = L - 2 - n_p
                vis.append("full" if room >= n_r else ("part" if room > 0 else "none"))
        else:
            out = [budget_text(r, tok, L) for r in pool_all]
            tx, vis = [t for t, _ in out], [v for _, v in out]
        seen[key] = {v: vis.count(v) / len(vis) for v in ("full", "part", "none")}
        if not path.exists():
            enc.model.max_seq_length = L
            t0 = time.perf_counter()
            E = enc.encode(tx, batch_size=32, side="pool")
            feat_seconds[key] = (time.perf_counter() - t0) / len(tx)
            np.save(path, E)
            (work / f"emb-{args.encoder}-{key}.json").write_text(json.dumps({"seconds_per_example": feat_seconds[key]}))
        else:
            feat_seconds[key] = json.loads((work / f"emb-{args.encoder}-{key}.json").read_text())["seconds_per_example"]
        texts[key] = np.load(path)
        print(f"features {key}: {feat_seconds[key] * 1000:.1f} ms/ex, response seen {seen[key]}", flush=True)
    views = {}
    for view, L in itertools.product(("response", "prompt"), (128, 256)):
        key = f"{view}-{L}"
        path = work / f"emb-{args.encoder}-{key}.npy"
        if not path.exists():
            enc.model.max_seq_length = L
            tx = [(r.response if view == "response" else r.prompt) or " " for r in pool_all]
            np.save(path, enc.encode(tx, batch_size=32, side="pool"))
        views[key] = np.load(path)
    F_form = form_features(pool_all)
    # the untrained encoder's own query embeddings (the symmetric baseline's query side and the 'semantic' row)
    qpath = work / f"qemb-{args.encoder}-right-cut-128.npy"
    if not qpath.exists():
        enc.model.max_seq_length = 128
        np.save(qpath, enc.encode([record_to_text(r) for r in query_all], batch_size=32, side="query"))
    Eq = np.load(qpath)

    def feats(key: str, form: bool, views_used: str = "text") -> np.ndarray:
        L = key.rsplit("-", 1)[1]
        parts = [texts[key]]
        if "response" in views_used:
            parts.append(views[f"response-{L}"])
        if "prompt" in views_used:
            parts.append(views[f"prompt-{L}"])
        if form:
            parts.append(F_form)
        return np.concatenate(parts, axis=1)

    ks = [int(x) for x in args.ks.split(",")]
    alphas = [float(x) for x in args.alphas.split(",")]

    def metrics(pred, truth):
        return {"per_anchor": M.per_anchor_spearman(pred, truth), "query_specific": M.query_specific_spearman(pred, truth),
                "aggregated": M.aggregated_spearman(pred, truth)}

    kmax = max(ks)
    bases: dict = {}

    def basis_coords(fit_p, fit_q, basis: str):
        """(pool coordinates, query coordinates) of every row in the top-kmax basis of this fit set (cached)."""
        key = (basis, fit_p.tobytes(), fit_q.tobytes())
        if key not in bases:
            B = np.concatenate([Up[fit_p], Uq[fit_q]]) if basis == "train" else Uq[fit_q]
            V, _ = principal_basis(B, min(kmax, len(B)))
            bases.clear()  # one fit set at a time
            bases[key] = (coordinates(Up, V), coordinates(Uq, V))
        return bases[key]

    Fq_form = form_features(query_all)

    def fit_score(fit_p, fit_q, ev_p, ev_q, basis: str, k: int, alpha: float, key: str, form: bool, views_used="text",
                  symmetric=False):
        Cp, Cq = basis_coords(fit_p, fit_q, basis)
        Cp, Cq = Cp[:, :k], Cq[:, :k]
        X = feats(key, form, views_used)
        head = fit_ridge_head(X[fit_p], Cp[fit_p], alpha)
        cp = head.predict(X[ev_p])
        if symmetric:  # the query side learned from text too (no query gradient at scoring time)
            Xq = np.concatenate([Eq, Fq_form], axis=1) if form else Eq
            hq = fit_ridge_head(Xq[fit_q], Cq[fit_q], alpha)
            cq = hq.predict(Xq[ev_q])
        else:
            cq = Cq[ev_q]
        return cp @ cq.T

    grid = [(basis, k, a, key, form, vu) for basis in ("train", "queries") for k in ks for a in alphas
            for key in texts for form in (False, True) for vu in ("text", "text+response", "text+response+prompt")]
    seeds = [int(x) for x in args.seeds.split(",")]
    per_seed = []
    for seed in seeds:
        t_seed = time.time()
        if run_split is not None:
            pid = {r.id: i for i, r in enumerate(pool_all)}
            qid = {r.id: j for j, r in enumerate(query_all)}
            te_p = np.array([pid[i] for i in run_split["holdout_pool_ids"]])
            te_q = np.array([qid[i] for i in run_split["holdout_query_ids"]])
            if seed:  # another split of the same stocked rows, same sizes
                r = np.random.default_rng(seed)
                te_p = np.sort(r.permutation(len(pool_all))[:len(te_p)])
                te_q = np.sort(r.permutation(len(query_all))[:len(te_q)])
            tr_p = np.setdiff1d(np.arange(len(pool_all)), te_p)
            tr_q = np.setdiff1d(np.arange(len(query_all)), te_q)
        else:
            sp = exp1_training_part(pool_all, query_all, seed, args.test_pool, args.test_queries)
            tr_p, tr_q, te_p, te_q = (np.asarray(sp[k]) for k in ("train_pool", "train_queries", "test_pool", "test_queries"))
        rng = np.random.default_rng(1000 + seed)  # the selection block as distill_ablation.py draws it
        pp, qq = rng.permutation(tr_p), rng.permutation(tr_q)
        sel_p, fit_p = np.sort(pp[:args.sel_pool]), np.sort(pp[args.sel_pool:])
        sel_q, fit_q = np.sort(qq[:args.sel_queries]), np.sort(qq[args.sel_queries:])
        sel_truth = Up[sel_p] @ Uq[sel_q].T
        truth = Up[te_p] @ Uq[te_q].T
        # selection: every setting on the selection block
        sel = []
        for basis, k, a, key, form, vu in sorted(grid):
            if basis == "queries" and k > len(fit_q):
                continue
            pred = fit_score(fit_p, fit_q, sel_p, sel_q, basis, k, a, key, form, vu)
            sel.append({"basis": basis, "k": k, "alpha": a, "text": key, "form": form, "views": vu,
                        **metrics(pred, sel_truth)})
        print(f"seed {seed}: {len(sel)} settings scored on the selection block", flush=True)
        best = max(sel, key=lambda r: r["per_anchor"])
        best_by_text = {key: max((r for r in sel if r["text"] == key), key=lambda r: r["per_anchor"]) for key in texts}
        print(f"seed {seed}: selected {best}", flush=True)
        rows = {}

        def test_row(name, r, symmetric=False):
            t0 = time.perf_counter()
            pred = fit_score(tr_p, tr_q, te_p, te_q, r["basis"], r["k"], r["alpha"], r["text"], r["form"], r["views"],
                             symmetric)
            rows[name] = {**metrics(pred, truth),
                          "setting": {k: r[k] for k in ("basis", "k", "alpha", "text", "form", "views")},
                          "selection_per_anchor": r["per_anchor"], "fit_and_score_seconds": time.perf_counter() - t0,
                          "feature_ms_per_example": feat_seconds[r["text"]] * 1000}

        test_row("exact-query (selected)", best)
        # non-linear pool factor: boosted trees (prior_trees.fit_trees, the student's) predict the first m coordinates
        # from the text embedding + form features instead of the ridge; m chosen on the selection block
        from influcoder.student.prior_trees import fit_trees

        def with_trees(fit_pp, fit_qq, ev_p, ev_q, r, m):
            Cp, Cq = basis_coords(fit_pp, fit_qq, r["basis"])
            Cp, Cq = Cp[:, :r["k"]], Cq[:, :r["k"]]
            X = feats(r["text"], r["form"], r["views"])
            cp = fit_ridge_head(X[fit_pp], Cp[fit_pp], r["alpha"]).predict(X[ev_p])
            Xt = feats(r["text"], True, "text")
            for j in range(m):
                cp[:, j] = fit_trees(Xt[fit_pp], Cp[fit_pp, j], seed=seed)[0].predict(Xt[ev_p])
            return cp @ Cq[ev_q].T

        tree_sel = {m: metrics(with_trees(fit_p, fit_q, sel_p, sel_q, best, m), sel_truth) for m in (1, 2, 4)}
        m_best = max(tree_sel, key=lambda m: tree_sel[m]["per_anchor"])
        t0 = time.perf_counter()
        rows["exact-query + trees on the first m coordinates (m selected)"] = {
            **metrics(with_trees(tr_p, tr_q, te_p, te_q, best, m_best), truth), "m": m_best,
            "selection": {str(m): v for m, v in tree_sel.items()}, "fit_and_score_seconds": time.perf_counter() - t0}
        print(f"seed {seed}: trees on selection {tree_sel}", flush=True)
        best_q = max(sel, key=lambda r: r["query_specific"])
        test_row("exact-query (selected on query-specific ρ)", best_q)
        for vu in ("text", "text+response", "text+response+prompt"):
            test_row(f"exact-query, views {vu}", max((r for r in sel if r["views"] == vu), key=lambda r: r["per_anchor"]))
        for key, r in best_by_text.items():
            test_row(f"exact-query, text {key}", r)
        test_row("symmetric ridge (selected setting, both sides predicted)", best, symmetric=True)
        # oracles: the true test-pool coordinates in the training basis of the selected kind
        B = np.concatenate([Up[tr_p], Uq[tr_q]])
        for k in (8, 32, 128):
            Vk, _ = principal_basis(B, k)
            rows[f"oracle: true pool coordinates, k = {k}"] = metrics(coordinates(Up[te_p], Vk) @ coordinates(Uq[te_q], Vk).T, truth)
        rows["baseline: length (shorter response)"] = metrics(
            np.repeat(-np.array([len(pool_all[i].response) for i in te_p], float)[:, None], len(te_q), 1), truth)
        rows["baseline: untrained encoder cosine"] = metrics(texts["right-cut-128"][te_p] @ Eq[te_q].T, truth)
        per_seed.append({"seed": seed, "n_train_pool": len(tr_p), "n_train_queries": len(tr_q),
                         "selected": best, "selection": sel, "test": rows, "seconds": time.time() - t_seed})
        print(json.dumps({n: {m: round(v[m], 3) for m in ("per_anchor", "query_specific", "aggregated")}
                          for n, v in rows.items()}, indent=1), flush=True)

    names = list(per_seed[0]["test"])
    summary = {}
    for n in names:
        summary[n] = {}
        for m in ("per_anchor", "query_specific", "aggregated"):
            v = [p["test"][n][m] for p in per_seed]
            summary[n][m] = {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                             "per_seed": v}
    if run_split is not None:
        data = (f"Data: the stocked sample of the run `{args.run_dir}` ({len(pool_all)} pool × {len(query_all)} queries, its "
                f"teacher `{ps.manifest.get('model')}`, projection {ps.manifest.get('projection', {}).get('kind')} "
                f"{ps.manifest.get('projection', {}).get('dim')}, {ps.manifest.get('dtype')}); seed 0 is the run's own "
                f"held-out block ({len(run_split['holdout_pool_ids'])} × {len(run_split['holdout_query_ids'])}), other seeds "
                f"re-split the stocked rows at the same sizes; selection block {args.sel_pool} × {args.sel_queries} inside "
                "the training part.")
    else:
        data = ("Teacher: cosine of SmolLM2-135M-Instruct LoRA gradients (CountSketch 65,536) — the committed experiment 1's. "
                f"Test blocks: {args.test_pool} pool × {args.test_queries} BBH queries per split seed, as `influcoder evaluate` "
                f"draws them; every setting chosen on a {args.sel_pool} × {args.sel_queries} selection block inside the "
                "training part.")
    res = {"command": "python " + " ".join(sys.argv), "cpu": cpu_info(), "load": machine_load(), "data": data,
           "response_seen": seen, "feature_ms_per_example": {k: v * 1000 for k, v in feat_seconds.items()},
           "summary": summary, "per_seed": per_seed, "seconds_total": time.time() - t_start}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=float))
    out.with_suffix(".md").write_text(markdown(res))
    print(out.with_suffix(".md").read_text())


def run_toxicity(args) -> None:
    """The filtering case: planted unsafe rows in a benign pool, found by the mean score over unsafe references
    (AUPRC), per variant (Het / Hom). Teacher: the cosine of exact LoRA gradients (the config's rank and seed);
    exact-query: the basis from the student's training rows (benign + unsafe, never in the pool or references),
    the head fitted on them, its setting chosen on a quarter of them held out (per-anchor Spearman)."""
    from distill_ablation import machine_load

    from influcoder.core import metrics as M
    from influcoder.eval.features import DecoderFeatures
    from influcoder.student.encoder import InfluenceEncoder
    from influcoder.eval.evaluate import load_config
    from influcoder.eval.datasets import toxicity_data
    from influcoder.student.exact_query import coordinates, form_features, select_and_fit
    from influcoder.core.hardware import cpu_info, resolve
    from influcoder.student.prior_trees import fit_trees

    t_start = time.time()
    cfg = load_config(args.toxicity)
    dev, prec = resolve(cfg.device, cfg.precision)
    feats_dec = DecoderFeatures(cfg.model, max_length=cfg.max_length, batch_size=cfg.batch_size,
                                token_budget=cfg.token_budget, cache_dir=Path(args.work) / "features", progress=True,
                                device=dev, precision=prec)
    rank, lseed = int(cfg.teacher.get("rank", 8)), int(cfg.teacher.get("lora_seed", 0))
    enc = InfluenceEncoder.from_pretrained(args.encoder)
    ks = [int(x) for x in args.ks.split(",")]
    alphas = [float(x) for x in args.alphas.split(",")]
    per_seed = []
    for seed in [int(x) for x in args.seeds.split(",")]:
        td = toxicity_data(cfg.data, seed)
        pool = td["variants"][next(iter(td["variants"]))]["pool"]
        assert all(v["pool"] == pool for v in td["variants"].values())
        trp, trq = td["train_pool"], td["train_queries"]
        refs = td["refs"]
        recs = pool + trp + trq + [r for v in refs.values() for r in v]
        g = feats_dec.lora(recs, rank, lseed)
        U = np.asarray(g["unit"], dtype=np.float32)
        at = {}
        o = 0
        for name, part in (("pool", pool), ("trp", trp), ("trq", trq), *[(f"ref:{k}", v) for k, v in refs.items()]):
            at[name] = U[o:o + len(part)]
            o += len(part)
        texts = {r.id: r for r in recs}
        Ep = enc.encode(pool + trp, side="pool")
        X_all = np.concatenate([Ep, form_features(pool + trp)], axis=1)
        Xp, Xt = X_all[:len(pool)], X_all[len(pool):]
        # the basis, k and α chosen on a quarter of the training pool (× the training queries), as the run's
        # exact_query step chooses them (exact_query.select_and_fit), then refitted on the whole training part
        V, head, best = select_and_fit(Xt, at["trp"], at["trq"], ks, alphas, 0.25, seed)
        Ct = coordinates(at["trp"], V)
        cp = head.predict(Xp)
        cp_trees = cp.copy()
        cp_trees[:, 0] = fit_trees(Xt, Ct[:, 0], seed=seed)[0].predict(Xp)
        Eq_all = {k: enc.encode(v, side="query") for k, v in refs.items()}
        rows = {}
        for vname, v in td["variants"].items():
            pos = np.asarray(v["positive"], dtype=bool)
            Cr = coordinates(at[f"ref:{vname}"], V)
            scores = {
                "teacher (exact gradient cosine)": at["pool"] @ at[f"ref:{vname}"].T,
                "oracle: true pool coordinates in the training basis": coordinates(at["pool"], V) @ Cr.T,
                "exact-query (ridge)": cp @ Cr.T,
                "exact-query (ridge + trees on the first coordinate)": cp_trees @ Cr.T,
                "untrained encoder cosine (semantic)": Ep[:len(pool)] @ Eq_all[vname].T,
                "length (shorter response)": np.repeat(-np.array([len(r.response) for r in pool], float)[:, None],
                                                       len(refs[vname]), 1),
            }
            rows[vname] = {n: {"auprc": M.auprc(M.aggregate_scores(s), pos),
                               "per_anchor_vs_teacher": M.per_anchor_spearman(s, scores["teacher (exact gradient cosine)"])}
                           for n, s in scores.items()}
            print(seed, vname, {n: round(r["auprc"], 3) for n, r in rows[vname].items()}, flush=True)
        per_seed.append({"seed": seed, "selected": best, "n_pool": len(pool), "n_positive": int(pos.sum()),
                         "n_train_pool": len(trp), "n_train_queries": len(trq), "variants": rows})
    res = {"command": "python " + " ".join(sys.argv), "cpu": cpu_info(), "load": machine_load(), "compute": [dev, prec],
           "per_seed": per_seed, "seconds_total": time.time() - t_start}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=float))
    from influcoder.core.hardware import cpu_line

    lines = ["# Exact-query scoring on a filtering case (issue 24)", "", f"Command: `{res['command']}`", "",
             f"CPU: {cpu_line(res['cpu'])}; decoder on {dev} in {prec}.", "",
             f"Data: `{args.toxicity}` (planted XSTest unsafe completions in a benign pool; Het / Hom references), "
             f"split seeds {args.seeds}. AUPRC of each pool row's mean score over the references; per-anchor: Spearman "
             "against the teacher's scores. Exact-query's setting chosen on a quarter of the student's training rows.", "",
             "| scorer | " + " | ".join(f"AUPRC {v} | per-anchor {v}" for v in per_seed[0]["variants"]) + " |",
             "|---|" + "---|---|" * len(per_seed[0]["variants"])]
    for n in per_seed[0]["variants"][next(iter(per_seed[0]["variants"]))]:
        cells = []
        for v in per_seed[0]["variants"]:
            a = [p["variants"][v][n]["auprc"] for p in per_seed]
            r = [p["variants"][v][n]["per_anchor_vs_teacher"] for p in per_seed]
            cells += [f"{np.mean(a):.3f} ± {np.std(a, ddof=1) if len(a) > 1 else 0:.3f}",
                      f"{np.mean(r):.3f} ± {np.std(r, ddof=1) if len(r) > 1 else 0:.3f}"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Selected per seed: " + "; ".join(f"seed {p['seed']}: basis {p['selected']['basis']}, k "
              f"{p['selected']['k']}, α {p['selected']['alpha']:g}" for p in per_seed), ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print(out.with_suffix(".md").read_text())


def markdown(res: dict) -> str:
    from influcoder.core.hardware import cpu_line

    s = res["summary"]
    lines = ["# Exact-query scoring against the teacher on held-out blocks (issue 24)", "",
             f"Command: `{res['command']}`", "", f"CPU: {cpu_line(res['cpu'])}; load at the end: "
             f"{res['load'].get('loadavg_1m', 0):.1f} (1 min).", "", res["data"] + " Mean ± std over the seeds.", "",
             "| scorer | per-anchor ρ | query-specific ρ | aggregated ρ |", "|---|---|---|---|"]
    for n, v in s.items():
        lines.append(f"| {n} | " + " | ".join(f"{v[m]['mean']:.3f} ± {v[m]['std']:.3f}" for m in
                                              ("per_anchor", "query_specific", "aggregated")) + " |")
    lines += ["", "Settings chosen per seed (selection block per-anchor):", ""]
    for p in res["per_seed"]:
        b = p["selected"]
        lines.append(f"- seed {p['seed']}: basis {b['basis']}, k {b['k']}, α {b['alpha']:g}, text {b['text']}, "
                     f"views {b['views']}, form features {b['form']} (selection {b['per_anchor']:.3f}); trained on "
                     f"{p['n_train_pool']} × {p['n_train_queries']}")
    lines += ["", "Share of pool rows whose response the encoder reads fully / in part / not at all:", ""]
    for k, v in res["response_seen"].items():
        lines.append(f"- {k}: {v['full']:.1%} / {v['part']:.1%} / {v['none']:.1%}")
    lines += ["", "Featurisation (untrained MiniLM embedding) per pool example: " + ", ".join(
        f"{k} {v:.1f} ms" for k, v in res["feature_ms_per_example"].items()) + " (i.e. × 1,000 = seconds per 1,000 "
              "rows); the form features and the ridge head add < 1 ms. Queries are stocked with the teacher "
              "(one forward + backward each), as for the teacher's labels.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
