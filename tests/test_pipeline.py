"""`influcoder run` / Pipeline on tiny random models: the run folder contract, caching, resume after a
kill in every step (same scores as an uninterrupted run), recompute on a config change, the report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from influcoder.run.config import STEPS, RunConfig
from influcoder.core.config import from_dict, load_yaml, save_yaml, to_dict
from influcoder.run.pipeline import Pipeline

from test_embed import make_tiny_encoder

WORDS = ["red", "blue", "cat", "dog", "rain", "night", "prime", "water", "paris", "mass"]


def write_data(root: Path, n_pool: int = 40, n_query: int = 12, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    pool = [{"id": f"p{i}", "prompt": f"say {' '.join(rng.choice(WORDS, 2, replace=False))}",
             "response": " ".join([str(rng.choice(WORDS))] * int(rng.integers(1, 6)))} for i in range(n_pool)]
    queries = [{"id": f"q{j}", "prompt": f"what is {rng.choice(WORDS)}", "response": str(rng.choice(WORDS))}
               for j in range(n_query)]
    pf, qf = root / "pool.jsonl", root / "queries.jsonl"
    pf.write_text("".join(json.dumps(r) + "\n" for r in pool))
    qf.write_text("".join(json.dumps(r) + "\n" for r in queries))
    return pf, qf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("pipe")
    from conftest import make_tiny_llama, make_tokenizer

    dec = root / "dec"
    tok = make_tokenizer()
    make_tiny_llama(len(tok)).save_pretrained(dec)
    tok.save_pretrained(dec)
    enc = make_tiny_encoder(root / "enc")
    pf, qf = write_data(root)
    return {"dec": dec, "enc": enc, "pool": pf, "queries": qf, "root": root}


def config_dict(tiny, out: Path, **over) -> dict:
    d = {
        "out": str(out),
        "pool": {"path": str(tiny["pool"])},
        "queries": {"path": str(tiny["queries"])},
        "sample": {"n_stock": 16, "holdout_pool": 8, "holdout_queries": 4, "candidates": 30, "method": "diverse"},
        "teacher": {"model": str(tiny["dec"]), "proj_dim": 32, "max_length": 64, "shard_size": 8},
        "student": {"encoder": str(tiny["enc"]), "epochs": 2, "queries_per_batch": 4, "candidates": 6,
                    "val_pool": 4, "val_queries": 2, "max_length": 32, "lr": 1e-3, "tau": 0.5},
        "embed": {"shard_size": 8, "dtype": "float32"},
        "attribute": {"top_k": 3},
        "filter": {"enabled": True, "fraction": 0.25},
        "report": {"top_k": 3, "bootstrap": 200},
    }
    for k, v in over.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    return d


def scores(out: Path) -> dict:
    rep = json.loads((out / "report" / "fidelity.json").read_text())
    att = [json.loads(x) for x in (out / "attribution" / "attribution.jsonl").read_text().splitlines()]
    return {"methods": {m: {k: v for k, v in r.items()} for m, r in rep["methods"].items()},
            "verdict": rep["verdict"]["level"],
            "attribution": [(r["query_id"], r["rank"], r["id"], r["score"]) for r in att],
            "filter": [(r["id"], r["score"]) for r in map(json.loads, (out / "filter" / "scores.jsonl").read_text().splitlines())]}


def assert_same(a: dict, b: dict) -> None:
    # the same ranking exactly; scores to 1e-5 (a run in another process may use another thread count, whose
    # float sums differ in the last bits: rounding both to 5 decimals flipped a digit once)
    assert [x[:3] for x in a["attribution"]] == [x[:3] for x in b["attribution"]]
    np.testing.assert_allclose([x[3] for x in a["attribution"]], [x[3] for x in b["attribution"]], atol=1e-5)
    assert a["verdict"] == b["verdict"]
    for m in a["methods"]:
        for k, v in a["methods"][m].items():
            np.testing.assert_allclose(b["methods"][m][k], v, atol=1e-5, err_msg=f"{m}.{k}")
    assert [i for i, _ in a["filter"]] == [i for i, _ in b["filter"]]
    np.testing.assert_allclose([x for _, x in a["filter"]], [x for _, x in b["filter"]], atol=1e-5)


@pytest.fixture(scope="module")
def reference(tiny):
    out = tiny["root"] / "ref"
    cfg = from_dict(RunConfig, config_dict(tiny, out))
    Pipeline(cfg, progress=False).run()
    return out, scores(out)


def test_run_folder_follows_the_contract(tiny, reference):
    out, _ = reference
    m = json.loads((out / "run_manifest.json").read_text())
    assert m["format"] == "influcoder-run/1" and m["config"] == "config.yaml"
    for key in ("encoder", "embeddings", "index", "labels", "report"):
        assert (out / m[key]).exists(), key
    assert m["steps_done"] == [s for s in STEPS if s not in ("mix", "exact_query")]
    assert m["pool"]["path"] == str(Path(tiny["pool"]).resolve()) and Path(m["pool"]["path"]).is_absolute()
    assert json.loads((out / "index" / "index_meta.json").read_text())["n"] == 40  # the WHOLE pool is indexed
    # the resolved config reads back to the same config
    assert to_dict(load_yaml(RunConfig, out / "config.yaml")) == to_dict(from_dict(RunConfig, config_dict(tiny, out)))
    split = json.loads((out / "sample" / "split.json").read_text())
    trained = set(json.loads((out / "encoder" / "split.json").read_text())["train_pool_ids"]) | \
        set(json.loads((out / "encoder" / "split.json").read_text())["val_pool_ids"])
    assert not set(split["holdout_pool_ids"]) & trained and len(split["train_pool_ids"]) == 16
    trained_q = set(json.loads((out / "encoder" / "split.json").read_text())["train_query_ids"])
    assert not set(split["holdout_query_ids"]) & trained_q and len(split["holdout_query_ids"]) == 4
    for step in [s for s in STEPS[1:] if s != "exact_query"]:
        rec = json.loads((out / "steps" / f"{step}.json").read_text())
        assert rec["complete"] and rec["config"] is not None and len(rec["key"]) == 64


def test_report_contents(reference):
    out, _ = reference
    rep = json.loads((out / "report" / "fidelity.json").read_text())
    assert set(rep["methods"]) == {"student", "untrained", "length"}
    for r in rep["methods"].values():
        assert -1 <= r["per_anchor_spearman"] <= 1 and 0 <= r["precision_at_3"] <= 1
        assert len(r["per_query_spearman"]) == 4
    assert rep["block"]["n_pool"] == 8 and rep["block"]["n_queries"] == 4
    assert rep["verdict"]["level"] in ("use", "weak", "do-not-use") and rep["verdict"]["small_block"]
    assert rep["ood"]["available"] and len(rep["ood"]["nn_similarity"]) == 4
    c = rep["cost"]
    assert c["n_pool"] == 40 and c["n_stocked"] == 24 + 12
    assert c["estimated_seconds_to_stock_whole_pool"] == pytest.approx(c["stock_seconds_per_example"] * 40)
    md = (out / "report" / "fidelity.md").read_text()
    assert rep["verdict"]["line"] in md and "| student |" in md and "OOD" in md
    assert (out / "report" / "fidelity.png").stat().st_size > 1000
    # the length heuristic is recomputed by hand: −len(response), the same column for every query
    from influcoder.core import metrics
    from influcoder.teacher.labels import load_labels
    from influcoder.data.records import read_records

    pool, _ = read_records(out / "sample" / "holdout_pool.jsonl")
    lab = load_labels(out / "labels" / "labels.npy")
    rows = [lab.pool_ids.index(i) for i in rep["block"]["pool_ids"]]
    cols = [lab.query_ids.index(i) for i in rep["block"]["query_ids"]]
    T = np.asarray(lab.matrix)[np.ix_(rows, cols)]
    L = -np.array([[len(r.response)] * 4 for r in pool], dtype=float)
    assert rep["methods"]["length"]["per_anchor_spearman"] == pytest.approx(metrics.per_anchor_spearman(L, T))


def test_second_run_is_cached(tiny, reference):
    out, ref = reference
    before = {s: json.loads((out / "steps" / f"{s}.json").read_text())["finished"] for s in STEPS[1:] if s != "exact_query"}
    logs = []
    time.sleep(1.1)
    Pipeline(from_dict(RunConfig, config_dict(tiny, out)), progress=False, log=logs.append).run()
    after = {s: json.loads((out / "steps" / f"{s}.json").read_text())["finished"] for s in STEPS[1:] if s != "exact_query"}
    assert before == after and sum("up to date" in line for line in logs) == len(STEPS) - 2
    assert_same(ref, scores(out))


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs (no cleanup, no record)."""


def test_killed_in_every_step_then_rerun_gives_the_same_scores(tiny, reference, monkeypatch, tmp_path):
    """For each step in turn, the run dies inside it (train: after epoch 1's checkpoint; stock and embed:
    after their first shard; the others: after their work, before the step is recorded); rerunning
    the same config finishes with the scores of the uninterrupted run."""
    from influcoder.student import distill
    from influcoder.search import embed
    from influcoder.teacher import stock

    _, ref = reference
    out = tmp_path / "run"
    cfg = from_dict(RunConfig, config_dict(tiny, out))
    killed_in = []
    for step in [s for s in STEPS if s not in ("mix", "exact_query")]:
        with monkeypatch.context() as mp:
            if step == "train":
                real = distill._save_checkpoint

                def die(o, k, state, real=real):
                    real(o, k, state)
                    raise Killed()
                mp.setattr(distill, "_save_checkpoint", die)
            elif step in ("stock", "embed"):
                mod = stock if step == "stock" else embed
                fn = "stock" if step == "stock" else "embed_file"
                real = getattr(mod, fn)

                def first_shard_then_die(c, *a, real=real, **kw):
                    def on_shard(*_):
                        raise Killed()
                    return real(c, *a, **{**kw, "on_shard": on_shard})
                mp.setattr(mod, fn, first_shard_then_die)
            else:
                real = getattr(Pipeline, f"_do_{step}")

                def work_then_die(self, real=real):
                    real(self)
                    raise Killed()
                mp.setattr(Pipeline, f"_do_{step}", work_then_die)
            with pytest.raises(Killed):
                Pipeline(cfg, progress=False).run()
            killed_in.append(step)
            assert (out / "steps" / f"{step}.started.json").exists() and not (out / "steps" / f"{step}.json").exists()
    assert killed_in == [s for s in STEPS if s not in ("mix", "exact_query")]
    logs = []
    Pipeline(cfg, progress=False, log=logs.append).run()
    assert_same(ref, scores(out))


def test_config_change_recomputes_that_step_and_the_ones_after(tiny, reference, tmp_path):
    import shutil

    src, _ = reference
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    logs = []
    cfg = from_dict(RunConfig, config_dict(tiny, out, attribute={"top_k": 2}))
    Pipeline(cfg, progress=False, log=logs.append).run()
    recomputed = [s for s in STEPS if any(line.startswith(f"[{s}] its config or inputs changed") for line in logs)]
    assert recomputed == ["attribute"]
    rows = [json.loads(x) for x in (out / "attribution" / "attribution.jsonl").read_text().splitlines()]
    assert {r["rank"] for r in rows} == {1, 2}
    logs.clear()
    cfg = from_dict(RunConfig, config_dict(tiny, out, student={"epochs": 1}))
    Pipeline(cfg, progress=False, log=logs.append).run(["index"])
    recomputed = [s for s in STEPS if any(line.startswith(f"[{s}] its config or inputs changed") for line in logs)]
    assert recomputed == ["train", "embed", "index"]  # only what --steps index needs
    rows = [json.loads(x) for x in (out / "encoder" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["model"] == "trained"] == [1]  # the one epoch asked for


def test_cli_run_kill_9_during_training_then_same_command(tiny, reference, tmp_path):
    """A real kill -9 of `influcoder run` while it trains; the same command then finishes with the same scores."""
    _, ref = reference
    out = tmp_path / "run"
    cfg_path = tmp_path / "run.yaml"
    d = config_dict(tiny, out, student={"epochs": 3})
    cfg_path.write_text(yaml.safe_dump(d))
    cmd = [sys.executable, "-m", "influcoder", "run", str(cfg_path), "--quiet", "--student.epochs", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = out / "encoder" / "checkpoint" / "state.pt"
    t0 = time.time()
    while not ckpt.exists() and p.poll() is None and time.time() - t0 < 300:
        time.sleep(0.05)
    assert p.poll() is None, p.stderr.read().decode()[-2000:]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (out / "steps" / "train.json").exists()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "steps done" in r.stdout
    assert_same(ref, scores(out))


def test_verdict_levels_on_known_per_query_scores():
    """USE needs a significant gain over the best baseline *and* enough absolute fidelity; a student that beats
    the baselines while reproducing little of the teacher's ranking is WEAK; one below a baseline is DO NOT USE."""
    from influcoder.run.report import verdict

    rng = np.random.default_rng(0)
    base = {"untrained": np.zeros(20), "length": 0.1 + 0.01 * rng.standard_normal(20)}
    hi = verdict({**base, "student": 0.7 + 0.01 * rng.standard_normal(20)}, 0.05, 500, 0, 100)
    low = verdict({**base, "student": 0.3 + 0.01 * rng.standard_normal(20)}, 0.05, 500, 0, 100)
    bad = verdict({**base, "student": 0.05 + 0.01 * rng.standard_normal(20)}, 0.05, 500, 0, 100)
    assert (hi["level"], low["level"], bad["level"]) == ("use", "weak", "do-not-use")
    assert hi["baseline"] == "length" and hi["ci95"][0] > 0.5 and "below 0.50" in low["line"]
    assert verdict({**base, "student": 0.3 + 0.01 * rng.standard_normal(20)}, 0.05, 500, 0, 100, min_spearman=0.2)["level"] == "use"


def test_last_screen_says_what_was_done_the_verdict_and_where_to_look(reference):
    """What `influcoder run` prints at its end: the work done, the verdict word with its figures from the report,
    what to do next, the report, figure and attribution paths (all existing) and the explorer command."""
    from influcoder.run.report import NEXT_STEP, WORDS, last_screen

    out, _ = reference
    rep = json.loads((out / "report" / "fidelity.json").read_text())
    text = last_screen(out)
    v, m = rep["verdict"], rep["methods"]
    assert f"Verdict: {WORDS[v['level']]} — held-out per-anchor Spearman {m['student']['per_anchor_spearman']:.3f} vs " \
           f"{m[v['baseline']]['per_anchor_spearman']:.3f} for the {v['baseline']} baseline" in text
    from influcoder.run.report import NEXT_NO_STOCK, curve_reaches_use

    # the next step: the verdict's, except that a DO NOT USE run is not told to stock more when the measured curve
    # shows no size reaching USE for its scorer (the packaged curve: neither scorer does)
    no_stock = v["level"] == "do-not-use" and curve_reaches_use("student") is False
    assert f"Next: {NEXT_NO_STOCK if no_stock else NEXT_STEP[v['level']]}" in text
    if v["level"] != "use":
        assert "How much to stock: " in text
    assert f"{rep['cost']['n_stocked']} examples stocked" in text
    for label in ("Report: ", "Top attributions: "):
        path = next(line for line in text.splitlines() if line.startswith(label))[len(label):].split()[0]
        assert Path(path).exists(), path
    assert (out / "report" / "fidelity.png").exists() and str(out / "report" / "fidelity.png") in text
    assert f"Explore: influcoder serve {out}" in text


def test_exact_query_step_beside_the_student(tiny, reference, tmp_path):
    """exact_query (off by default) fits on the training part, writes the model, the whole pool's coordinates and
    the top-k of every stocked query, and adds its row to the report; its held-out scores equal a recomputation
    from the saved model, the stores and the encoder; the other steps' keys do not move."""
    from influcoder.student.encoder import InfluenceEncoder
    from influcoder.student.exact_query import ExactQueryModel, pool_features
    from influcoder.teacher.labels import load_labels
    from influcoder.core.metrics import per_anchor_spearman
    from influcoder.data.records import read_records
    from influcoder.teacher.store import open_store

    ref_out, _ = reference
    out = tmp_path / "eq"
    shutil.copytree(ref_out, out)
    d = config_dict(tiny, out, exact_query={"enabled": True, "encoder": str(tiny["enc"]), "max_length": 32,
                                             "ks": [2, 4, 8], "alphas": [0.1, 10.0], "top_k": 3})
    logs: list[str] = []
    pipe = Pipeline(from_dict(RunConfig, d), progress=False, log=logs.append)
    m = pipe.run()
    ran = [s for s in STEPS if f"[{s}] running" in logs]
    assert ran == ["exact_query", "report"], ran  # nothing else recomputed
    assert m["exact_query"] == "exact_query" and "exact_query" in m["steps_done"]
    e = out / "exact_query"
    model = ExactQueryModel.load(e / "model")
    info = json.loads((out / "steps" / "exact_query.json").read_text())["info"]
    assert info["basis"] in ("train", "queries") and model.V.shape[1] == info["k"] and info["alpha"] in (0.1, 10.0)
    # held-out scores = saved model on the held-out records and the held-out queries' stored gradients
    enc = InfluenceEncoder.from_pretrained(str(tiny["enc"]), max_length=32)
    hp, _ = read_records(out / "sample" / "holdout_pool.jsonl")
    hq, _ = read_records(out / "sample" / "holdout_queries.jsonl")
    qs = open_store(out / "stores" / "queries")
    G = np.asarray(qs.matrix)[[list(qs.ids).index(r.id) for r in hq]]
    want = model.pool_coordinates(pool_features(enc, hp)) @ model.query_coordinates(G).T
    got = np.load(e / "heldout_scores.npy")
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the report's row is that matrix against the teacher's labels
    lab = load_labels(out / "labels" / "labels.npy")
    truth = np.asarray(lab.matrix)[np.ix_([list(lab.pool_ids).index(r.id) for r in hp],
                                          [list(lab.query_ids).index(r.id) for r in hq])]
    rep = json.loads((out / "report" / "fidelity.json").read_text())
    assert rep["methods"]["exact_query"]["per_anchor_spearman"] == pytest.approx(per_anchor_spearman(got, truth), abs=1e-9)
    assert "| exact_query |" in (out / "report" / "fidelity.md").read_text()
    # attribution: top-3 of the whole pool for every stocked query, by the saved coordinates
    C = np.load(e / "pool_coordinates.npy")
    ids = json.loads((e / "pool_ids.json").read_text())
    rows = [json.loads(x) for x in (e / "attribution.jsonl").read_text().splitlines()]
    assert len(ids) == len(C) == sum(1 for _ in open(tiny["pool"])) and len(rows) == 3 * len(qs.ids)
    Q = model.query_coordinates(np.asarray(qs.matrix))
    for j, qid in enumerate(qs.ids):
        mine = [r["id"] for r in rows if r["query_id"] == qid]
        assert mine == [ids[i] for i in np.argsort(-(C @ Q[j]), kind="stable")[:3]]
    # the aggregate ranking: each pool row's mean score over the stocked queries, highest first
    agg = [json.loads(x) for x in (e / "scores.jsonl").read_text().splitlines()]
    mean = (C @ Q.T).mean(axis=1)
    assert [x["id"] for x in agg] == [ids[i] for i in np.argsort(-mean, kind="stable")]
    np.testing.assert_allclose([x["score"] for x in agg], np.sort(mean)[::-1], atol=1e-6)
    # new queries (here: the run's own, stocked again under exact_query/added/) through `influcoder exact-query`:
    # the same top-3 as the step wrote
    new = tmp_path / "new.jsonl"
    r = subprocess.run([sys.executable, "-m", "influcoder", "exact-query", str(out), "--queries", str(tiny["queries"]),
                        "--out", str(new), "--top-k", "3", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    def by_query(rs):  # the file's query order is the stocking order of each side
        return sorted(rs, key=lambda x: (x["query_id"], x["rank"]))

    got_rows, want_rows = by_query([json.loads(x) for x in new.read_text().splitlines()]), by_query(rows)
    assert [(x["query_id"], x["rank"], x["id"]) for x in got_rows] == [(x["query_id"], x["rank"], x["id"]) for x in want_rows]
    np.testing.assert_allclose([x["score"] for x in got_rows], [x["score"] for x in want_rows], atol=1e-5)
    assert len(list((e / "added").iterdir())) == 1
    # --aggregate: every pool row by its mean score over the new queries — the step's aggregate ranking again
    filt = tmp_path / "filter.jsonl"
    r = subprocess.run([sys.executable, "-m", "influcoder", "exact-query", str(out), "--queries", str(tiny["queries"]),
                        "--out", str(filt), "--aggregate", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    ranked = [json.loads(x) for x in filt.read_text().splitlines()]
    assert [x["rank"] for x in ranked] == list(range(1, len(ids) + 1))
    assert [x["id"] for x in ranked] == [x["id"] for x in agg]
    np.testing.assert_allclose([x["score"] for x in ranked], [x["score"] for x in agg], atol=1e-5)
    bad = subprocess.run([sys.executable, "-m", "influcoder", "exact-query", str(tmp_path), "--queries",
                          str(tiny["queries"]), "--out", str(tmp_path / "x.jsonl")], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a run folder" in bad.stderr and not (tmp_path / "x.jsonl").exists()
    # turned off again: the report is recomputed without the row; exact_query's outputs are not required
    d["exact_query"]["enabled"] = False
    Pipeline(from_dict(RunConfig, d), progress=False).run()
    assert "exact_query" not in json.loads((out / "report" / "fidelity.json").read_text())["methods"]


def test_exact_query_scorer_runs_embed_index_attribute_filter(tiny, reference, tmp_path):
    """scorer: exact-query — embed, index, attribute and filter load exact_query/model through load_encoder: a pool
    row's vector is its predicted coordinates, a query's its exact coordinates (the run's own queries from the saved
    coordinates, never stocked again). Attribution and filter scores equal the slow reference ⟨ĉ_p, c_q⟩ built from
    the saved model, the stores and the base encoder; `influcoder attribute` on new queries stocks them (only them)
    and ranks as the reference does; plain strings are refused on both sides."""
    from influcoder.student.encoder import InfluenceEncoder
    from influcoder.student.loading import load_encoder
    from influcoder.core.errors import UserError
    from influcoder.student.exact_query import ExactQueryModel, pool_features, pool_vectors
    from influcoder.search.embed import open_embeddings
    from influcoder.data.records import read_records
    from influcoder.teacher.stock import StockConfig, stock
    from influcoder.teacher.store import open_store

    ref_out, _ = reference
    out = tmp_path / "eqs"
    shutil.copytree(ref_out, out)
    d = config_dict(tiny, out, scorer="exact-query", exact_query={"encoder": str(tiny["enc"]), "max_length": 32,
                                                                  "ks": [2, 4, 8], "alphas": [0.1, 10.0]})
    logs: list[str] = []
    m = Pipeline(from_dict(RunConfig, d), progress=False, log=logs.append).run()
    ran = [s for s in STEPS if f"[{s}] running" in logs]
    assert ran == ["exact_query", "embed", "index", "attribute", "filter", "report"], ran  # the student is kept
    assert m["encoder"] == "exact_query/model" and m["scorer"] == "exact-query"
    # the report judges the scorer the run uses; no student was asked for (exact_query.student), so no student row
    rep = json.loads((out / "report" / "fidelity.json").read_text())
    assert rep["scorer"] == "exact_query" and rep["verdict"]["method"] == "exact_query"
    assert set(rep["methods"]) == {"exact_query", "untrained", "length"}
    assert "exact-query scorer" in rep["verdict"]["line"] and rep["ood"]["available"]
    from influcoder.run.report import last_screen, trust_summary

    assert trust_summary(rep)["per_anchor"] == rep["methods"]["exact_query"]["per_anchor_spearman"]
    assert "exact-query head" in last_screen(out)
    assert not (out / "exact_query" / "pool_coordinates.npy").exists()  # embed holds them now
    mdir = out / "exact_query" / "model"
    model = ExactQueryModel.load(mdir)
    # the slow reference: the head on the base encoder's features, the stored query gradients on the basis
    base = InfluenceEncoder.from_pretrained(str(tiny["enc"]), max_length=32)
    pool, _ = read_records(tiny["pool"])
    queries, _ = read_records(tiny["queries"])
    C = model.pool_coordinates(pool_features(base, pool))
    qs = open_store(out / "stores" / "queries")
    G = np.asarray(qs.matrix)[[list(qs.ids).index(r.id) for r in queries]]
    Q = model.query_coordinates(G)
    S = C.astype(np.float64) @ Q.T.astype(np.float64)
    emb = open_embeddings(out / "embeddings")
    k = model.V.shape[1]  # the coordinates; then √(1 − ‖ĉ‖²) (steep near 1: compared by the norm) and 0
    np.testing.assert_allclose(emb.matrix()[:, :k], pool_vectors(C)[:, :k], atol=1e-5)
    assert emb.dim == k + 2 and np.all(emb.matrix()[:, k + 1] == 0)
    np.testing.assert_allclose(np.linalg.norm(emb.matrix(), axis=1), 1.0, atol=1e-6)
    rows = [json.loads(x) for x in (out / "attribution" / "attribution.jsonl").read_text().splitlines()]
    ids = [r.id for r in pool]
    for j, q in enumerate(queries):
        mine = [r for r in rows if r["query_id"] == q.id]
        assert [r["id"] for r in mine] == [ids[i] for i in np.argsort(-S[:, j], kind="stable")[:3]]
        np.testing.assert_allclose([r["score"] for r in mine], np.sort(S[:, j])[::-1][:3], atol=1e-5)
    filt = {r["id"]: r["score"] for r in map(json.loads, (out / "filter" / "scores.jsonl").read_text().splitlines())}
    np.testing.assert_allclose([filt[i] for i in ids], S.mean(axis=1), atol=1e-5)
    # the run's queries come from the saved coordinates; stocking them again gives the same vectors
    enc = load_encoder(mdir)
    v = enc.encode(queries, side="query")
    assert enc.stocked == 0
    np.testing.assert_allclose(v @ enc.encode(pool[:5], side="pool").T, S[:5].T, atol=1e-5)
    np.testing.assert_allclose(model.query_coordinates(enc.stock_gradients(queries[:3])), Q[:3], atol=1e-5)
    with pytest.raises(UserError, match="plain strings"):
        enc.encode(["what is rain"], side="query")
    with pytest.raises(UserError, match="plain strings"):
        enc.encode(["say red blue\nred"], side="pool")
    # new queries through `influcoder attribute`: only they are stocked; ranks equal the reference
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps({"id": f"n{i}", "prompt": p, "response": r}) + "\n"
                           for i, (p, r) in enumerate([("what is water", "water water"), ("name a prime", "prime")])))
    res = tmp_path / "att.jsonl"
    r = subprocess.run([sys.executable, "-m", "influcoder", "attribute", "--encoder", str(mdir), "--index",
                        str(out / "index"), "--queries", str(new), "--top-k", "4", "--out", str(res)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    stock(StockConfig(data=str(new), out=str(tmp_path / "new_store"), **model.teacher), progress=False)
    Qn = model.query_coordinates(np.asarray(open_store(tmp_path / "new_store").matrix))
    Sn = C.astype(np.float64) @ Qn.T.astype(np.float64)
    got = [json.loads(x) for x in res.read_text().splitlines()]
    for j, qid in enumerate(["n0", "n1"]):
        mine = [x for x in got if x["query_id"] == qid]
        assert [x["id"] for x in mine] == [ids[i] for i in np.argsort(-Sn[:, j], kind="stable")[:4]]
        np.testing.assert_allclose([x["score"] for x in mine], np.sort(Sn[:, j])[::-1][:4], atol=1e-5)
    # the `exact-query` command points at attribute under this scorer
    bad = subprocess.run([sys.executable, "-m", "influcoder", "exact-query", str(out), "--queries", str(new),
                          "--out", str(tmp_path / "x.jsonl")], capture_output=True, text=True)
    assert bad.returncode == 2 and "influcoder attribute --encoder" in bad.stderr
    # the explorer serves the run with its scorer: a query of the run by id ranks as the reference; typed text
    # (no response, so no gradient) is refused with the reason
    from influcoder.app.serve import Explorer, resolve_source

    ex = Explorer(resolve_source(out), device="cpu", precision="float32")
    got = ex.attribute(query_id=queries[0].id, k=3)
    assert [x["id"] for x in got["results"]] == [ids[i] for i in np.argsort(-S[:, 0], kind="stable")[:3]]
    np.testing.assert_allclose([x["score"] for x in got["results"]], np.sort(S[:, 0])[::-1][:3], atol=1e-5)
    with pytest.raises(UserError, match="plain strings"):
        ex.attribute(text="what is rain", k=3)


def test_stock_advice_reads_the_measured_curve(tmp_path):
    """The last screen's advice on stocking more comes from the packaged curve: the first size that reached
    USE-level fidelity (≥ the threshold and above the length baseline) with its stocking time at the run's rate, or,
    where none did, that more stocking is not what the scorer lacks; nothing without a curve for the scorer."""
    from influcoder.run.report import CURVE_FILE, stock_advice

    f = tmp_path / "curve.json"
    f.write_text(json.dumps({"data": "test data", "use_per_anchor": 0.5, "length_per_anchor": 0.45,
                             "scorers": {"student": [{"n": 250, "per_anchor": 0.3}, {"n": 900, "per_anchor": 0.48},
                                                     {"n": 2600, "per_anchor": 0.49}],
                                         "exact_query": [{"n": 250, "per_anchor": 0.4}, {"n": 900, "per_anchor": 0.55},
                                                         {"n": 2600, "per_anchor": 0.6}]}}))
    hit = stock_advice("exact_query", 2.0, f)
    assert "at 900 stocked pool rows" in hit and "≈ 30 min of stocking" in hit and "sample.n_stock 900" in hit
    miss = stock_advice("student", 2.0, f)
    assert "at no size measured" in miss and "0.49 at 2,600" in miss and "≈ 87 min" in miss
    assert stock_advice("other", 2.0, f) is None and stock_advice("student", 2.0, tmp_path / "none.json") is None
    shipped = json.loads(CURVE_FILE.read_text())  # the packaged curve names its source command and both scorers
    assert "distill_ablation.py" in shipped["source"] and set(shipped["scorers"]) == {"student", "exact_query"}
