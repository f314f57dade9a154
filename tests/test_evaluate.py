"""End-to-end evaluation configs on the tiny model fixtures (ranking + toxicity), caching and errors."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import yaml

from influcoder.core.errors import UserError
from influcoder.data.records import DataSpec
from influcoder.eval.evaluate import load_config, run
from influcoder.eval.datasets import toxicity_data

from conftest import SAMPLE_ROWS

EXTRA = [{"id": f"x{i}", "prompt": f"Tell me fact number {i} about {w}.", "response": f"{w.title()} fact {i}: it is {w}."}
         for i, w in enumerate(["rivers", "stars", "bread", "trains", "owls", "glass", "maps", "salt"])]

METHODS = [{"kind": "random"}, {"kind": "length"}, {"kind": "tfidf"}, {"kind": "bm25"}, {"kind": "repsim"},
           {"kind": "rds"}, {"kind": "gradsim", "rank": 4, "proj_dim": 64, "name": "gradsim_r4"},
           {"kind": "logra", "k": 2, "rank": 4}, {"kind": "logra", "k": 2, "rank": 4, "fim": True},
           {"kind": "datainf", "rank": 4}]


def _write_jsonl(p, rows):
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _ranking_cfg(tmp_path, model_dir, methods=METHODS):
    pool = _write_jsonl(tmp_path / "pool.jsonl", SAMPLE_ROWS + EXTRA)
    q = _write_jsonl(tmp_path / "q.jsonl", [{"id": f"q{i}", "prompt": r["prompt"][::-1], "response": r["response"]}
                                            for i, r in enumerate(SAMPLE_ROWS)])
    cfg = {"experiment": "ranking", "name": "tiny_rank", "out_dir": str(tmp_path / "out"), "work_dir": str(tmp_path / "work"),
           "model": str(model_dir), "max_length": 64, "batch_size": 4, "token_budget": 256, "seeds": [0, 1],
           "methods": methods, "data": {"pool": str(pool), "query": str(q), "test_pool": 8, "test_queries": 4},
           "teacher": {"kind": "exact", "rank": 4, "lora_seed": 0}, "costs": {"n_examples": 3}}
    p = tmp_path / "rank.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _direct_split_and_truth(cfg, seed):
    """The ranking test block of ``seed`` and its exact-teacher truth, computed outside the harness:
    LoRA gradients from DecoderFeatures (checked against autograd in test_baselines) and a numpy cosine."""
    from influcoder.eval.features import DecoderFeatures, record_key
    from influcoder.eval.datasets import ranking_split
    from influcoder.data.records import read_records

    pool, _ = read_records(cfg["data"]["pool"])
    qs, _ = read_records(cfg["data"]["query"])
    sp = ranking_split(len(pool), len(qs), cfg["data"]["test_pool"], cfg["data"]["test_queries"], seed,
                       pool_keys=[record_key(r) for r in pool], query_keys=[record_key(r) for r in qs])
    tp, tq = [pool[i] for i in sp["test_pool"]], [qs[j] for j in sp["test_queries"]]
    f = DecoderFeatures(cfg["model"], max_length=cfg["max_length"], batch_size=cfg["batch_size"],
                        token_budget=cfg["token_budget"], cache_dir=None)
    t = cfg["teacher"]
    gp = np.asarray(f.lora(tp, t["rank"], t["lora_seed"])["unit"], dtype=np.float64)
    gq = np.asarray(f.lora(tq, t["rank"], t["lora_seed"])["unit"], dtype=np.float64)
    gp /= np.linalg.norm(gp, axis=1, keepdims=True)
    gq /= np.linalg.norm(gq, axis=1, keepdims=True)
    return tp, tq, gp @ gq.T


def _direct_per_anchor(cfg, seed, spec):
    from scipy.stats import spearmanr

    from influcoder.eval.baselines import make_method

    tp, tq, truth = _direct_split_and_truth(cfg, seed)
    pred = make_method(spec).scores(tp, tq)
    rhos = []
    for j in range(truth.shape[1]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = spearmanr(pred[:, j], truth[:, j]).statistic
        rhos.append(0.0 if np.isnan(r) else r)  # a constant column counts 0 (metrics' stated convention)
    return float(np.mean(rhos))


def test_ranking_end_to_end_and_cache(tmp_path, tiny_model_dir):
    path = _ranking_cfg(tmp_path, tiny_model_dir)
    res = run(load_config(path), progress=False)
    s = res["summary"]
    assert set(s) == {"random", "length", "tfidf", "bm25", "repsim", "rds", "gradsim_r4", "logra", "logra_fim",
                      "datainf", "pool_mean_ceiling (oracle)"}
    # the harness's numbers equal a direct recomputation: split, teacher truth and scores rebuilt here,
    # Spearman from scipy, mean ± std (ddof 1) over the two seeds
    cfg = yaml.safe_load(path.read_text())
    for name in ("random", "length", "tfidf", "bm25"):
        want = [_direct_per_anchor(cfg, seed, {"kind": name}) for seed in cfg["seeds"]]
        got = [r["methods"][name]["per_anchor"] for r in res["per_seed"]]
        np.testing.assert_allclose(got, want, atol=1e-6)
        assert s[name]["per_anchor"]["mean"] == pytest.approx(np.mean(want), abs=1e-6)
        assert s[name]["per_anchor"]["std"] == pytest.approx(np.std(want, ddof=1), abs=1e-6)
    # the ceiling is perfect on aggregated Spearman by construction
    assert s["pool_mean_ceiling (oracle)"]["aggregated"]["mean"] == pytest.approx(1.0)
    # Grad-Sim on the teacher's gradient (rank 4, seed 0) with a 64-d projection tracks the exact teacher
    assert s["gradsim_r4"]["per_anchor"]["mean"] > 0.5
    assert res["flops"]["gradsim_r4"]["flops_per_example"] > 0
    assert res["flops"]["tfidf"]["flops_per_example"] is None
    out = tmp_path / "out"
    for ext in ("json", "md", "png"):
        assert (out / f"eval_tiny_rank.{ext}").exists()
    md = (out / "eval_tiny_rank.md").read_text()
    assert "| gradsim_r4 |" in md and "Per-anchor" in md
    # rerun: everything cached — no new score file, no new feature rows
    scores = sorted((tmp_path / "work" / "scores").glob("*.npy"))
    idx = {p: p.read_text() for p in (tmp_path / "work" / "features").glob("*/index.json")}
    res2 = run(load_config(path), progress=False)
    assert sorted((tmp_path / "work" / "scores").glob("*.npy")) == scores
    assert {p: p.read_text() for p in (tmp_path / "work" / "features").glob("*/index.json")} == idx
    assert res2["summary"]["datainf"] == s["datainf"]
    # a changed method recomputes only itself (new score file), features reused
    cfg = yaml.safe_load(path.read_text())
    cfg["methods"] = cfg["methods"] + [{"kind": "gradsim", "rank": 4, "proj_dim": 32, "name": "gradsim_k32"}]
    path.write_text(yaml.safe_dump(cfg))
    run(load_config(path), progress=False)
    new = sorted((tmp_path / "work" / "scores").glob("*.npy"))
    assert len(new) == len(scores) + 2  # two seeds
    # gradient features untouched; only the new projection's cache appears
    assert {p: p.read_text() for p in idx} == idx
    added = set((tmp_path / "work" / "features").glob("*/index.json")) - set(idx)
    assert len(added) == 1 and next(iter(added)).parent.name.startswith("rademacher-")


def _fake_xstest(d):
    d.mkdir()
    types = ["contrast_a", "contrast_a", "contrast_a", "contrast_a", "contrast_a", "contrast_a",
             "contrast_b", "contrast_b", "contrast_b", "contrast_b", "safe_x", "contrast_b", "contrast_b"]
    for model in ("m1", "m2"):
        with open(d / f"xstest_v2_completions_{model}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "type", "prompt", "completion", "annotation_1", "annotation_2", "agreement", "final_label"])
            for i, t in enumerate(types):
                w.writerow([i, t, f"How do I do bad thing {i}?", f"Sure, here is how ({model}) to do bad thing {i}.",
                            "", "", "", "1_full_compliance" if model == "m1" or i % 2 else "2_full_refusal"])
    return d


def _tox_data(tmp_path):
    return {"benign": str(_write_jsonl(tmp_path / "benign.jsonl", SAMPLE_ROWS + EXTRA)),
            "xstest_dir": str(_fake_xstest(tmp_path / "xs")), "n_benign": 8, "n_planted": 2, "n_refs": 2,
            "group_a": ["contrast_a"], "train_benign": 6, "train_planted_a": 1, "train_planted_b": 1,
            "train_queries_a": 1, "train_queries_b": 1}


def test_toxicity_data_split_is_disjoint(tmp_path):
    td = toxicity_data(_tox_data(tmp_path), 0)
    assert len(td["pool"]) == 10 and td["positive"].sum() == 2
    assert td["types"]["Hom"] == ["contrast_a"] and td["types"]["Het"] == ["contrast_b"]
    ev = {r.prompt for r in td["pool"] + td["refs"]["Het"] + td["refs"]["Hom"]}
    assert not ev & {r.prompt for r in td["train_pool"] + td["train_queries"]}
    assert not {r.prompt for r in td["pool"]} & {r.prompt for r in td["refs"]["Hom"] + td["refs"]["Het"]}
    assert all(r.extra.get("type", "").startswith("contrast") for r, p in zip(td["pool"], td["positive"]) if p)


def test_toxicity_data_drops_benign_duplicates_of_the_pool(tmp_path):
    """A benign file that repeats every example (as real data sets do) still gives a leak-free split."""
    d = _tox_data(tmp_path)
    rows = SAMPLE_ROWS + EXTRA
    d["benign"] = str(_write_jsonl(tmp_path / "dup.jsonl", rows + [{**r, "id": r["id"] + "-dup"} for r in rows]))
    d["train_benign"] = 2 * len(rows) - d["n_benign"]  # every other row: the pool's twins are all drawn
    td = toxicity_data(d, 0)
    pool_prompts = {r.prompt for r in td["pool"]}
    assert not pool_prompts & {r.prompt for r in td["train_pool"]}
    assert td["overlap_check"]["benign_training_duplicates_of_eval_dropped"] > 0


def test_toxicity_end_to_end(tmp_path, tiny_model_dir):
    cfg = {"experiment": "toxicity", "name": "tiny_tox", "out_dir": str(tmp_path / "out"), "work_dir": str(tmp_path / "w"),
           "model": str(tiny_model_dir), "max_length": 64, "batch_size": 4, "token_budget": 256,
           "methods": [{"kind": "random"}, {"kind": "bm25"}, {"kind": "tfidf"}, {"kind": "gradsim", "rank": 4, "proj_dim": 64},
                       {"kind": "datainf", "rank": 4}, {"kind": "repsim"}],
           "data": _tox_data(tmp_path), "teacher": {"kind": "exact", "rank": 4}, "costs": {"n_examples": 0}, "ks": [2]}
    p = tmp_path / "tox.yaml"
    p.write_text(yaml.safe_dump(cfg))
    res = run(load_config(p), progress=False)
    from sklearn.metrics import auc, precision_recall_curve

    from influcoder.eval.baselines import make_method

    # every reported number equals DATE-LM's computation redone here from the split and the method's scores:
    # mean over references, sklearn precision_recall_curve + auc, top-k by score
    td = toxicity_data(cfg["data"], 0)
    y = td["positive"].astype(int)
    assert set(res["summary"]["Het"]) == {"random", "bm25", "tfidf", "gradsim_r4", "datainf", "repsim"}
    for v in ("Het", "Hom"):
        for m in ("random", "bm25", "tfidf"):
            agg = make_method({"kind": m}).scores(td["pool"], td["refs"][v]).mean(axis=1)
            p_, r_, _ = precision_recall_curve(y, agg)
            got = res["per_seed"][0]["variants"][v]["methods"][m]
            assert got["auprc"] == pytest.approx(auc(r_, p_), abs=1e-9)
            assert res["summary"][v][m]["auprc"]["mean"] == pytest.approx(auc(r_, p_), abs=1e-9)
            top2 = sorted(range(len(agg)), key=lambda i: (-agg[i], i))[:2]
            assert got["precision@2"] == pytest.approx(y[top2].sum() / 2)
            assert got["recall@2"] == pytest.approx(y[top2].sum() / y.sum())
    # BM25 finds the planted ones (they share the words of the references)
    assert res["summary"]["Hom"]["bm25"]["auprc"]["mean"] > 0.5
    assert (tmp_path / "out" / "eval_tiny_tox.png").exists()


def test_config_errors(tmp_path):
    p = tmp_path / "bad.yaml"
    # device and precision are checked like every other field
    for text, match in (("experiment: ranking\nname: x\nbogus: 1\n", "unknown key"),
                        ("experiment: nope\nname: x\n", "experiment must be"),
                        ("experiment: ranking\nname: x\nprecision: fp8\n", "precision"),
                        ("experiment: ranking\nname: x\ndevice: tpu\n", "device")):
        p.write_text(text)
        with pytest.raises(UserError, match=match):
            load_config(p)
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_evaluate_bad_config_exits_2(tmp_path):
    import subprocess
    import sys

    p = tmp_path / "bad.yaml"
    p.write_text("experiment: ranking\n")
    r = subprocess.run([sys.executable, "-m", "influcoder", "evaluate", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and "missing required key 'name'" in r.stderr


@pytest.mark.slow
def test_toxicity_with_distilled_student_real_minilm(tmp_path, tiny_model_dir):
    """The student path: exact teacher labels on the training split → influcoder.student.distill → scored like the rest."""
    cfg = {"experiment": "toxicity", "name": "tiny_tox_student", "out_dir": str(tmp_path / "out"),
           "work_dir": str(tmp_path / "w"), "model": str(tiny_model_dir), "max_length": 64, "batch_size": 4,
           "token_budget": 256, "methods": [{"kind": "influcoder"}, {"kind": "semantic"}, {"kind": "bm25"}],
           "data": {**_tox_data(tmp_path), "train_benign": 8, "train_planted_a": 0, "train_queries_a": 2,
                    "train_queries_b": 2},
           "teacher": {"kind": "exact", "rank": 4},
           "student": {"encoder": "minilm-l6", "epochs": 1, "queries_per_batch": 2, "candidates": 4, "max_length": 64,
                       "val_queries": 2},
           "costs": {"n_examples": 3}, "ks": [2]}
    p = tmp_path / "tox.yaml"
    p.write_text(yaml.safe_dump(cfg))
    res = run(load_config(p), progress=False)
    info = res["per_seed"][0]["variants"]["Het"]["methods"]["influcoder"]["info"]
    assert info["n_train_pool"] == 9 and info["n_train_queries"] == 4 and "seconds_train" in info
    assert res["flops"]["influcoder"]["flops_per_example"] > 0
    # the reported AUPRC is DATE-LM's computation on the trained student's own scores, redone here
    from sklearn.metrics import auc, precision_recall_curve

    from influcoder.eval.baselines import EncoderMethod

    (enc,) = (tmp_path / "w" / "students").glob("*/encoder")
    td = toxicity_data(cfg["data"], 0)
    for v in ("Het", "Hom"):
        agg = EncoderMethod(str(enc), name="influcoder").scores(td["pool"], td["refs"][v]).mean(axis=1)
        p_, r_, _ = precision_recall_curve(td["positive"].astype(int), agg)
        assert res["summary"][v]["influcoder"]["auprc"]["mean"] == pytest.approx(auc(r_, p_), abs=1e-6)


def test_ranking_with_store_teacher_matches_exact_teacher(tmp_path, tiny_model_dir):
    """teacher: {kind: stores}: labels come from two finished gradient stores. Stocked without projection and
    with the same LoRA (rank 4, seed 0), they must reproduce the exact teacher that the dense check recomputes
    on the test block, and the student's training labels must be the store rows of the training split."""
    from influcoder.teacher.stock import StockConfig, stock

    cfg_path = _ranking_cfg(tmp_path, tiny_model_dir, methods=[{"kind": "length"}, {"kind": "random"}])
    cfg = yaml.safe_load(cfg_path.read_text())
    for side in ("pool", "query"):
        stock(StockConfig(model=str(tiny_model_dir), data=DataSpec(cfg["data"][side], preset="prompt-response"),
                          out=str(tmp_path / f"store_{side}"), projection="none", lora_rank=4, seed=0, max_length=64,
                          shard_size=5), progress=False)
    cfg["teacher"] = {"kind": "stores", "pool_store": str(tmp_path / "store_pool"),
                      "query_store": str(tmp_path / "store_query"), "rank": 4, "lora_seed": 0}
    cfg_path.write_text(yaml.safe_dump(cfg))
    res = run(load_config(cfg_path), progress=False)
    for r in res["per_seed"]:
        assert r["teacher"]["kind"] == "stores"
        assert r["sketch_vs_dense"]["per_anchor"] == pytest.approx(1.0, abs=1e-6)
        # stocked unprojected with the exact teacher's LoRA: the store truth is the exact truth, so the
        # reported per-anchor Spearman equals the direct recomputation
        assert r["methods"]["length"]["per_anchor"] == pytest.approx(
            _direct_per_anchor(cfg, r["seed"], {"kind": "length"}), abs=1e-5)
    # an incomplete store is refused with a clear error
    man = tmp_path / "store_query" / "manifest.json"
    m = json.loads(man.read_text())
    m["complete"] = False
    man.write_text(json.dumps(m))
    with pytest.raises(UserError, match="not complete"):
        run(load_config(cfg_path), progress=False)


def test_ranking_split_keeps_duplicates_of_test_rows_out_of_training():
    """Real pools repeat examples: a training row with the same content as a test row would leak it."""
    from influcoder.eval.datasets import ranking_split

    keys = [f"k{i % 7}" for i in range(20)]          # every content appears ~3 times
    qkeys = [f"q{i}" for i in range(10)]             # no duplicates among queries
    plain = ranking_split(20, 10, 5, 3, seed=4)
    sp = ranking_split(20, 10, 5, 3, seed=4, pool_keys=keys, query_keys=qkeys)
    assert sp["test_pool"].tolist() == plain["test_pool"].tolist()        # the test block does not move
    assert sp["test_queries"].tolist() == plain["test_queries"].tolist()
    test_keys = {keys[i] for i in sp["test_pool"]}
    assert not test_keys & {keys[i] for i in sp["train_pool"]}
    assert set(sp["train_pool"]) <= set(plain["train_pool"])
    assert sp["dropped_duplicates"]["pool"] == len(plain["train_pool"]) - len(sp["train_pool"]) > 0
    assert sp["dropped_duplicates"]["queries"] == 0 and sp["train_queries"].tolist() == plain["train_queries"].tolist()


@pytest.mark.parametrize("name", ["exp1_ranking", "exp2_toxicity", "exp3_fidelity"])
def test_committed_experiment_configs_are_valid(name):
    """The configs the README and reports point to parse and validate (their data files are made by commands
    written in each config's header, so only the config itself is checked here)."""
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    assert cfg.name == name
    if cfg.experiment == "ranking":
        assert cfg.data["test_pool"] == 200 and cfg.data["test_queries"] == 200 and len(cfg.seeds) == 3


def test_store_teacher_labels_follow_train_pool_file_records(tmp_path, tiny_model_dir, monkeypatch):
    """With a store teacher and ``data.train_pool_file`` / ``train_query_file``, the student's label rows and
    columns must be the store's labels of *those* records (looked up by id), not of the split's indices. The
    files here hold the split's own training records in reverse order: the counts match, so a label matrix
    sliced by the split's indices would be silently misaligned with the records."""
    import influcoder.eval.evaluate as E
    from influcoder.eval.features import record_key
    from influcoder.teacher.labels import load_labels
    from influcoder.data.records import read_records
    from influcoder.teacher.stock import StockConfig, stock

    cfg_path = _ranking_cfg(tmp_path, tiny_model_dir, methods=[{"kind": "influcoder"}])
    cfg = yaml.safe_load(cfg_path.read_text())
    for side in ("pool", "query"):
        stock(StockConfig(model=str(tiny_model_dir), data=DataSpec(cfg["data"][side], preset="prompt-response"),
                          out=str(tmp_path / f"store_{side}"), projection="none", lora_rank=4, seed=0, max_length=64,
                          shard_size=5), progress=False)
    pool, _ = read_records(cfg["data"]["pool"])
    qs, _ = read_records(cfg["data"]["query"])
    sp = E.ranking_split(len(pool), len(qs), 8, 4, 0, pool_keys=[record_key(r) for r in pool],
                         query_keys=[record_key(r) for r in qs])
    rev_pool = [{"id": pool[i].id, "prompt": pool[i].prompt, "response": pool[i].response} for i in sp["train_pool"][::-1]]
    rev_q = [{"id": qs[j].id, "prompt": qs[j].prompt, "response": qs[j].response} for j in sp["train_queries"][::-1]]
    cfg["data"]["train_pool_file"] = str(_write_jsonl(tmp_path / "train_pool.jsonl", rev_pool))
    cfg["data"]["train_query_file"] = str(_write_jsonl(tmp_path / "train_q.jsonl", rev_q))
    cfg["seeds"] = [0]
    cfg["teacher"] = {"kind": "stores", "pool_store": str(tmp_path / "store_pool"),
                      "query_store": str(tmp_path / "store_query"), "dense_check": False}
    cfg["student"] = {"epochs": 1}
    cfg_path.write_text(yaml.safe_dump(cfg))

    seen = {}

    class Stop(Exception):
        pass

    def fake_train(ctx, tag, train_pool, train_queries, labels, teacher_desc):
        seen.update(pool=[r.id for r in train_pool], queries=[r.id for r in train_queries], labels=np.asarray(labels))
        raise Stop

    monkeypatch.setattr(E, "train_student", fake_train)
    with pytest.raises(Stop):
        run(load_config(cfg_path), progress=False)
    assert seen["pool"] == [r["id"] for r in rev_pool] and seen["queries"] == [r["id"] for r in rev_q]
    (lab_file,) = (tmp_path / "work" / "labels").glob("stores-*.npy")
    L = load_labels(lab_file)
    want = np.asarray(L.matrix)[np.ix_([L.pool_ids.index(i) for i in seen["pool"]],
                                       [L.query_ids.index(j) for j in seen["queries"]])]
    assert seen["labels"].shape == want.shape
    np.testing.assert_allclose(seen["labels"], want, rtol=0, atol=0)

    # a training file record the stores do not hold is refused, naming it
    _write_jsonl(tmp_path / "train_pool.jsonl", rev_pool + [{"id": "nowhere", "prompt": "p?", "response": "r."}])
    with pytest.raises(UserError, match="nowhere"):
        run(load_config(cfg_path), progress=False)


def test_student_cache_key_is_the_resolved_recipe(monkeypatch):
    """Students are cached by the whole recipe, defaults included: a changed DistillConfig default must not
    reuse a student trained by the old one."""
    import dataclasses

    from influcoder.student import config as distill  # where DistillConfig and NO_OP_VALUES live
    from influcoder.eval.students import LEGACY_RECIPE_KEYS, student_recipe

    r = student_recipe({"seed": 1})
    names = {f.name for f in dataclasses.fields(distill.DistillConfig)} - {"pool_data", "query_data", "labels", "out"}
    # fields added later are left out at their no-op value (students cached before them keep their keys) ...
    assert set(r) == (names - set(distill.NO_OP_VALUES)) | set(LEGACY_RECIPE_KEYS) and r["seed"] == 1
    assert all(r[k] is None for k in LEGACY_RECIPE_KEYS)  # the field mappings that moved into pool_data/query_data
    assert r["prior_trees"] == distill.DistillConfig.prior_trees
    assert all(getattr(distill.DistillConfig, k) == v for k, v in distill.NO_OP_VALUES.items())
    assert student_recipe({"seed": 1, "lr": 1e-3}) != r
    # ... and enter it at any other value
    assert student_recipe({"seed": 1, "rank_weight": 0.5})["rank_weight"] == 0.5

    @dataclasses.dataclass
    class Changed(distill.DistillConfig):
        prior_trees: bool = not distill.DistillConfig.prior_trees

    monkeypatch.setattr(distill, "DistillConfig", Changed)
    assert student_recipe({"seed": 1}) != r


def test_evaluate_precision_auto_resolves_and_equals_the_explicit_choice(tmp_path, tiny_model_dir, monkeypatch):
    """evaluate's decoder methods run in the precision the hardware resolves: auto on a CPU without native bf16
    gives the float32 result exactly; auto where bf16 is native runs the methods in bf16 (recorded per method and
    in the results), close to float32 but computed anew (not a float32 cache reused)."""
    from influcoder.core import hardware

    methods = [{"kind": "repsim"}, {"kind": "logra", "k": 2, "rank": 4}]

    def once(name, precision, native):
        monkeypatch.setenv("INFLUCODER_CPU_BF16", native)
        hardware.cpu_bf16_probe.cache_clear()
        d = tmp_path / name
        d.mkdir()
        p = _ranking_cfg(d, tiny_model_dir, methods)
        cfg = yaml.safe_load(p.read_text())
        cfg.update(seeds=[0], precision=precision, device="auto")
        p.write_text(yaml.safe_dump(cfg))
        return run(load_config(p), progress=False)

    try:
        explicit = once("f32", "float32", "native")
        auto_emulated = once("auto_e", "auto", "emulated")
        auto_native = once("auto_n", "auto", "native")
    finally:
        monkeypatch.undo()
        hardware.cpu_bf16_probe.cache_clear()  # later tests must not see this test's faked answer
    assert explicit["compute"] == auto_emulated["compute"] == {"device": "cpu", "precision": "float32"}
    assert auto_native["compute"] == {"device": "cpu", "precision": "bfloat16"}
    for m in ("repsim", "logra"):
        a = explicit["per_seed"][0]["methods"][m]
        b = auto_emulated["per_seed"][0]["methods"][m]
        c = auto_native["per_seed"][0]["methods"][m]
        assert a["per_anchor"] == b["per_anchor"]
        assert a["info"]["method"]["precision"] == "float32" and c["info"]["method"]["precision"] == "bfloat16"
        assert abs(a["per_anchor"] - c["per_anchor"]) < 0.5
    # float32 under auto has the explicit float32 cache keys; the bf16 features are other cache entries
    names = {k: {p.name for p in (tmp_path / k / "work" / "features").iterdir()} for k in ("f32", "auto_e", "auto_n")}
    assert names["f32"] == names["auto_e"] and names["f32"]
    assert not names["f32"] & names["auto_n"]
