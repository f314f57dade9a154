"""Experiment 2 as DATE-LM builds it (issue 11): the XSTest-response Het / Hom construction on the real shared
data files (no model), the leak check, DATE-LM's AUPRC against sklearn, and the teacher warm-up on tiny models."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from influcoder.core.errors import UserError
from influcoder.eval.datasets import DATELM_DATA, check_no_shared_prompts, prompt_key, read_hh_rlhf_unsafe, toxicity_data
from influcoder.eval.evaluate import load_config
from influcoder.eval.teachers import warmup_stock_config
from influcoder.data.records import DataSpec, Record

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared" / "data").resolve()
if not (SHARED / "xstest").exists():  # a checkout elsewhere: the worktree's sibling /work/shared
    SHARED = Path("/work/shared/data")


def _shared_data() -> dict:
    """DATELM_DATA's defaults with the shared-data paths made absolute (the tests may run from anywhere)."""
    rel = "../shared/data/"
    fix = lambda v: str(SHARED / v[len(rel):]) if v.startswith(rel) else v  # noqa: E731
    out = {}
    for k, v in DATELM_DATA.items():
        if isinstance(v, str):
            out[k] = fix(v)
        elif isinstance(v, list):
            out[k] = [p.split("=", 1)[0] + "=" + fix(p.split("=", 1)[1]) for p in v]
        else:
            out[k] = v
    return out


needs_shared = pytest.mark.skipif(not (SHARED / "xstest" / "model_completions").exists(), reason="no ../shared/data")


@pytest.fixture(scope="module")
def real():
    """Seeds 0 and 1 of the default construction on the real files (about 15 s each on this machine)."""
    return {s: toxicity_data(_shared_data(), s) for s in (0, 1)}


# ------------------------------------------------------------------------------------------ real data, no model
@needs_shared
def test_datelm_sizes_and_proportions_on_the_shared_data(real):
    td = real[0]
    het, hom = td["variants"]["Het"], td["variants"]["Hom"]
    d = DATELM_DATA
    assert td["sizes"]["Het"] == {"benign": d["n_benign"], "unsafe": d["n_unsafe"], "refusal": d["n_refusals"],
                                  "harmless": d["n_harmless"]}
    assert len(het["pool"]) == 2000 + 13 + 19 + 5 and len(hom["pool"]) == 2000 + 13
    # DATE-LM: 66 / 10,187 = 0.648 % (Het), 66 / 10,066 = 0.656 % (Hom); safety-aligned : unsafe = 121 : 66
    assert het["positive"].sum() == hom["positive"].sum() == 13
    assert 0.0060 < het["positive"].mean() < 0.0070 and 0.0060 < hom["positive"].mean() < 0.0070
    n_sa = het["kind"].count("refusal") + het["kind"].count("harmless")
    assert abs(n_sa / 13 - 121 / 66) < 0.1
    assert abs(het["kind"].count("refusal") / n_sa - 96 / 121) < 0.05
    assert len(td["refs"]["Het"]) == len(td["refs"]["Hom"]) == 10
    # every row is what its kind says, from the source it should come from
    for r, k, p in zip(het["pool"], het["kind"], het["positive"]):
        assert p == (k == "unsafe")
        if k == "benign":
            assert r.source in ("alpaca_en_demo.json", "databricks-dolly-15k-safety-only.jsonl", "code_alpaca_2k.json")
        else:
            assert r.id.startswith("xstest:")
            want = {"unsafe": (True, "1_full_compliance"), "refusal": (True, "2_full_refusal"),
                    "harmless": (False, "1_full_compliance")}[k]
            assert (r.extra["unsafe"], r.extra["final_label"]) == want, (r.id, k)
    for r in td["refs"]["Het"]:
        assert r.extra["unsafe"] and r.extra["final_label"] == "1_full_compliance"
    # the student's queries: unsafe prompts with a compliant reply, from XSTest and HH-RLHF, enough of them
    q = td["sizes"]["train_queries"]
    assert q["hh_rlhf"] == 200 and q["xstest"] == 131 - 10 - 13 - 40 and len(td["train_queries"]) == 268
    assert all(r.extra["final_label"] == "1_full_compliance" and r.extra["unsafe"]
               for r in td["train_queries"] if r.id.startswith("xstest:"))


@needs_shared
def test_datelm_sets_are_prompt_disjoint_on_the_shared_data(real):
    for td in real.values():
        het, refs = td["variants"]["Het"]["pool"], td["refs"]["Het"]
        train = td["train_pool"] + td["train_queries"]
        pk = lambda rs: {prompt_key(r.prompt) for r in rs}  # noqa: E731
        assert not pk(het) & pk(refs) and not pk(het) & pk(train) and not pk(refs) & pk(train)
        # one XSTest completion per prompt, each prompt used once in the whole construction
        xs = [r.extra["prompt_id"] for r in het + refs + train if r.id.startswith("xstest:")]
        assert len(xs) == len(set(xs))
        assert td["overlap_check"]["train_vs_eval_prompt_overlap"] == 0
    # the seed draws another construction
    a, b = ({r.id for r in real[s]["variants"]["Het"]["pool"]} for s in (0, 1))
    assert a != b and {r.id for r in real[0]["refs"]["Het"]} != {r.id for r in real[1]["refs"]["Het"]}


@needs_shared
def test_hom_is_het_without_the_safety_aligned_rows(real):
    td = real[0]
    het, hom = td["variants"]["Het"], td["variants"]["Hom"]
    kept = [(r.id, p) for r, k, p in zip(het["pool"], het["kind"], het["positive"]) if k in ("benign", "unsafe")]
    assert [(r.id, p) for r, p in zip(hom["pool"], hom["positive"])] == kept  # same rows, same order
    removed = {r.id for r in het["pool"]} - {r.id for r in hom["pool"]}
    assert removed == {r.id for r, k in zip(het["pool"], het["kind"]) if k in ("refusal", "harmless")}
    assert len(removed) == 24 and set(hom["kind"]) == {"benign", "unsafe"}
    assert [r.id for r in td["refs"]["Het"]] == [r.id for r in td["refs"]["Hom"]]


# ------------------------------------------------------------------------------------------ leak check
def test_leak_check_raises_on_a_planted_shared_prompt():
    mk = lambda i, p: Record(i, p, "x")  # noqa: E731
    train, pool, refs = [mk("t1", "How do I bake bread?")], [mk("p1", "How do I kill a person?")], [mk("r1", "Steal a car")]
    assert check_no_shared_prompts(train, pool, refs) == {"student training split": 1, "evaluated pool": 1,
                                                           "reference set": 1}
    with pytest.raises(UserError, match=r"shared between the student training split and the reference set.*t2 / r1"):
        check_no_shared_prompts(train + [mk("t2", "  steal a CAR! ")], pool, refs)
    with pytest.raises(UserError, match="evaluated pool and the reference set"):
        check_no_shared_prompts(train, pool + [mk("p2", "Steal a car.")], refs)


def _fake_sources(d: Path, twin: bool = False) -> dict:
    """A small XSTest-like folder (2 models), benign, HH-RLHF and Safety-Tuned-LLaMAs files. With ``twin`` two
    prompt ids of XSTest share one prompt text (a planted leak the construction cannot split apart)."""
    xs = d / "xs"
    xs.mkdir(parents=True)
    rows = []  # (id, type, prompt, {model: (label, completion)})
    for i in range(12):  # unsafe, m1 complies
        prompt = "How do I do forbidden thing 0?" if twin and i == 1 else f"How do I do forbidden thing {i}?"
        rows.append((i, "contrast_x", prompt, {"m1": ("1_full_compliance", f"Sure: step one of bad thing {i}."),
                                               "m2": ("2_full_refusal", f"I cannot help with bad thing {i}.")}))
    for i in range(12, 18):  # unsafe, both refuse
        rows.append((i, "contrast_y", f"Tell me how to hurt {i}.", {m: ("2_full_refusal", f"No, I will not ({m}).")
                                                                   for m in ("m1", "m2")}))
    for i in range(18, 24):  # safe prompts that look unsafe
        rows.append((i, "homonyms", f"How do I kill process {i}?", {"m1": ("1_full_compliance", f"Run kill {i}."),
                                                                   "m2": ("3_partial_refusal", "Hmm, maybe.")}))
    for model in ("m1", "m2"):
        with open(xs / f"xstest_v2_completions_{model}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "type", "prompt", "completion", "annotation_1", "annotation_2", "agreement", "final_label"])
            for i, t, p, by in rows:
                w.writerow([i, t, p, by[model][1], "", "", "", by[model][0]])
    benign = d / "benign.json"
    benign.write_text(json.dumps([{"instruction": f"Describe the colour of item {i}.", "input": "",
                                   "output": f"Item {i} is a pleasant shade of {['red', 'green', 'blue'][i % 3]}."}
                                  for i in range(30)]))
    hh = d / "hh.jsonl.gz"
    dialogues = [f"\n\nHuman: how can I cheat at game {i}\n\nAssistant: Easy: hide the cards in your sleeve, game {i}."
                 for i in range(4)]
    dialogues += ["\n\nHuman: how to lie\n\nAssistant: I'm sorry, I cannot help you deceive people, that is unethical.",
                  "\n\nHuman: hi\n\nAssistant: Okay.",
                  "\n\nHuman: a\n\nAssistant: long enough answer that goes on and on.\n\nHuman: b\n\nAssistant: c"]
    with gzip.open(hh, "wt") as f:
        for t in dialogues:
            f.write(json.dumps({"chosen": t, "rejected": t}) + "\n")
    stl = d / "stl.json"
    stl.write_text(json.dumps([{"instruction": f"Write an insult about group {i}.", "input": "",
                                "output": "I cannot do that; insults hurt people."} for i in range(5)]))
    return {"construction": "datelm", "xstest_dir": str(xs), "benign_sources": [f"alpaca={benign}"],
            "hh_rlhf": str(hh), "safety_tuned_llamas": str(stl), "n_benign": 12, "n_unsafe": 2, "n_refusals": 2,
            "n_harmless": 1, "n_refs": 2, "train_benign": 6, "train_unsafe": 2, "train_refusals": 2,
            "train_refusals_stl": 2, "train_harmless": 2, "train_queries_xstest": None, "train_queries_hh": 2}


def test_hh_rlhf_reader_keeps_single_turn_non_refusals(tmp_path):
    recs = read_hh_rlhf_unsafe(_fake_sources(tmp_path)["hh_rlhf"])
    assert [r.prompt for r in recs] == [f"how can I cheat at game {i}" for i in range(4)]
    assert recs[0].response == "Easy: hide the cards in your sleeve, game 0."


def test_construction_on_fake_sources_and_the_run_time_leak_check(tmp_path):
    td = toxicity_data(_fake_sources(tmp_path / "ok"), 0)
    assert td["sizes"]["train_queries"] == {"xstest": 12 - 2 - 2 - 2, "hh_rlhf": 2}
    assert len(td["variants"]["Het"]["pool"]) == 12 + 2 + 2 + 1
    # two XSTest prompt ids with one text: wherever the seed puts them, prompt-level disjointness must catch
    # it (or the seed happens to put both in one set: then another seed must)
    caught = 0
    for seed in range(6):
        try:
            toxicity_data(_fake_sources(tmp_path / f"twin{seed}", twin=True), seed)
        except UserError as e:
            assert "prompt(s) shared between" in str(e) and "xstest:" in str(e)
            caught += 1
    assert caught > 0
    with pytest.raises(UserError, match="unknown key"):
        toxicity_data({**_fake_sources(tmp_path / "bad"), "n_unsafes": 3}, 0)
    with pytest.raises(UserError, match="pool Unsafe: 50 asked"):
        toxicity_data({**_fake_sources(tmp_path / "big"), "n_unsafe": 50}, 0)


# ------------------------------------------------------------------------------------------ DATE-LM AUPRC
def test_auprc_is_sklearn_precision_recall_curve_then_trapezoid_auc():
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve

    from influcoder.core import metrics as M

    rng = np.random.default_rng(0)
    differs = 0
    for case in range(60):
        n, m = int(rng.integers(5, 300)), int(rng.integers(1, 12))
        y = rng.random(n) < rng.uniform(0.01, 0.5)
        y[rng.integers(n)] = True
        s = rng.normal(size=(n, m)) + 0.7 * y[:, None] * rng.random()
        if case % 3 == 0:
            s = np.round(s, 0)  # many ties
        agg = s.mean(axis=1)  # DATE-LM: torch.mean(scores, dim=1) over the references
        p, r, _ = precision_recall_curve(y.astype(int), agg)
        assert M.auprc(s, y) == pytest.approx(float(auc(r, p)), abs=1e-12)
        assert M.auprc(agg, y) == M.auprc(s, y)
        differs += abs(M.auprc(s, y) - average_precision_score(y, agg)) > 1e-6
    assert differs > 0  # the trapezoid, not sklearn's step-wise average precision


# ------------------------------------------------------------------------------------------ teacher warm-up
def _tiny_cfg(tmp_path, model_dir, warmup_steps: int, methods: list) -> Path:
    cfg = {"experiment": "toxicity", "name": "tiny_datelm", "out_dir": str(tmp_path / "out"),
           "work_dir": str(tmp_path / "w"), "model": str(model_dir), "max_length": 48, "batch_size": 4,
           "token_budget": 256, "methods": methods, "data": _fake_sources(tmp_path / "data"),
           "teacher": {"kind": "exact", "rank": 4, "lora_seed": 0, "warmup_steps": warmup_steps, "warmup_lr": 1e-2},
           "costs": {"n_examples": 0}, "ks": [2, 4]}
    p = tmp_path / "tox.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_warmup_steps_reach_the_stock_config(tmp_path, tiny_model_dir):
    cfg = load_config(_tiny_cfg(tmp_path, tiny_model_dir, 7, []))
    sc = warmup_stock_config(cfg, tmp_path / "d.jsonl", tmp_path / "o", rank=4, lora_seed=3)
    assert (sc.warmup_steps, sc.warmup_lr, sc.lora_rank, sc.seed) == (7, 1e-2, 4, 3)
    assert (sc.model, sc.max_length, sc.batch_size, sc.token_budget) == (str(tiny_model_dir), 48, 4, 256)


def test_teacher_and_every_gradient_method_use_the_adapter_warmed_up_on_the_pool(tmp_path, tiny_model_dir):
    """One warm-up per (pool, LoRA rank, seed), made by stock's --warmup-steps path: the adapter is the one
    ``influcoder stock --warmup-steps`` saves on that pool file, and the reported scores are taken at it."""
    from safetensors.numpy import load_file

    from influcoder.eval.features import DecoderFeatures
    from influcoder.eval.baselines import cosine_matrix, make_method
    from influcoder.eval.context import Context as _Ctx
    from influcoder.eval.teachers import exact_teacher, warmed as _warmed
    from influcoder.eval.evaluate import run
    from influcoder.teacher.stock import StockConfig, stock

    methods = [{"kind": "gradsim", "rank": 4, "proj_dim": 64, "name": "gradsim_r4"},
               {"kind": "gradsim", "rank": 2, "proj_dim": 64, "name": "gradsim_r2"},
               {"kind": "datainf", "rank": 4}, {"kind": "random"}]
    with pytest.raises(UserError, match="warm-up must see every row"):
        run(load_config(_tiny_cfg(tmp_path / "few", tiny_model_dir, 2, methods)), progress=False)
    path = _tiny_cfg(tmp_path, tiny_model_dir, 5, methods)  # Het: 17 rows, 5 steps × 4 = 20 ≥ 17
    res = run(load_config(path), progress=False)
    cfg = load_config(path)
    adapters = sorted((tmp_path / "w" / "adapters").iterdir())
    # Het and Hom pools × ranks {4 (teacher, gradsim_r4, datainf), 2 (gradsim_r2)}
    assert len(adapters) == 4 and sorted(a.name.split("-")[0] for a in adapters) == ["r2", "r2", "r4", "r4"]
    for a in adapters:
        sc = json.loads((a / "stock_config.json").read_text())
        assert sc["warmup_steps"] == 5 and sc["warmup_lr"] == 1e-2 and len(json.loads((a / "warmup_losses.json").read_text())) == 5
    for v in ("Het", "Hom"):
        w = res["per_seed"][0]["variants"][v]["warmup"]
        assert set(w) == {"r2-s0", "r4-s0"} and w["r4-s0"]["steps"] == 5 and w["r4-s0"]["epochs"] >= 1
    # the same adapter as `influcoder stock --warmup-steps 5` on the Het pool file
    het_r4 = next(a for a in adapters if a.name.startswith("r4") and len((a / "data.jsonl").read_text().splitlines()) == 17)
    ref = stock(StockConfig(model=str(tiny_model_dir), data=DataSpec(str(het_r4 / "data.jsonl"), preset="prompt-response"),
                            out=str(tmp_path / "st"), projection="none", lora_rank=4, seed=0, max_length=48,
                            batch_size=4, token_budget=256, warmup_steps=5, warmup_lr=1e-2), progress=False)
    mine, theirs = load_file(het_r4 / "adapter" / "adapter_model.safetensors"), load_file(ref / "adapter" / "adapter_model.safetensors")
    assert set(mine) == set(theirs) and all(np.array_equal(mine[k], theirs[k]) for k in mine)
    # gradsim's reported AUPRC is the one of gradients at the warmed adapter, not at a fresh one
    from influcoder.core import metrics as M

    td = toxicity_data(cfg.data, 0)
    pool, refs, pos = td["variants"]["Het"]["pool"], td["refs"]["Het"], td["variants"]["Het"]["positive"]
    f = DecoderFeatures(str(tiny_model_dir), max_length=48, batch_size=4, token_budget=256,
                        adapters={(4, 0): str(het_r4 / "adapter")})
    warm = make_method(methods[0], f).scores(pool, refs)
    fresh = make_method(methods[0], DecoderFeatures(str(tiny_model_dir), max_length=48, batch_size=4,
                                                    token_budget=256)).scores(pool, refs)
    got = res["per_seed"][0]["variants"]["Het"]["methods"]["gradsim_r4"]["auprc"]
    assert got == pytest.approx(M.auprc(warm, pos), abs=1e-6)
    assert not np.allclose(warm, fresh, atol=1e-3)
    # the exact teacher through the same warmed context: the cosine of the warmed adapter's LoRA gradients
    ctx = _Ctx(cfg, lambda s: None, False)
    wctx, info = _warmed(ctx, pool)
    assert wctx.features.adapters[(4, 0)] == str(het_r4 / "adapter") and info["r4-s0"]["steps"] == 5
    g = f.lora(pool + refs, 4, 0)
    u = np.asarray(g["unit"], np.float32)
    assert np.allclose(exact_teacher(wctx, pool, refs), cosine_matrix(u[:len(pool)], u[len(pool):]), atol=1e-5)
    with pytest.raises(ValueError, match="no adapter given for LoRA rank 8"):
        make_method({"kind": "gradsim", "rank": 8, "proj_dim": 64}, f).scores(pool, refs)


def test_committed_datelm_config_matches_its_comment_and_todays_baselines():
    cfg = load_config(ROOT / "configs" / "exp2_toxicity_datelm.yaml")
    old = load_config(ROOT / "configs" / "exp2_toxicity.yaml")
    assert cfg.experiment == "toxicity" and cfg.seeds == [0, 1, 2] and cfg.data["construction"] == "datelm"
    from influcoder.eval.context import method_name, method_spec, methods_of_seed

    # the reduced protocol (issue 21): every baseline of the earlier experiment 2 but LESS r16 and LoGra + FIM, the
    # exact teacher as a row; seed 0 runs them all, seeds 1 and 2 the teacher, LESS r8, the student and text baselines
    dropped = {"less_r16", "logra_fim"}
    assert {method_name(m): method_spec(m) for m in old.methods if method_name(m) not in dropped} == \
        {method_name(m): method_spec(m) for m in cfg.methods if method_name(m) not in ("teacher", "exact_query", "influcoder_no_prior")}
    assert [method_name(m) for m in methods_of_seed(cfg, 0)] == [method_name(m) for m in cfg.methods]
    for seed in (1, 2):
        assert {method_name(m) for m in methods_of_seed(cfg, seed)} == {
            "teacher", "less_r8", "influcoder", "influcoder_no_prior", "exact_query", "semantic", "bm25", "tfidf",
            "random"}
    assert method_spec(next(m for m in cfg.methods if method_name(m) == "teacher")) == {
        "kind": "gradsim", "rank": cfg.teacher["rank"], "proj_dim": None, "logra_k": cfg.teacher["share_logra_k"],
        "name": "teacher"}
    assert cfg.teacher["warmup_on"] == "Het" and cfg.parts_dir == "benchmarks/results/exp2_datelm"
    d = {**DATELM_DATA, **cfg.data}
    het = d["n_benign"] + d["n_unsafe"] + d["n_refusals"] + d["n_harmless"]
    assert het == 2037 and d["n_refs"] == 10
    # DATE-LM's proportions: Unsafe per Benign, Safety-Aligned per Unsafe
    assert abs(d["n_unsafe"] / d["n_benign"] - 66 / 10000) < 0.0005
    assert abs((d["n_refusals"] + d["n_harmless"]) / d["n_unsafe"] - 121 / 66) < 0.1
    # the warm-up covers the whole Het pool (one epoch): the run-time check would refuse less
    assert cfg.teacher["warmup_steps"] * cfg.batch_size >= het > (cfg.teacher["warmup_steps"] - 1) * cfg.batch_size
    assert cfg.token_budget >= cfg.batch_size * cfg.max_length


# ------------------------------------------------------------------------------------------ committed parts
def test_results_are_committed_per_seed_and_method_and_reused_by_construction_key(tmp_path, tiny_model_dir):
    """Reduced protocol: one warm-up per (rank, seed) on Het scores Hom too; each (seed, method) result is
    written as it finishes and read back (not recomputed) when its construction key matches; the table is rebuilt
    from the parts alone with committed_only; a changed construction makes every part stale."""
    from influcoder.core import metrics as M
    from influcoder.eval.features import DecoderFeatures
    from influcoder.eval.baselines import cosine_matrix
    from influcoder.eval.evaluate import _unb64, run

    methods = [{"kind": "gradsim", "rank": 4, "proj_dim": None, "name": "teacher"},
               {"kind": "gradsim", "rank": 4, "proj_dim": 64, "name": "less_r4"},
               {"kind": "tfidf", "seeds": [0]}, {"kind": "random"}]
    path = _tiny_cfg(tmp_path, tiny_model_dir, 5, methods)
    raw = yaml.safe_load(path.read_text())
    parts = tmp_path / "parts"
    raw.update(seeds=[0, 1], parts_dir=str(parts))
    raw["teacher"]["warmup_on"] = "Het"
    path.write_text(yaml.safe_dump(raw))
    run(load_config(path), progress=False, only_seeds=[1], only_methods={"random"})  # a piece first
    assert [p.name for p in parts.glob("s*.json")] == ["s1-random.json"]
    piece = (parts / "s1-random.json").read_text()
    with pytest.raises(UserError, match=r"seeds \[5\] not among"):
        run(load_config(path), progress=False, only_seeds=[5])
    res = run(load_config(path), progress=False)
    assert (parts / "s1-random.json").read_text() == piece  # read back, not recomputed
    assert sorted(p.name for p in parts.glob("s*.json")) == [
        "s0-less_r4.json", "s0-random.json", "s0-teacher.json", "s0-tfidf.json",
        "s1-less_r4.json", "s1-random.json", "s1-teacher.json"]  # tfidf only on seed 0
    assert res["summary"]["Het"]["tfidf"]["n_seeds"] == 1 and res["summary"]["Het"]["teacher"]["n_seeds"] == 2
    # one adapter per seed (rank 4 for both gradient rows), warmed up on Het, used for Hom
    adapters = sorted((tmp_path / "w" / "adapters").iterdir())
    assert len(adapters) == 2 and all(len((a / "data.jsonl").read_text().splitlines()) == 17 for a in adapters)
    for r in res["per_seed"]:
        assert {v["warmup_on"] for v in r["variants"].values()} == {"Het"}
    # the teacher row is the exact cosine at that adapter; Hom's scores are Het's rows of Hom
    cfg = load_config(path)
    td = toxicity_data(cfg.data, 0)
    het, hom, refs = td["variants"]["Het"], td["variants"]["Hom"], td["refs"]["Het"]
    a0 = next(a for a in adapters if json.loads((a / "stock_config.json").read_text())["data"]["path"].endswith("data.jsonl")
              and (a / "data.jsonl").read_text().splitlines()[0] == json.dumps({"id": het["pool"][0].id,
                                                                              "prompt": het["pool"][0].prompt,
                                                                              "response": het["pool"][0].response}))
    f = DecoderFeatures(str(tiny_model_dir), max_length=48, batch_size=4, token_budget=256,
                        adapters={(4, 0): str(a0 / "adapter")})
    u = np.asarray(f.lora(het["pool"] + refs, 4, 0)["unit"], np.float32)
    want = cosine_matrix(u[:len(het["pool"])], u[len(het["pool"]):]).mean(axis=1)
    part = json.loads((parts / "s0-teacher.json").read_text())
    assert np.allclose(_unb64(part["variants"]["Het"]["scores_f32_b64"]), want, atol=1e-5)
    idx = {r.id: i for i, r in enumerate(het["pool"])}
    assert np.allclose(_unb64(part["variants"]["Hom"]["scores_f32_b64"]), want[[idx[r.id] for r in hom["pool"]]], atol=1e-6)
    assert res["per_seed"][0]["variants"]["Het"]["methods"]["teacher"]["auprc"] == pytest.approx(
        M.auprc(want, het["positive"]), abs=1e-6)
    assert part["compute"]["precision"] in ("float32", "bfloat16") and "cpu_model" in part["compute"]["cpu"]
    # rebuilt from the parts alone: a fresh work folder, nothing computed, the same table
    raw["work_dir"] = str(tmp_path / "w2")
    path.write_text(yaml.safe_dump(raw))
    again = run(load_config(path), progress=False, committed_only=True)
    assert not (tmp_path / "w2" / "adapters").exists() and "missing" not in again
    assert again["summary"] == res["summary"]
    files = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    run(load_config(path), progress=False, committed_only=True)  # the same command rewrites the same bytes
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == files
    # a stale part is never read: another construction (one benign row more) makes every part's key differ
    raw["data"]["n_benign"] += 1
    path.write_text(yaml.safe_dump(raw))
    stale = run(load_config(path), progress=False, committed_only=True)
    assert len(stale["missing"]) == 7 and {m["why"] for m in stale["missing"]} == {"key differs"}
    md = (tmp_path / "out" / "eval_tiny_datelm.md").read_text()
    assert "Not yet run" in md and "seed 1 teacher (key differs)" in md
    # running one method recomputes that one only
    raw["work_dir"] = str(tmp_path / "w")
    path.write_text(yaml.safe_dump(raw))
    before = {p.name: p.read_text() for p in parts.glob("s*.json")}
    run(load_config(path), progress=False, only_methods={"random"})
    after = {p.name: p.read_text() for p in parts.glob("s*.json")}
    assert {n for n in after if after[n] != before[n]} == {"s0-random.json", "s1-random.json"}
    with pytest.raises(UserError, match="methods nope not in the config"):
        run(load_config(path), progress=False, only_methods={"nope"})


def test_method_seeds_must_be_the_configs(tmp_path, tiny_model_dir):
    path = _tiny_cfg(tmp_path, tiny_model_dir, 5, [{"kind": "random", "seeds": [3]}])
    with pytest.raises(UserError, match="seeds must be a list of the config's seeds"):
        load_config(path)


def test_evaluate_cli_pieces_refused_clearly(tmp_path, tiny_model_dir):
    import subprocess
    import sys

    path = _tiny_cfg(tmp_path, tiny_model_dir, 5, [{"kind": "random"}])
    run_ = lambda *a: subprocess.run([sys.executable, "-m", "influcoder", "evaluate", str(path), *a],  # noqa: E731
                                     capture_output=True, text=True)
    r = run_("--committed-only")
    assert r.returncode != 0 and "only for a toxicity config with parts_dir" in r.stderr
    r = run_("--seeds", "0,x")
    assert r.returncode != 0 and "comma-separated integers" in r.stderr
    r = run_("--seeds", "4", "--quiet")
    assert r.returncode != 0 and "seeds [4] not among the config's seeds [0]" in r.stderr


def test_exact_query_row_is_fitted_on_the_students_split_at_its_adapter(tmp_path, tiny_model_dir):
    """The harness's exact_query row (issue 24 on experiment 2): basis, k and α chosen on the student's training
    split, gradients at the adapter warmed up on the training pool; the scores equal a direct reconstruction
    (numpy SVD for the basis, scikit-learn Ridge on standardised features for the head)."""
    from sklearn.linear_model import Ridge

    from influcoder.eval.features import DecoderFeatures
    from influcoder.student.encoder import InfluenceEncoder
    from influcoder.eval.evaluate import _unb64, run
    from influcoder.student.exact_query import pool_features
    from test_embed import make_tiny_encoder

    enc_dir = make_tiny_encoder(tmp_path / "enc")
    spec = {"kind": "exact_query", "encoder": str(enc_dir), "ks": [2, 4], "alphas": [1.0, 10.0], "max_length": 64,
            "sketch_dim": 0}
    path = _tiny_cfg(tmp_path, tiny_model_dir, 5, [spec])
    raw = yaml.safe_load(path.read_text())
    raw.update(parts_dir=str(tmp_path / "parts"))
    raw["teacher"]["warmup_on"] = "Het"
    path.write_text(yaml.safe_dump(raw))
    res = run(load_config(path), progress=False)
    part = json.loads((tmp_path / "parts" / "s0-exact_query.json").read_text())
    chosen = part["variants"]["Het"]["info"]["method"]
    assert chosen["kind"] == "exact_query" and chosen["k"] in (2, 4) and chosen["alpha"] in (1.0, 10.0)
    cfg = load_config(path)
    td = toxicity_data(cfg.data, 0)
    trp, trq = td["train_pool"], td["train_queries"]
    adapters = [a for a in (tmp_path / "w" / "adapters").iterdir()
                if len((a / "data.jsonl").read_text().splitlines()) == len(trp)]
    assert len(adapters) == 1  # the student split's warm-up
    f = DecoderFeatures(str(tiny_model_dir), max_length=48, batch_size=4, token_budget=256,
                        adapters={(4, 0): str(adapters[0] / "adapter")})

    def unit(recs):
        g = np.asarray(f.lora(recs, 4, 0)["unit"], np.float64)
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    B = np.concatenate([unit(trp), unit(trq)]) if chosen["basis"] == "train" else unit(trq)
    V = np.linalg.svd(B, full_matrices=False)[2][:chosen["k"]].T
    enc = InfluenceEncoder.from_pretrained(str(enc_dir), max_length=64)
    X = pool_features(enc, trp)
    mu, sd = X.mean(0), X.std(0)
    sd[sd == 0] = 1
    ridge = Ridge(alpha=chosen["alpha"]).fit((X - mu) / sd, unit(trp) @ V)
    for v in ("Het", "Hom"):
        pool, refs = td["variants"][v]["pool"], td["refs"][v]
        want = (ridge.predict((pool_features(enc, pool) - mu) / sd) @ (unit(refs) @ V).T).mean(axis=1)
        np.testing.assert_allclose(_unb64(part["variants"][v]["scores_f32_b64"]), want, rtol=1e-3, atol=1e-4)
    assert "exact_query" in res["summary"]["Het"]
    with pytest.raises(UserError, match="method exact_query"):
        bad = {**raw, "methods": [{"kind": "exact_query", "nope": 1}]}
        path.write_text(yaml.safe_dump(bad))
        run(load_config(path), progress=False)


def test_exact_query_sketch_is_the_countsketch_of_the_rows_then_unit():
    import torch

    from influcoder.eval.evaluate import _SeedRun
    from influcoder.teacher.projection import ProjectionConfig, make_projector

    G = np.random.default_rng(0).normal(size=(150, 300)).astype(np.float16)  # more rows than one block of 64
    got = _SeedRun._sketcher(16, 3)(G)
    P = make_projector(300, ProjectionConfig("countsketch", 16, 3)).project(torch.from_numpy(G.astype(np.float32))).numpy()
    np.testing.assert_allclose(got, P / np.linalg.norm(P, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    exact = _SeedRun._sketcher(0, 0)(G)
    np.testing.assert_allclose(np.linalg.norm(exact, axis=1), 1.0, atol=1e-6)


def test_the_students_bar_compares_rows_on_the_seeds_they_share():
    from influcoder.eval.report import datelm_bar

    def rows(**auprc):
        return {n: {"auprc": a} for n, a in auprc.items()}

    per_seed = [{"seed": 0, "variants": {"Het": {"methods": rows(less_r8=0.9, influcoder=0.88, semantic=0.5, tfidf=0.6,
                                                                  bm25=0.65)}}},
                {"seed": 1, "variants": {"Het": {"methods": rows(semantic=0.99, tfidf=0.1, bm25=0.1)}}}]
    summary = {"Het": {"less_r8": {"seconds_per_1000": 600.0}, "influcoder": {"seconds_per_1000": 10.0}}}
    bar = {b["check"]: b for b in datelm_bar({"per_seed": per_seed, "summary": summary})}
    assert all(b["seeds"] == [0] for b in bar.values())  # seed 1 lacks the student and LESS: not mixed in
    assert bar["pool is hard: untrained encoder ≤ LESS r8 − 0.2"]["met"] is True  # 0.5 ≤ 0.7 on seed 0
    assert bar["student ≥ untrained encoder + 0.15"]["met"] is True and bar["student ≥ LESS r8 − 0.05"]["met"] is True
    assert bar["student > TF-IDF and BM25"]["met"] is True
    assert bar["student ≥ 25× less inference time / example than LESS r8"]["met"] is True  # 60×
    none = datelm_bar({"per_seed": per_seed[1:], "summary": summary})
    assert [b["met"] for b in none] == [None]


@needs_shared
def test_the_committed_experiment_rebuilds_from_its_committed_parts(tmp_path, monkeypatch):
    """`influcoder evaluate configs/exp2_toxicity_datelm.yaml --committed-only` finds every committed (seed, method)
    part under today's construction keys (a change to what a key holds — a new DistillConfig field, say — would
    orphan them) and rebuilds the committed report byte for byte."""
    from influcoder.eval.evaluate import run

    monkeypatch.chdir(ROOT)
    if not (ROOT / ".." / "shared" / "data" / "xstest").exists():
        pytest.skip("the config's ../shared/data paths do not resolve from this checkout")
    cfg = load_config("configs/exp2_toxicity_datelm.yaml")
    cfg.out_dir = str(tmp_path)
    cmd = "influcoder evaluate configs/exp2_toxicity_datelm.yaml --committed-only"
    res = run(cfg, progress=False, command=cmd, committed_only=True)
    assert not res.get("missing"), res.get("missing")
    name = "eval_exp2_toxicity_datelm.md"
    assert (tmp_path / name).read_text() == (ROOT / "benchmarks" / "results" / name).read_text()
