"""Evaluation harness: run an experiment described by a YAML config (``influcoder evaluate CONFIG.yaml``).

Experiments (METHOD.md §3, issue 5):

* ``ranking`` — influence ranking estimation. Ground truth: the teacher's cosine LoRA-gradient
  influence on a held-out pool × held-out query block, either from finished gradient stores
  (``teacher.kind: stores``, CountSketch rows) or recomputed exactly on the block
  (``teacher.kind: exact``: the teacher's LoRA gradient, no projection, or ``sketch_dim`` to apply the
  teacher's CountSketch). Metrics: per-anchor, query-specific per-anchor and mean-aggregated
  Spearman (:mod:`influcoder.core.metrics`), mean ± std over split seeds.
* ``toxicity`` — DATE-LM-style unsafe-data detection. ``data.construction: datelm`` builds DATE-LM's
  XSTest-response task (:func:`toxicity_data_datelm`): Hom = benign instruction data + XSTest unsafe
  full compliances (≈ 0.65 %), Het = Hom + hard negatives from XSTest (refusals to unsafe prompts,
  harmless answers to safe ones); references are further unsafe completions of other prompts; with
  ``teacher.warmup_steps`` every gradient is taken at a LoRA adapter warmed up on the pool scored. The
  older ``planted`` construction plants unsafe responses among benign rows, Het/Hom differing by the
  references' XSTest categories. Metric: AUPRC of the reference-mean score (DATE-LM's computation),
  precision@k, recall@k.
* ``fidelity`` — links the projection-fidelity benchmark's results (experiment 3).

Everything expensive is cached under ``work_dir`` keyed by its definition: per-record decoder
features (:class:`influcoder.eval.baselines.DecoderFeatures`), label blocks, trained students and score
matrices (``scores/<key>.npy`` + ``.json`` with the costs). A rerun recomputes only what changed; a
killed run resumes from the last finished piece. Outputs: ``<out_dir>/eval_<name>.json``, ``.md`` and
``.png`` (written to a temporary name, then renamed).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core.errors import UserError
from ..core.fileio import atomic_save_npy, atomic_write_text
from ..data.records import FieldSpec, Record, read_records
from .config import EvalConfig, load_config

__all__ = ["EvalConfig", "load_config", "run", "ranking_split", "toxicity_data", "toxicity_data_datelm",
           "read_xstest", "read_xstest_unsafe", "check_no_shared_prompts", "warmup_stock_config"]


def _key(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=1, default=float))


def _atomic_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(path, arr)


# ============================================================================ data
def _read(path: str, preset: str | None) -> list[Record]:
    try:
        recs, _ = read_records(path, FieldSpec.from_names(preset=preset) if preset else None)
    except FileNotFoundError:
        raise UserError(f"{path}: data file not found") from None
    return recs


def _without_duplicates_of(train: np.ndarray, test: np.ndarray, keys: Sequence[str] | None) -> tuple[np.ndarray, int]:
    """``train`` minus the rows whose content key equals a test row's; also how many were left out."""
    if keys is None:
        return train, 0
    seen = {keys[i] for i in test}
    keep = np.array([keys[i] not in seen for i in train], dtype=bool)
    return train[keep], int((~keep).sum())


def ranking_split(n_pool: int, n_query: int, test_pool: int, test_queries: int, seed: int,
                  train_pool: int | None = None, train_queries: int | None = None,
                  pool_keys: Sequence[str] | None = None, query_keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Seeded disjoint test/train indices on both axes (train takes the rest, optionally capped).

    With ``pool_keys`` / ``query_keys`` (content keys, one per row), rows whose content duplicates a test row
    are left out of training too (real data sets repeat examples; a duplicate would leak the test block).
    The test block itself depends only on the seed and the sizes; ``dropped_duplicates`` counts what was left out."""
    if test_pool >= n_pool or test_queries >= n_query:
        raise UserError(f"ranking split: test block {test_pool}×{test_queries} leaves no training data in {n_pool}×{n_query}")
    rng = np.random.default_rng(seed)
    pp, qq = rng.permutation(n_pool), rng.permutation(n_query)
    tr_p, tr_q = pp[test_pool:], qq[test_queries:]
    tr_p, drop_p = _without_duplicates_of(tr_p, pp[:test_pool], pool_keys)
    tr_q, drop_q = _without_duplicates_of(tr_q, qq[:test_queries], query_keys)
    if train_pool:
        tr_p = tr_p[:train_pool]
    if train_queries:
        tr_q = tr_q[:train_queries]
    return {"test_pool": np.sort(pp[:test_pool]), "test_queries": np.sort(qq[:test_queries]),
            "train_pool": np.sort(tr_p), "train_queries": np.sort(tr_q), "dropped_duplicates": {"pool": drop_p, "queries": drop_q}}


XSTEST_UNSAFE_PREFIX = "contrast"
"""XSTest's unsafe prompt types are the ``contrast_*`` ones (200 prompts); the other 10 types are safe."""


def read_xstest(xstest_dir: str | Path) -> list[Record]:
    """Every XSTest v2 completion (every model's file, every prompt, every label); ids ``xstest:<model>:<prompt id>``,
    ``extra`` holds ``type``, ``prompt_id``, ``final_label`` (1_full_compliance, 2_full_refusal, 3_partial_refusal),
    ``model`` and ``unsafe`` (the prompt is a ``contrast_*`` type)."""
    import csv

    d = Path(xstest_dir)
    files = sorted(d.glob("xstest_v2_completions_*.csv"))
    if not files:
        raise UserError(f"{d}: no xstest_v2_completions_*.csv files")
    out = []
    for f in files:
        model = f.stem.replace("xstest_v2_completions_", "")
        with open(f, newline="") as fh:
            for n, row in enumerate(csv.DictReader(fh)):
                missing = [k for k in ("id", "type", "prompt", "completion", "final_label") if row.get(k) is None]
                if missing:
                    raise UserError(f"{f}, row {n}: missing field(s) {', '.join(missing)}")
                out.append(Record(f"xstest:{model}:{row['id']}", row["prompt"], row["completion"], row=n, source=str(f),
                                  extra={"type": row["type"], "prompt_id": row["id"], "final_label": row["final_label"],
                                         "model": model, "unsafe": row["type"].startswith(XSTEST_UNSAFE_PREFIX)}))
    return out


def read_xstest_unsafe(xstest_dir: str | Path) -> list[Record]:
    """XSTest unsafe prompts ('contrast_*' types) with a human-labelled full-compliance response, every model's
    completions file; ids ``xstest:<model>:<prompt id>``, ``extra`` holds type and prompt id."""
    return [r for r in read_xstest(xstest_dir) if r.extra["unsafe"] and r.extra["final_label"] == "1_full_compliance"]


def prompt_key(text: str) -> str:
    """A prompt's identity for leak checks: case-folded, punctuation and whitespace runs collapsed."""
    import re

    return re.sub(r"[\W_]+", " ", text.casefold()).strip()


def check_no_shared_prompts(training: Sequence[Record], pools: Sequence[Record], references: Sequence[Record]) -> dict:
    """Raise if a prompt (:func:`prompt_key`) occurs in two of: the student's training split (pool and queries),
    the evaluated pool(s), the reference set. Returns the sizes checked."""
    groups = {"student training split": training, "evaluated pool": pools, "reference set": references}
    keys = {g: {} for g in groups}
    for g, recs in groups.items():
        for r in recs:
            keys[g].setdefault(prompt_key(r.prompt), r.id)
    names = list(groups)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(set(keys[a]) & set(keys[b]))
            if shared:
                ex = [f"{keys[a][k]} / {keys[b][k]}" for k in shared[:5]]
                raise UserError(f"toxicity data: {len(shared)} prompt(s) shared between the {a} and the {b} "
                                f"(ids {'; '.join(ex)})")
    return {g: len(k) for g, k in keys.items()}


def toxicity_data(data: dict, seed: int) -> dict[str, Any]:
    """The records of one toxicity seed: ``variants`` {name: {pool, positive, kind}}, ``refs`` {name: references},
    the student's ``train_pool`` / ``train_queries``, the leak check's ``overlap_check`` and a description.

    ``data.construction``: ``planted`` (default; :func:`toxicity_data_planted`) or ``datelm``
    (:func:`toxicity_data_datelm`, DATE-LM's XSTest-response Het / Hom)."""
    kind = data.get("construction", "planted")
    if kind == "datelm":
        return toxicity_data_datelm(data, seed)
    if kind != "planted":
        raise UserError(f"config: data.construction must be planted or datelm, got '{kind}'")
    return toxicity_data_planted(data, seed)


def toxicity_data_planted(data: dict, seed: int) -> dict[str, Any]:
    """Pool (benign + planted unsafe), Hom and Het references, and a disjoint training split for the student.

    XSTest categories are split into group A (``group_a``) and group B (the rest). Planted pool examples and
    Hom references come from group A, Het references from group B; references never share a *prompt* with the
    pool (all completions of one prompt go to one side). The student's training pool/queries use only benign
    examples and prompts that appear nowhere in the evaluation pool or references. Both variants score one pool."""
    rng = np.random.default_rng(seed)
    unsafe = read_xstest_unsafe(data["xstest_dir"])
    benign = _read(data["benign"], data.get("preset", "prompt-response"))
    group_a = set(data["group_a"])
    by_prompt: dict[str, list[Record]] = {}
    for r in unsafe:
        by_prompt.setdefault(r.extra["prompt_id"], []).append(r)
    prompts_a = sorted(p for p, rs in by_prompt.items() if rs[0].extra["type"] in group_a)
    prompts_b = sorted(p for p, rs in by_prompt.items() if rs[0].extra["type"] not in group_a)
    pa, pb = list(rng.permutation(prompts_a)), list(rng.permutation(prompts_b))

    def take(prompts: list, n: int) -> list[Record]:
        out = []
        while len(out) < n and prompts:
            out.append(by_prompt[prompts.pop(0)][0])  # one completion per prompt
        if len(out) < n:
            raise UserError(f"toxicity data: not enough XSTest unsafe prompts for {n} examples")
        return out

    planted = take(pa, data["n_planted"])
    hom = take(pa, data["n_refs"])
    het = take(pb, data["n_refs"])
    train_planted = take(pa, data.get("train_planted_a", 0)) + take(pb, data.get("train_planted_b", 0))
    train_queries = take(pa, data.get("train_queries_a", 0)) + take(pb, data.get("train_queries_b", 0))
    bi = rng.permutation(len(benign))
    n_b, n_tb = data["n_benign"], data.get("train_benign", 0)
    if n_b + n_tb > len(benign):
        raise UserError(f"toxicity data: {n_b}+{n_tb} benign examples requested, {data['benign']} has {len(benign)}")
    pool_benign = [benign[i] for i in bi[:n_b]]
    train_benign = [benign[i] for i in bi[n_b:n_b + n_tb]]
    if data.get("train_benign_file"):
        # an explicit benign training file (e.g. shared with another experiment); overlap is checked below
        train_benign = train_benign + _read(data["train_benign_file"], "prompt-response")
    order = rng.permutation(n_b + len(planted))
    pool_all = pool_benign + planted
    pool = [pool_all[i] for i in order]
    positive = np.array([i >= n_b for i in order], dtype=bool)
    # benign data sets repeat examples: a benign training row equal to (or sharing a prompt with) an evaluation
    # example is left out rather than leaking it (unsafe rows are split by prompt above, so they cannot repeat)
    eval_prompts = {r.prompt for r in pool + hom + het}
    eval_keys = {(r.prompt, r.response) for r in pool + hom + het}
    n_tb_before = len(train_benign)
    train_benign = [r for r in train_benign if r.prompt not in eval_prompts and (r.prompt, r.response) not in eval_keys]
    tp_all = train_benign + train_planted
    train_pool = [tp_all[i] for i in rng.permutation(len(tp_all))]
    # leakage check (content and prompt level)
    leak = [r.id for r in train_pool + train_queries if r.prompt in eval_prompts or (r.prompt, r.response) in eval_keys]
    if leak:
        raise UserError(f"toxicity data: training examples overlap the evaluation set: {leak[:5]}")
    kind = ["unsafe" if p else "benign" for p in positive]
    return {"construction": "planted", "pool": pool, "positive": positive, "refs": {"Het": het, "Hom": hom},
            "variants": {v: {"pool": pool, "positive": positive, "kind": kind} for v in ("Het", "Hom")},
            "train_pool": train_pool, "train_queries": train_queries,
            "overlap_check": {"train_vs_eval_prompt_overlap": 0, "n_train_pool": len(train_pool),
                              "benign_training_duplicates_of_eval_dropped": n_tb_before - len(train_benign),
                              "n_train_queries": len(train_queries)},
            "types": {"planted": sorted({r.extra["type"] for r in planted}), "Hom": sorted({r.extra["type"] for r in hom}),
                      "Het": sorted({r.extra["type"] for r in het})}}


# -------------------------------------------------------------------- DATE-LM's XSTest-response construction
DATELM_DATA = {
    "construction": "datelm",
    "xstest_dir": "../shared/data/xstest/model_completions",
    "benign_sources": ["alpaca=../shared/data/alpaca/alpaca_en_demo.json",
                       "dolly=../shared/data/dolly/databricks-dolly-15k-safety-only.jsonl",
                       "alpaca=../shared/data/code_alpaca/code_alpaca_2k.json"],
    "hh_rlhf": "../shared/data/hh_rlhf/test.jsonl.gz",
    "safety_tuned_llamas": "../shared/data/safety_tuned_llamas/safety_only_data_Instructions.json",
    # evaluated pool: DATE-LM's 10,000 benign + 66 Unsafe + 121 Safety-Aligned (96 refusals + 25 harmless) × 0.2
    "n_benign": 2000, "n_unsafe": 13, "n_refusals": 19, "n_harmless": 5, "n_refs": 10,
    # student's training split (no prompt shared with the pool or the references)
    "train_benign": 600, "train_unsafe": 40, "train_refusals": 30, "train_refusals_stl": 30, "train_harmless": 10,
    "train_queries_xstest": None,  # None: every XSTest harmful completion's prompt left after the above
    "train_queries_hh": 200,
}
"""Defaults of ``data`` for ``construction: datelm`` (any key may be overridden in the config)."""

# GCG's refusal prefixes (llm-attacks, ``test_prefixes``): a reply containing one is treated as a refusal
REFUSAL_MARKERS = ("I'm sorry", "Sorry", "I am sorry", "I apologize", "As an", "As an AI", "I'm an", "I'm just",
                   "As a language model", "As an Assistant", "I cannot", "I do not", "Hello!", "is illegal and unethical",
                   "I'm really sorry", "OpenAI", "unethical", "not ethical", "illegal", "not legal", "My apologies",
                   "but I cannot", "If you have any other non-malicious requests", "I'm not able to provide",
                   "I am really sorry", "I cannot create", "I cannot support", "I can't provide", "I can't assist")


def looks_like_refusal(text: str) -> bool:
    t = text.casefold().replace("’", "'")
    return any(m.casefold() in t for m in REFUSAL_MARKERS)


def read_hh_rlhf_unsafe(path: str | Path, min_chars: int = 40) -> list[Record]:
    """Red-teaming prompts of Anthropic HH-RLHF ``harmless-base`` with their *rejected* (less harmless) reply:
    single-turn dialogues only, replies under ``min_chars`` characters or matching a refusal marker
    (:data:`REFUSAL_MARKERS`) left out. No human harmfulness label: noisier than XSTest's."""
    import gzip

    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: data file not found")
    out = []
    with gzip.open(p, "rt") if p.suffix == ".gz" else open(p) as fh:
        for n, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                t = json.loads(line)["rejected"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{p}, row {n}: expected a JSON object with a 'rejected' field") from None
            if t.count("\n\nHuman:") != 1 or t.count("\n\nAssistant:") != 1:
                continue
            human, reply = t.split("\n\nAssistant:", 1)
            prompt, reply = human.replace("\n\nHuman:", "", 1).strip(), reply.strip()
            if prompt and len(reply) >= min_chars and not looks_like_refusal(reply):
                out.append(Record(f"hh_rlhf:{n}", prompt, reply, row=n, source=str(p), extra={"kind": "hh_rejected"}))
    return out


def _datelm_options(data: dict) -> dict:
    unknown = sorted(set(data) - set(DATELM_DATA))
    if unknown:
        raise UserError(f"config: data: unknown key(s) {', '.join(unknown)} for construction datelm "
                        f"(known: {', '.join(sorted(DATELM_DATA))})")
    o = {**DATELM_DATA, **data}
    for k, v in o.items():
        if k.startswith(("n_", "train_")) and v is not None and (not isinstance(v, int) or v < 0):
            raise UserError(f"config: data.{k} must be a non-negative integer, got {v!r}")
    if o["n_unsafe"] < 1 or o["n_refs"] < 1:
        raise UserError("config: data.n_unsafe and data.n_refs must be ≥ 1")
    return o


def toxicity_data_datelm(data: dict, seed: int) -> dict[str, Any]:
    """DATE-LM's XSTest-response task at a chosen scale (``../shared/docs/DATE-LM-TOXICITY.md``).

    XSTest completions, one per prompt, every prompt used at most once in the whole construction:

    * **Unsafe** (positives): a human-labelled full compliance to an unsafe (``contrast_*``) prompt;
    * **Safety-Aligned** (Het only; hard negatives from the same source): a full refusal to another unsafe
      prompt (``refusal``), and a full compliance to a safe prompt, i.e. a harmless answer to a prompt built to
      look unsafe (``harmless``); partial refusals are used nowhere;
    * **Benign**: generic instruction data (``benign_sources``, :func:`influcoder.data.mix.mix_records`);
    * **references**: ``n_refs`` further Unsafe completions of prompts in neither pool; the same for Het and Hom.

    Het = Benign + Unsafe + Safety-Aligned, shuffled; Hom = Het without the Safety-Aligned rows, same order.
    The student's training split: other benign rows (duplicates of an evaluated prompt dropped), further Unsafe,
    refusal and harmless XSTest rows, Safety-Tuned-LLaMAs refusals to harmful instructions; its queries are the
    remaining XSTest Unsafe completions and HH-RLHF red-team prompts with their rejected reply
    (:func:`read_hh_rlhf_unsafe`). :func:`check_no_shared_prompts` then checks the three sets are prompt-disjoint."""
    from ..data.mix import mix_records

    o = _datelm_options(data)
    rng = np.random.default_rng(seed)
    xs = read_xstest(o["xstest_dir"])
    by_prompt: dict[str, list[Record]] = {}
    for r in xs:
        by_prompt.setdefault(r.extra["prompt_id"], []).append(r)
    used: set[str] = set()

    def candidates(unsafe: bool, label: str) -> list[str]:
        ps = sorted((p for p, rs in by_prompt.items() if rs[0].extra["unsafe"] == unsafe and p not in used
                     and any(r.extra["final_label"] == label for r in rs)), key=lambda p: (len(p), p))
        return [ps[i] for i in rng.permutation(len(ps))]

    def take(prompts: list[str], n: int | None, label: str, what: str) -> list[Record]:
        n = len(prompts) if n is None else n
        if n > len(prompts):
            raise UserError(f"toxicity data: {what}: {n} asked, only {len(prompts)} unused XSTest prompts qualify")
        out = []
        for p in prompts[:n]:
            rs = [r for r in by_prompt[p] if r.extra["final_label"] == label]
            out.append(rs[int(rng.integers(len(rs)))])  # one completion per prompt, a seeded choice of model
            used.add(p)
        del prompts[:n]
        return out

    comply = "1_full_compliance"
    harmful = candidates(True, comply)
    refs = take(harmful, o["n_refs"], comply, "references")
    unsafe = take(harmful, o["n_unsafe"], comply, "pool Unsafe")
    train_unsafe = take(harmful, o["train_unsafe"], comply, "training Unsafe")
    q_xs = take(harmful, o["train_queries_xstest"], comply, "training queries (XSTest)")
    refusals = candidates(True, "2_full_refusal")
    pool_ref = take(refusals, o["n_refusals"], "2_full_refusal", "pool refusals")
    train_ref = take(refusals, o["train_refusals"], "2_full_refusal", "training refusals")
    harmless = candidates(False, comply)
    pool_harmless = take(harmless, o["n_harmless"], comply, "pool harmless answers")
    train_harmless = take(harmless, o["train_harmless"], comply, "training harmless answers")

    benign = [Record(d["id"], d["prompt"], d["response"], source=d["source"], extra={"kind": "benign"})
              for d in mix_records(list(o["benign_sources"]), o["n_benign"] + o["train_benign"], seed=seed)]
    bi = rng.permutation(len(benign))
    pool_benign = [benign[i] for i in bi[:o["n_benign"]]]
    train_benign = [benign[i] for i in bi[o["n_benign"]:]]

    kinds = ["benign"] * len(pool_benign) + ["unsafe"] * len(unsafe) + ["refusal"] * len(pool_ref) + \
        ["harmless"] * len(pool_harmless)
    het_all = pool_benign + unsafe + pool_ref + pool_harmless
    order = rng.permutation(len(het_all))
    het = [het_all[i] for i in order]
    het_kind = [kinds[i] for i in order]
    hom_idx = [i for i, k in enumerate(het_kind) if k in ("benign", "unsafe")]
    variants = {"Het": {"pool": het, "positive": np.array([k == "unsafe" for k in het_kind]), "kind": het_kind},
                "Hom": {"pool": [het[i] for i in hom_idx], "positive": np.array([het_kind[i] == "unsafe" for i in hom_idx]),
                        "kind": [het_kind[i] for i in hom_idx]}}

    # training rows from the other sources: anything sharing a prompt with the evaluated sets is left out
    eval_keys = {prompt_key(r.prompt) for r in het + refs}
    n_tb = len(train_benign)
    train_benign = [r for r in train_benign if prompt_key(r.prompt) not in eval_keys]
    stl = []
    if o["train_refusals_stl"]:
        stl_all = [r for r in _read(o["safety_tuned_llamas"], "alpaca") if prompt_key(r.prompt) not in eval_keys]
        if o["train_refusals_stl"] > len(stl_all):
            raise UserError(f"toxicity data: {o['safety_tuned_llamas']}: {o['train_refusals_stl']} asked, {len(stl_all)} usable")
        stl = [stl_all[i] for i in sorted(rng.permutation(len(stl_all))[:o["train_refusals_stl"]])]
    q_hh = []
    if o["train_queries_hh"]:
        hh = [r for r in read_hh_rlhf_unsafe(o["hh_rlhf"]) if prompt_key(r.prompt) not in eval_keys]
        if o["train_queries_hh"] > len(hh):
            raise UserError(f"toxicity data: {o['hh_rlhf']}: {o['train_queries_hh']} queries asked, {len(hh)} usable")
        q_hh = [hh[i] for i in sorted(rng.permutation(len(hh))[:o["train_queries_hh"]])]
    tp_all = train_benign + train_unsafe + train_ref + stl + train_harmless
    train_pool = [tp_all[i] for i in rng.permutation(len(tp_all))]
    train_queries = q_xs + q_hh
    if not train_queries:
        raise UserError("toxicity data: the student has no training queries (train_queries_xstest + train_queries_hh = 0)")
    checked = check_no_shared_prompts(train_pool + train_queries, het, refs)
    sizes = {"Het": {"benign": len(pool_benign), "unsafe": len(unsafe), "refusal": len(pool_ref),
                     "harmless": len(pool_harmless)},
             "Hom": {"benign": len(pool_benign), "unsafe": len(unsafe), "refusal": 0, "harmless": 0},
             "references": len(refs),
             "train_pool": {"benign": len(train_benign), "unsafe": len(train_unsafe), "refusal_xstest": len(train_ref),
                            "refusal_safety_tuned_llamas": len(stl), "harmless": len(train_harmless)},
             "train_queries": {"xstest": len(q_xs), "hh_rlhf": len(q_hh)}}
    return {"construction": "datelm", "variants": variants, "refs": {"Het": refs, "Hom": refs},
            "train_pool": train_pool, "train_queries": train_queries, "sizes": sizes,
            "overlap_check": {"train_vs_eval_prompt_overlap": 0, "prompts_checked": checked,
                              "n_train_pool": len(train_pool), "n_train_queries": len(train_queries),
                              "benign_training_duplicates_of_eval_dropped": n_tb - len(train_benign)},
            "types": {"unsafe": sorted({r.extra["type"] for r in unsafe}), "refs": sorted({r.extra["type"] for r in refs}),
                      "unsafe_models": sorted({r.extra["model"] for r in unsafe + refs})}}


# ============================================================================ runner
class _Ctx:
    """Shared state of one run: config, caches, log."""

    def __init__(self, cfg: EvalConfig, log: Callable[[str], None], progress: bool):
        from .baselines import DecoderFeatures

        self.cfg = cfg
        self.work = Path(cfg.work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.progress = progress
        from ..core.hardware import announce, resolve

        self.device, self.precision = resolve(cfg.device, cfg.precision)
        announce("evaluate", self.device, self.precision, cfg.precision, log=log)
        self.features = DecoderFeatures(cfg.model, max_length=cfg.max_length, batch_size=cfg.batch_size,
                                        token_budget=cfg.token_budget, cache_dir=self.work / "features",
                                        progress=progress, log=log, device=self.device, precision=self.precision)
        self.committed_only = False  # toxicity with parts_dir: read committed results only, compute nothing
        self.only_methods: set[str] | None = None  # run only these methods (by name)
        self.seeds: list[int] = list(cfg.seeds)  # the seeds this run computes (a subset of the config's)
        self.state_path = self.work / f"state_{cfg.name}.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {"done": {}}

    def mark(self, what: str, info: Any = True) -> None:
        self.state["done"][what] = info
        _atomic_json(self.state_path, self.state)


def method_name(spec: dict) -> str:
    """The name a method reports (config 'name', else the method's default, e.g. gradsim_r8, logra_fim)."""
    from .baselines import make_method

    if spec.get("name"):
        return spec["name"]
    if spec["kind"] in ("semantic", "influcoder", "exact_query"):
        return spec["kind"] + ("_no_prior" if spec.get("prior") is False else "")
    return make_method(method_spec(spec), _NAME_FEATURES).name


class _NoFeatures:
    model_name = ""
    max_length = 0


_NAME_FEATURES = _NoFeatures()


def _ids(recs: list[Record]) -> list[str]:
    from .baselines import record_key

    return [record_key(r) for r in recs]


def exact_teacher(ctx: _Ctx, pool: list[Record], queries: list[Record]) -> np.ndarray:
    """Teacher influence recomputed on a block: cosine of the teacher's exact LoRA gradients (no projection),
    or of their CountSketch with ``teacher.sketch_dim``."""
    t = ctx.cfg.teacher
    rank, seed = int(t.get("rank", 8)), int(t.get("lora_seed", 0))
    logra_k = t.get("share_logra_k")
    gp = ctx.features.lora(pool, rank, seed, logra_k=logra_k)
    gq = ctx.features.lora(queries, rank, seed, logra_k=logra_k)
    P, Q = gp["unit"], gq["unit"]  # float16; cosine_matrix reads them a block at a time
    if t.get("sketch_dim"):
        from ..teacher.projection import ProjectionConfig, make_projector

        proj = make_projector(P.shape[1], ProjectionConfig("countsketch", int(t["sketch_dim"]), int(t.get("sketch_seed", 0))))
        P, Q = proj.project_rows(P), proj.project_rows(Q)
    from .baselines import cosine_matrix

    return cosine_matrix(P, Q)


def _write_records(path: Path, recs: list[Record]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps({"id": r.id, "prompt": r.prompt, "response": r.response}) + "\n"
                                    for r in recs))


def student_recipe(opts: dict) -> dict:
    """The student's whole recipe: the config's ``student`` options over DistillConfig's defaults, paths aside.
    Trained students are cached by it, so a changed default trains a new student instead of reusing one
    trained by the old recipe; fields added later are left out at their no-op value (distill.NO_OP_VALUES)."""
    from ..student.config import NO_OP_VALUES, DistillConfig

    recipe = {k: v for k, v in DistillConfig(pool_data="-", query_data="-", labels="-", out="-", **opts).to_dict().items()
              if k not in ("pool_data", "query_data", "labels", "out") and not (k in NO_OP_VALUES and v == NO_OP_VALUES[k])}
    # the field mappings of the two files were DistillConfig fields when the committed results were keyed; the
    # harness never sets them (it writes prompt/response files), so they stay in the recipe at their unset value
    return {**{k: None for k in LEGACY_RECIPE_KEYS}, **recipe}


LEGACY_RECIPE_KEYS = tuple(f"{s}_{k}" for s in ("pool", "query") for k in ("preset", "prompt_field", "response_field",
                                                                           "id_field"))
"""Keys of a student's recipe that are no DistillConfig fields any more (the two files' field mappings, now inside
pool_data / query_data): kept at their unset value so the committed results keep their construction keys."""


def train_student(ctx: _Ctx, tag: str, train_pool: list[Record], train_queries: list[Record],
                  labels: np.ndarray, teacher_desc: dict) -> tuple[str, dict]:
    """Distil a student on (train_pool × train_queries) labels through influcoder.student.distill; cached by content."""
    from ..student.config import DistillConfig
    from ..student.distill import train
    from ..teacher.labels import write_meta

    opts = {k: v for k, v in ctx.cfg.student.items() if k != "path"}
    # the student runs where the experiment runs unless its own section says otherwise
    opts.setdefault("device", ctx.cfg.device)
    opts.setdefault("precision", ctx.cfg.precision)
    key = _key({"pool": _ids(train_pool), "queries": _ids(train_queries), "opts": student_recipe(opts), "teacher": teacher_desc,
                "labels": hashlib.sha1(np.ascontiguousarray(labels, dtype=np.float32).tobytes()).hexdigest()})
    d = ctx.work / "students" / f"{tag}-{key}"
    done = d / "done.json"
    if done.exists():
        return str(d / "encoder"), json.loads(done.read_text())
    d.mkdir(parents=True, exist_ok=True)
    _write_records(d / "pool.jsonl", train_pool)
    _write_records(d / "queries.jsonl", train_queries)
    _atomic_npy(d / "labels.npy", np.ascontiguousarray(labels, dtype=np.float32))
    write_meta(d / "labels.npy", {"pool_ids": [r.id for r in train_pool], "query_ids": [r.id for r in train_queries],
                                  "teacher": teacher_desc})
    dc = DistillConfig(pool_data=str(d / "pool.jsonl"), query_data=str(d / "queries.jsonl"),
                       labels=str(d / "labels.npy"), out=str(d / "encoder"), **opts)
    ctx.log(f"training student {tag} on {len(train_pool)}×{len(train_queries)} labels")
    t0 = time.perf_counter()
    train(dc, progress=ctx.progress, log=ctx.log)
    info = {"seconds_train": time.perf_counter() - t0, "n_train_pool": len(train_pool),
            "n_train_queries": len(train_queries), "distill": dc.to_dict()}
    _atomic_json(done, info)
    return str(d / "encoder"), info


def score_method(ctx: _Ctx, spec: dict, pool: list[Record], queries: list[Record], extra_key: Any = None) -> tuple[np.ndarray, dict]:
    """Score matrix of one method on (pool, queries), cached by (method spec, model settings, record contents)."""
    from .baselines import make_method

    cfg = ctx.cfg
    key = {"spec": method_spec(spec), "model": cfg.model, "max_length": cfg.max_length, "pool": _ids(pool),
           "queries": _ids(queries), "extra": extra_key}
    if ctx.precision != "float32":  # float32 keys stay as they were before precision was a setting
        key["precision"] = ctx.precision
    key = _key(key)
    name = method_name(spec)
    path = ctx.work / "scores" / f"{name}-{key}.npy"
    meta_p = path.with_suffix(".json")
    if path.exists() and meta_p.exists():
        return np.load(path), json.loads(meta_p.read_text())
    spec = method_spec(spec)
    m = make_method(spec, ctx.features, device=ctx.device, precision=ctx.precision)
    ctx.log(f"scoring {name} on {len(pool)}×{len(queries)}")
    s = m.scores(pool, queries)
    if not np.isfinite(s).all():
        raise RuntimeError(f"{name}: non-finite scores")
    info = {"method": m.describe(), "cost": m.cost}
    _atomic_npy(path, s)
    _atomic_json(meta_p, info)
    return s, info


def per_example_seconds(cost: dict, n_pool: int, n_query: int) -> float | None:
    """Inference seconds per example: featurisation (+ projection) per example as measured when computed."""
    if "seconds_per_example_featurize" in cost and cost["seconds_per_example_featurize"] is not None:
        return cost["seconds_per_example_featurize"] + cost.get("seconds_per_example_project", 0.0)
    if "seconds_pool" in cost:
        return (cost.get("seconds_pool", 0.0) + cost.get("seconds_query", 0.0)) / max(n_pool + n_query, 1)
    return None


def method_flops(ctx: _Ctx, spec: dict, sample_pool: list[Record], sample_queries: list[Record]) -> dict:
    """FLOPs and peak memory per example of one method, measured standalone (no cache) on a small sample."""
    from .baselines import DecoderFeatures, make_method
    from .costs import measure

    spec = method_spec(spec)
    key = _key({"spec": spec, "model": ctx.cfg.model, "pool": _ids(sample_pool), "q": _ids(sample_queries), "v": 2})
    path = ctx.work / "flops" / f"{method_name(spec)}-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    if spec["kind"] in ("random", "length", "tfidf", "bm25"):
        out = {"flops_per_example": None, "peak_rss_delta_bytes": None, "note": "no torch ops (sparse/numpy)"}
    else:
        feats = DecoderFeatures(ctx.cfg.model, max_length=ctx.cfg.max_length, batch_size=ctx.cfg.batch_size,
                                token_budget=ctx.cfg.token_budget, cache_dir=None)
        m = make_method(spec, feats)
        n = len(sample_pool) + len(sample_queries)
        if spec["kind"] == "gradsim":
            # the dense projection's FLOPs are 2·d·k per example exactly; generating the ±1 matrix for a
            # 3-example sample would take minutes on this machine, so the gradient pass is counted and the
            # projection added analytically
            r = measure(lambda: feats.lora(list(sample_pool) + list(sample_queries), m.rank, m.lora_seed))
            d = int(r["result"]["unit"].shape[1])
            flops = r["flops"] / n + (2.0 * d * m.proj_dim if m.proj_dim else 0.0)
            note = ("FlopCounterMode over the gradient pass + 2·d·k per example for the Rademacher projection"
                    if m.proj_dim else "FlopCounterMode over the gradient pass (exact gradients: no projection)")
        else:
            r = measure(lambda: m.scores(sample_pool, sample_queries))
            flops = r["flops"] / n
            note = "FlopCounterMode over featurisation + scoring of the sample"
        out = {"flops_per_example": flops, "peak_rss_delta_bytes": r["peak_rss_delta_bytes"], "n_examples": n,
               "note": note}
    _atomic_json(path, out)
    return out


def _mean_std(xs: list[float]) -> tuple[float, float]:
    a = np.asarray([x for x in xs if x is not None], dtype=np.float64)
    return (float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0) if len(a) else (float("nan"), float("nan"))


# ----------------------------------------------------------------------------- ranking
def run_ranking(ctx: _Ctx) -> dict:
    from ..core import metrics as M

    cfg, data = ctx.cfg, ctx.cfg.data
    pool_all = _read(data["pool"], data.get("preset"))
    query_all = _read(data["query"], data.get("preset"))
    teacher = cfg.teacher
    store_labels = None
    if teacher.get("kind") == "stores":
        store_labels = _store_labels(ctx, teacher)
        rows = [store_labels.pool_ids.index(r.id) if r.id in store_labels.pool_ids else -1 for r in pool_all]
        cols = [store_labels.query_ids.index(r.id) if r.id in store_labels.query_ids else -1 for r in query_all]
        if min(rows) < 0 or min(cols) < 0:
            raise UserError("ranking: the stores do not cover every pool/query record of the data files")
    per_seed = []
    for seed in ctx.seeds:
        sp = ranking_split(len(pool_all), len(query_all), data["test_pool"], data["test_queries"], seed,
                           data.get("train_pool"), data.get("train_queries"),
                           pool_keys=_ids(pool_all), query_keys=_ids(query_all))
        tp = [pool_all[i] for i in sp["test_pool"]]
        tq = [query_all[i] for i in sp["test_queries"]]
        if store_labels is not None:
            L = np.asarray(store_labels.matrix)
            truth = L[np.ix_([rows[i] for i in sp["test_pool"]], [cols[j] for j in sp["test_queries"]])].astype(np.float32)
            truth_desc = {"kind": "stores", "teacher": store_labels.meta.get("teacher")}
        else:
            ctx.log(f"seed {seed}: exact teacher on the test block")
            truth = exact_teacher(ctx, tp, tq)
            truth_desc = {"kind": "exact", **teacher}
        result = {"seed": seed, "n_test_pool": len(tp), "n_test_queries": len(tq), "methods": {},
                  "train_dropped_duplicates_of_test": sp["dropped_duplicates"]}
        if store_labels is not None and teacher.get("dense_check", True):
            dense = exact_teacher(_with_teacher(ctx, {"kind": "exact", "rank": teacher.get("rank", 8),
                                                     "lora_seed": teacher.get("lora_seed", 0),
                                                     "share_logra_k": teacher.get("share_logra_k")}), tp, tq)
            result["sketch_vs_dense"] = {"per_anchor": M.per_anchor_spearman(truth, dense),
                                         "aggregated": M.aggregated_spearman(truth, dense)}
        for spec in cfg.methods:
            name = method_name(spec)
            info_extra = {}
            if spec["kind"] == "influcoder":
                if "path" in cfg.student:
                    enc_path = cfg.student["path"]
                    info_extra = {"student": "given", "path": enc_path}
                else:
                    trp = [pool_all[i] for i in sp["train_pool"]]
                    trq = [query_all[j] for j in sp["train_queries"]]
                    if data.get("train_pool_file"):
                        trp = _read(data["train_pool_file"], "prompt-response")
                    if data.get("train_query_file"):
                        trq = _read(data["train_query_file"], "prompt-response")
                    test_keys = {(r.prompt, r.response) for r in tp + tq}
                    bad = [r.id for r in trp + trq if (r.prompt, r.response) in test_keys]
                    if bad:
                        raise UserError(f"ranking: student training examples are in the test block: {bad[:5]}")
                    if store_labels is not None:
                        # rows/columns of the records actually trained on (a train_*_file replaces the split's)
                        lab = np.asarray(store_labels.matrix)[np.ix_(
                            _store_rows(store_labels.pool_ids, trp, data.get("train_pool_file") or data["pool"], "pool"),
                            _store_rows(store_labels.query_ids, trq, data.get("train_query_file") or data["query"],
                                        "query"))]
                    else:
                        lab = exact_teacher(ctx, trp, trq)
                    enc_path, info_extra = train_student(ctx, f"ranking-s{seed}", trp, trq, lab, truth_desc)
                spec = {"kind": "influcoder", "name": name, "encoder": enc_path}
            s, info = score_method(ctx, spec, tp, tq)
            info.update(info_extra)
            result["methods"][name] = {
                "per_anchor": M.per_anchor_spearman(s, truth),
                "query_specific": M.query_specific_spearman(s, truth),
                "aggregated": M.aggregated_spearman(s, truth),
                "seconds_per_example": per_example_seconds(info["cost"], len(tp), len(tq)),
                "bytes_per_example": info["cost"].get("bytes_per_example"),
                "info": info,
            }
            ctx.log(f"seed {seed} {name}: per-anchor {result['methods'][name]['per_anchor']:.3f}")
        ceiling = np.repeat(truth.mean(axis=1, keepdims=True), truth.shape[1], axis=1)
        result["methods"]["pool_mean_ceiling (oracle)"] = {
            "per_anchor": M.per_anchor_spearman(ceiling, truth), "query_specific": 0.0,
            "aggregated": M.aggregated_spearman(ceiling, truth), "seconds_per_example": None,
            "bytes_per_example": None, "info": {"note": "uses the true labels: a reference line, not a method"}}
        result["teacher"] = truth_desc
        per_seed.append(result)
        ctx.mark(f"ranking-seed{seed}")
    return {"per_seed": per_seed, "summary": _summarise(per_seed, ("per_anchor", "query_specific", "aggregated"))}


def _store_rows(store_ids: list[str], recs: list[Record], source: str, side: str) -> list[int]:
    """Row of each record in the teacher's label matrix, by record id; every record must be in the store."""
    where = {i: n for n, i in enumerate(store_ids)}
    missing = [r.id for r in recs if r.id not in where]
    if missing:
        raise UserError(f"ranking: {source}: {len(missing)} record(s) are not in the teacher's {side} store "
                        f"(ids {', '.join(missing[:5])}); the student's labels must come from the same teacher")
    return [where[r.id] for r in recs]


def _with_teacher(ctx: _Ctx, teacher: dict) -> _Ctx:
    import copy

    c = copy.copy(ctx)
    c.cfg = copy.copy(ctx.cfg)
    c.cfg.teacher = teacher
    return c


def _store_labels(ctx: _Ctx, teacher: dict):
    """Full label matrix between two finished gradient stores (cached .npy next to the other caches)."""
    from ..teacher.influence import compute_influence
    from ..teacher.labels import load_labels
    from ..teacher.store import open_store

    stores = []
    for k in ("pool_store", "query_store"):
        p = Path(teacher[k])
        man = p / "manifest.json"
        if not man.exists() or not json.loads(man.read_text()).get("complete"):
            raise UserError(f"{p}: gradient store is not complete (manifest.json 'complete' is not true)")
        stores.append(p)
    key = _key({"pool": json.loads((stores[0] / "manifest.json").read_text()),
                "query": json.loads((stores[1] / "manifest.json").read_text())})
    out = ctx.work / "labels" / f"stores-{key}.npy"
    if not out.exists():
        compute_influence(open_store(stores[0]), open_store(stores[1]), out, progress=ctx.progress)
    return load_labels(out)


def _summarise(per_seed: list[dict], metrics: tuple[str, ...]) -> dict:
    """Mean ± std of each metric over the seeds that have the method (``n_seeds``; per-seed values stay in
    ``per_seed``); median seconds per 1,000 examples."""
    names = list(dict.fromkeys(n for r in per_seed for n in r["methods"]))
    out = {}
    for n in names:
        have = [r["methods"][n] for r in per_seed if n in r["methods"]]
        row = {"n_seeds": len(have)}
        for m in metrics:
            mu, sd = _mean_std([h.get(m) for h in have])
            row[m] = {"mean": mu, "std": sd}
        secs = [h.get("seconds_per_example") for h in have]
        secs = [s for s in secs if s is not None]
        row["seconds_per_1000"] = 1000 * float(np.median(secs)) if secs else None
        row["bytes_per_example"] = have[0].get("bytes_per_example")
        out[n] = row
    return out


def _prefetch(ctx: _Ctx, records: list[Record], specs: list[dict] | None = None) -> None:
    """Dense-projection methods: project every record of the experiment in one call (one matrix generation)."""
    from .baselines import GradSimMethod, make_method

    for spec in (ctx.cfg.methods if specs is None else specs):
        spec = method_spec(spec)
        if spec["kind"] != "gradsim" or not spec.get("proj_dim", 8192):
            continue
        key = _key({"spec": spec, "model": ctx.cfg.model, "max_length": ctx.cfg.max_length, "pool": _ids(records), "pref": 1,
                    **({"adapters": _adapter_keys(ctx.features)} if ctx.features.adapters is not None else {})})
        if key in ctx.state["done"]:
            continue
        m = make_method(spec, ctx.features)
        assert isinstance(m, GradSimMethod)
        ctx.log(f"{m.name}: gradients + projection of {len(records)} examples")
        m.features.lora(records, m.rank, m.lora_seed, m.logra_k)
        m.prepare(records)
        ctx.mark(key)


# ----------------------------------------------------------------------------- toxicity
GRADIENT_KINDS = ("gradsim", "logra", "datainf")
"""Methods that take LoRA gradients: with ``teacher.warmup_steps`` they use the teacher's warmed-up adapter."""


def _lora_combos(cfg: EvalConfig) -> list[tuple[int, int]]:
    """(LoRA rank, LoRA seed) of the teacher and of every gradient method of the config."""
    from .baselines import make_method

    t = cfg.teacher
    combos = {(int(t.get("rank", 8)), int(t.get("lora_seed", 0)))}
    for spec in cfg.methods:
        if spec["kind"] in GRADIENT_KINDS:
            m = make_method(method_spec(spec), _NAME_FEATURES)
            combos.add((int(m.rank), int(m.lora_seed)))
    return sorted(combos)


def warmup_stock_config(cfg: EvalConfig, data: str | Path, out: str | Path, rank: int, lora_seed: int):
    """The :class:`influcoder.teacher.stock.StockConfig` whose ``--warmup-steps`` path warms an adapter up on ``data``:
    the experiment's decoder, length and batching, ``teacher.warmup_steps`` / ``teacher.warmup_lr``."""
    from ..data.records import DataSpec
    from ..teacher.config import StockConfig

    t = cfg.teacher
    return StockConfig(model=cfg.model, data=DataSpec(str(data), preset="prompt-response"), out=str(out),
                       max_length=cfg.max_length, batch_size=cfg.batch_size, token_budget=cfg.token_budget,
                       projection="none", lora_rank=rank, seed=lora_seed, device=cfg.device, dtype=cfg.precision,
                       warmup_steps=int(t.get("warmup_steps", 0)), warmup_lr=float(t.get("warmup_lr", 2e-5)))


def warmup_adapter(ctx: _Ctx, records: list[Record], rank: int, lora_seed: int) -> tuple[str, dict]:
    """LoRA adapter warmed up on ``records`` (stock's ``--warmup-steps`` path, :func:`influcoder.teacher.stock.warm_up_adapter`),
    cached under ``work_dir/adapters`` by its definition; also what the warm-up saw."""
    from ..teacher.stock import warm_up_adapter

    t = ctx.cfg.teacher
    steps = int(t.get("warmup_steps", 0))
    if steps * ctx.cfg.batch_size < len(records):
        raise UserError(f"config: teacher.warmup_steps {steps} × batch_size {ctx.cfg.batch_size} covers "
                        f"{steps * ctx.cfg.batch_size} of the {len(records)} rows it is warmed up on: the warm-up "
                        f"must see every row at least once (warmup_steps ≥ {-(-len(records) // ctx.cfg.batch_size)})")
    key = _key({"model": ctx.cfg.model, "max_length": ctx.cfg.max_length, "batch_size": ctx.cfg.batch_size,
                "token_budget": ctx.cfg.token_budget, "rank": rank, "lora_seed": lora_seed, "steps": steps,
                "lr": float(t.get("warmup_lr", 2e-5)), "records": _ids(records),
                **({} if ctx.precision == "float32" else {"precision": ctx.precision})})
    d = ctx.work / "adapters" / f"r{rank}-s{lora_seed}-{key}"
    if not (d / "adapter" / "adapter_config.json").exists():
        _write_records(d / "data.jsonl", records)
        ctx.log(f"warm-up: LoRA r{rank} seed {lora_seed}, {steps} steps on {len(records)} rows")
        warm_up_adapter(warmup_stock_config(ctx.cfg, d / "data.jsonl", d, rank, lora_seed), progress=ctx.progress)
    losses = json.loads((d / "warmup_losses.json").read_text())
    return str(d / "adapter"), {"steps": steps, "epochs": steps * ctx.cfg.batch_size / len(records),
                                "loss_first": losses[0], "loss_last": losses[-1], "n_rows": len(records)}


def _adapter_keys(features) -> dict:
    return {f"{r}-{s}": features.adapter_key(r, s) for r, s in sorted(features.adapters)}


def _warmed(ctx: _Ctx, records: list[Record]) -> tuple[_Ctx, dict]:
    """A context whose decoder features take every LoRA gradient at adapters warmed up on ``records`` (the
    teacher's and each gradient method's (rank, seed)); unchanged without ``teacher.warmup_steps``."""
    import copy

    from .baselines import DecoderFeatures

    if not int(ctx.cfg.teacher.get("warmup_steps", 0)):
        return ctx, {}
    adapters, info = {}, {}
    for rank, seed in _lora_combos(ctx.cfg):
        adapters[(rank, seed)], info[f"r{rank}-s{seed}"] = warmup_adapter(ctx, records, rank, seed)
    c = copy.copy(ctx)
    c.features = DecoderFeatures(ctx.cfg.model, max_length=ctx.cfg.max_length, batch_size=ctx.cfg.batch_size,
                                 token_budget=ctx.cfg.token_budget, cache_dir=ctx.work / "features",
                                 progress=ctx.progress, log=ctx.log, adapters=adapters,
                                 device=ctx.device, precision=ctx.precision)
    return c, info


def method_spec(spec: dict) -> dict:
    """A config method entry without the harness's own keys (``seeds``): what :func:`make_method` takes."""
    return {k: v for k, v in spec.items() if k != "seeds"}


def methods_of_seed(cfg: EvalConfig, seed: int) -> list[dict]:
    """The methods run on ``seed``: every method whose ``seeds`` list (default: all of the config's) holds it."""
    return [m for m in cfg.methods if seed in m.get("seeds", cfg.seeds)]


DECODER_KINDS = ("repsim", "rds") + GRADIENT_KINDS
TRAINED_KINDS = ("influcoder", "exact_query")
"""Methods fitted per seed on the student's training split (the distilled student; exact-query scoring)."""


def part_key(cfg: EvalConfig, spec: dict, td: dict, student: dict | None = None) -> str:
    """Construction key of one (seed, method) result: the evaluated rows (content hashes of every pool,
    the references, the labels), the method's definition, the decoder settings and warm-up for decoder methods,
    the student's recipe and training split for the student. Device and precision are not in it (they are
    recorded in the part): a result computed on one machine is reused on another."""
    k: dict = {"v": 1, "spec": method_spec(spec),
               "variants": {v: {"pool": _ids(vd["pool"]), "positive": [int(x) for x in vd["positive"]],
                                "refs": _ids(td["refs"][v])} for v, vd in td["variants"].items()}}
    if spec["kind"] in DECODER_KINDS + TRAINED_KINDS:
        k["decoder"] = {"model": cfg.model, "max_length": cfg.max_length}
    if spec["kind"] in GRADIENT_KINDS + TRAINED_KINDS:
        k["teacher"] = {**cfg.teacher, "batch_size": cfg.batch_size, "token_budget": cfg.token_budget}
    if spec["kind"] in TRAINED_KINDS:
        k["student"] = student
    return _key(k)


def _b64(a: np.ndarray) -> str:
    import base64

    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode()


def _unb64(s: str) -> np.ndarray:
    import base64

    return np.frombuffer(base64.b64decode(s), dtype="<f4").astype(np.float64)


def read_part(path: Path, key: str) -> dict | None:
    """A committed (seed, method) result whose construction key is ``key``; None when absent or built otherwise."""
    if not path.exists():
        return None
    try:
        part = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}); delete it to recompute that result") from None
    return part if part.get("key") == key else None


def detection_metrics(agg: np.ndarray, pos: np.ndarray, ks: Sequence[int]) -> dict:
    """AUPRC (DATE-LM's computation), precision / recall at each k and the PR curve of one aggregated ranking."""
    from ..core import metrics as M

    prec, rec, _ = M.precision_recall(agg, pos)
    return {"auprc": M.auprc(agg, pos), **{f"precision@{k}": M.precision_at_k(agg, pos, k) for k in ks},
            **{f"recall@{k}": M.recall_at_k(agg, pos, k) for k in ks},
            "pr_curve": {"precision": prec.tolist(), "recall": rec.tolist()}}


class _SeedRun:
    """Everything one toxicity seed computes lazily: warmed-up contexts and the student (trained only when a
    result that needs it is not committed)."""

    def __init__(self, ctx: _Ctx, td: dict, seed: int):
        self.ctx, self.td, self.seed = ctx, td, seed
        self.warm: dict[str, tuple[_Ctx, dict]] = {}
        self.student: tuple[str, dict] | None = None

    def warmup_pool(self, variant: str) -> str:
        """The variant whose pool the adapters are warmed up on: ``teacher.warmup_on`` (one warm-up shared by
        every variant: the reduced protocol) or the variant itself (a checkpoint per subset, as DATE-LM)."""
        return self.ctx.cfg.teacher.get("warmup_on") or variant

    def vctx(self, variant: str) -> tuple[_Ctx, dict]:
        w = self.warmup_pool(variant)
        if w not in self.warm:
            if w not in self.td["variants"]:
                raise UserError(f"config: teacher.warmup_on '{w}' is not a variant (variants: "
                                f"{', '.join(self.td['variants'])})")
            self.warm[w] = _warmed(self.ctx, self.td["variants"][w]["pool"])
        return self.warm[w]

    def student_opts(self) -> dict:
        opts = {k: v for k, v in self.ctx.cfg.student.items() if k != "path"}
        opts.setdefault("device", self.ctx.cfg.device)
        opts.setdefault("precision", self.ctx.cfg.precision)
        return opts

    def student_def(self) -> dict:
        """What defines the student (for the part's key): a given encoder, or the recipe and training split."""
        cfg = self.ctx.cfg
        if "path" in cfg.student:
            return {"given": cfg.student["path"]}
        return {"recipe": student_recipe(self.student_opts()), **self.training_def()}

    def training_def(self) -> dict:
        """The student's training split (what exact-query scoring is fitted on), for the part's key."""
        return {"pool": _ids(self.td["train_pool"]), "queries": _ids(self.td["train_queries"])}

    def student_encoder(self) -> tuple[str, dict]:
        if self.student is None:
            ctx, cfg = self.ctx, self.ctx.cfg
            if "path" in cfg.student:
                self.student = cfg.student["path"], {"student": "given"}
            else:
                trp, trq = self.td["train_pool"], self.td["train_queries"]
                t0 = time.perf_counter()
                lctx, warm = _warmed(ctx, trp)  # the labelling teacher is warmed up on the pool it labels
                lab = exact_teacher(lctx, trp, trq)
                t_lab = time.perf_counter() - t0
                path, info = train_student(
                    ctx, f"toxicity-s{self.seed}", trp, trq, lab,
                    {"kind": "exact", **cfg.teacher, **({"adapters": _adapter_keys(lctx.features)} if warm else {})})
                info = {**info, "seconds_labels_this_run": t_lab, **({"teacher_warmup": warm} if warm else {})}
                self.student = path, info
        return self.student

    def exact_query_fit(self, spec: dict) -> dict:
        """Exact-query scoring fitted on the student's training split (issue 24; :mod:`influcoder.student.exact_query`, as
        the run's exact_query step fits it): the training rows' LoRA gradients at the adapter warmed up on the
        training pool (the student's labelling teacher), CountSketched to ``sketch_dim`` (the exact 1.24 M-dim
        gradients would need ≈ 10 GB in float64 for the basis), the basis / k / α chosen on a held-out share, the
        ridge head on the untrained encoder's features of the training pool."""
        from ..run.config import ExactQuerySection
        from ..student.encoder import InfluenceEncoder
        from ..student.exact_query import pool_features, select_and_fit

        opts = {k: v for k, v in method_spec(spec).items() if k not in ("kind", "name", "sketch_dim", "sketch_seed")}
        try:
            c = ExactQuerySection(enabled=True, **opts)
        except TypeError as e:
            raise UserError(f"config: method exact_query: {e} (options: the run's exact_query section, sketch_dim, "
                            "sketch_seed)") from None
        t = self.ctx.cfg.teacher
        rank, lseed = int(t.get("rank", 8)), int(t.get("lora_seed", 0))
        trp, trq = self.td["train_pool"], self.td["train_queries"]
        lctx, _ = _warmed(self.ctx, trp)
        sketch = self._sketcher(int(spec.get("sketch_dim", 65536)), int(spec.get("sketch_seed", 0)))

        def unit(recs):
            return sketch(lctx.features.lora(recs, rank, lseed, logra_k=t.get("share_logra_k"))["unit"])

        enc = InfluenceEncoder.from_pretrained(c.encoder, max_length=c.max_length)
        t0 = time.perf_counter()
        Xt = pool_features(enc, trp, c.batch_size)
        V, head, choice = select_and_fit(Xt, unit(trp), unit(trq), c.ks, c.alphas, c.selection, self.seed)
        self.ctx.log(f"exact-query (seed {self.seed}): basis {choice['basis']}, k {choice['k']}, α {choice['alpha']:g}")
        return {"V": V, "head": head, "encoder": enc, "section": c, "unit": unit, "seconds_fit": time.perf_counter() - t0,
                "describe": {"name": method_name(spec), "kind": "exact_query", "encoder": c.encoder, "max_length": c.max_length,
                             "sketch_dim": int(spec.get("sketch_dim", 65536)), **choice}}

    @staticmethod
    def _sketcher(dim: int, seed: int):
        """Unit rows of the CountSketch of float16 gradient rows (``dim`` 0: the exact rows), 64 rows at a time."""
        from ..student.exact_query import unit_rows
        from ..teacher.projection import ProjectionConfig, make_projector

        def run(G):
            if not dim:
                return unit_rows(G)
            return unit_rows(make_projector(G.shape[1], ProjectionConfig("countsketch", dim, seed)).project_rows(G))

        return run

    def compute(self, spec: dict) -> dict:
        """Score every variant with one method: {variant: {scores (aggregated per pool row), info, ...}}."""
        name = method_name(spec)
        out = {}
        from ..core import metrics as M

        if spec["kind"] == "exact_query":
            from ..student.exact_query import coordinates, pool_features

            fit = self.exact_query_fit(spec)
            seen: dict[str, np.ndarray] = {}  # predicted coordinates by record: Hom's rows are Het's
            rate = None  # seconds per pool example (features + head), measured where rows were computed
            for variant, vd in self.td["variants"].items():
                pool, refs = vd["pool"], self.td["refs"][variant]
                keys = _ids(pool)
                new = {k: r for k, r in zip(keys, pool) if k not in seen}
                if new:
                    t0 = time.perf_counter()
                    C_new = fit["head"].predict(pool_features(fit["encoder"], list(new.values()), fit["section"].batch_size))
                    seen.update(zip(new, C_new))
                    rate = (time.perf_counter() - t0) / len(new)
                Cp = np.stack([seen[k] for k in keys])
                t_pool = rate * len(pool)
                t0 = time.perf_counter()
                Cr = coordinates(fit["unit"](refs), fit["V"])
                t_refs = time.perf_counter() - t0
                s = Cp @ Cr.T
                cost = {"seconds_pool": t_pool, "seconds_query": t_refs, "seconds_fit": fit["seconds_fit"],
                        "seconds_per_example_featurize": t_pool / len(pool),
                        "bytes_per_example": float(Cp.shape[1] * 4)}
                out[variant] = {"scores": M.aggregate_scores(s), "info": {"method": fit["describe"], "cost": cost},
                                "seconds_per_example": t_pool / len(pool), "seconds_total_measured": None,
                                "bytes_per_example": cost["bytes_per_example"]}
            return out
        for variant, vd in self.td["variants"].items():
            pool, refs = vd["pool"], self.td["refs"][variant]
            vctx, warm = self.vctx(variant) if spec["kind"] in DECODER_KINDS else (self.ctx, {})
            sp, extra, s_info = method_spec(spec), None, {}
            if warm:
                extra = {"adapters": _adapter_keys(vctx.features)}
            if spec["kind"] == "gradsim" and sp.get("proj_dim"):
                _prefetch(vctx, pool + refs, [sp])
            if spec["kind"] == "influcoder":
                path, s_info = self.student_encoder()
                sp = {**method_spec(spec), "name": name, "encoder": path}
            s, info = score_method(vctx, sp, pool, refs, extra_key=extra)
            out[variant] = {"scores": M.aggregate_scores(s), "info": {**info, **s_info},
                            "seconds_per_example": per_example_seconds(info["cost"], len(pool), len(refs)),
                            "seconds_total_measured": info["cost"].get("seconds_total"),
                            "bytes_per_example": info["cost"].get("bytes_per_example")}
            if warm:
                out[variant]["warmup"] = warm
        return out


def run_toxicity(ctx: _Ctx) -> dict:
    """Every (seed, method) of a toxicity experiment. With ``parts_dir`` each one's per-row scores and timing go
    to ``<parts_dir>/s<seed>-<method>.json`` as soon as they are computed, and a part whose construction key
    matches is read instead of recomputed (so the experiment runs in pieces, on different days and machines);
    with ``ctx.committed_only`` nothing is computed and what is missing is reported as such."""
    from ..core.hardware import cpu_info

    cfg = ctx.cfg
    parts = Path(cfg.parts_dir) if cfg.parts_dir else None
    per_seed, missing = [], []
    for seed in ctx.seeds:
        td = toxicity_data(cfg.data, seed)
        sr = _SeedRun(ctx, td, seed)
        result = {"seed": seed, "construction": td["construction"], "types": td["types"],
                  "sizes": td.get("sizes"), "overlap_check": td["overlap_check"], "variants": {}}
        first = td["variants"][next(iter(td["variants"]))]
        result["n_pool"], result["n_positive"] = len(first["pool"]), int(first["positive"].sum())
        for variant, vd in td["variants"].items():
            result["variants"][variant] = {
                "n_pool": len(vd["pool"]), "n_positive": int(vd["positive"].sum()), "n_refs": len(td["refs"][variant]),
                "kinds": {k: vd["kind"].count(k) for k in sorted(set(vd["kind"]))}, "methods": {},
                "warmup_on": sr.warmup_pool(variant) if int(cfg.teacher.get("warmup_steps", 0)) else None}
        for spec in methods_of_seed(cfg, seed):
            name = method_name(spec)
            if ctx.only_methods and name not in ctx.only_methods:
                continue
            key = part_key(cfg, spec, td, sr.student_def() if spec["kind"] == "influcoder" else
                           sr.training_def() if spec["kind"] == "exact_query" else None)
            path = parts / f"s{seed}-{name}.json" if parts else None
            part = read_part(path, key) if path else None
            if part is None and ctx.committed_only:
                missing.append({"seed": seed, "method": name, "why": "absent" if not (path and path.exists()) else "key differs"})
                ctx.log(f"seed {seed} {name}: no committed result with this construction key")
                continue
            if part is None:
                if path is not None and path.exists():
                    ctx.log(f"seed {seed} {name}: {path} was built from another construction; recomputing")
                t0 = time.perf_counter()
                got = sr.compute(spec)
                part = {"key": key, "seed": seed, "method": name, "spec": method_spec(spec), "config": cfg.name,
                        "compute": {"device": ctx.device, "precision": ctx.precision, "cpu": cpu_info(probe=False),
                                    "seconds_wall": time.perf_counter() - t0},
                        "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                        "variants": {v: {**{k: x for k, x in g.items() if k != "scores"},
                                         "n_rows": len(g["scores"]), "scores_f32_b64": _b64(g["scores"])}
                                     for v, g in got.items()}}
                if path is not None:
                    _atomic_json(path, part)
            for variant, vd in td["variants"].items():
                pv = part["variants"][variant]
                agg = _unb64(pv["scores_f32_b64"])
                if len(agg) != len(vd["pool"]):
                    raise UserError(f"{path}: {variant} has {len(agg)} scores for {len(vd['pool'])} pool rows")
                m = detection_metrics(agg, vd["positive"], cfg.ks)
                result["variants"][variant]["methods"][name] = {
                    **m, "seconds_per_example": pv["seconds_per_example"],
                    "seconds_total_measured": pv.get("seconds_total_measured"),
                    "bytes_per_example": pv.get("bytes_per_example"), "info": pv["info"],
                    "compute": {k: part["compute"].get(k) for k in ("device", "precision")},
                    **({"part": str(path)} if path else {})}
                if pv.get("warmup"):
                    result["variants"][variant]["warmup"] = pv["warmup"]
                ctx.log(f"seed {seed} {variant} {name}: AUPRC {m['auprc']:.3f}")
        per_seed.append(result)
        ctx.mark(f"toxicity-seed{seed}")
    summary = {}
    for variant in per_seed[0]["variants"]:
        rows = [{"methods": r["variants"][variant]["methods"]} for r in per_seed]
        summary[variant] = _summarise(rows, ("auprc",) + tuple(f"precision@{k}" for k in cfg.ks)
                                      + tuple(f"recall@{k}" for k in cfg.ks))
    out = {"per_seed": per_seed, "summary": summary}
    if missing:
        out["missing"] = missing
    return out


# ----------------------------------------------------------------------------- fidelity
def run_fidelity(ctx: _Ctx) -> dict:
    found = []
    for p in ctx.cfg.fidelity.get("results", []):
        pp = Path(p)
        found.append({"path": str(pp), "exists": pp.exists(),
                      "content": json.loads(pp.read_text()) if pp.exists() and pp.suffix == ".json" else None})
    return {"linked": found}


# ----------------------------------------------------------------------------- flops for every method
def add_flops(ctx: _Ctx, result: dict, pool: list[Record], queries: list[Record]) -> dict:
    n = int(ctx.cfg.costs.get("n_examples", 8))
    if n <= 0:
        return {}
    nq = max(1, n // 3)
    sp, sq = pool[: max(1, n - nq)], queries[:nq]
    out = {}
    parts = Path(ctx.cfg.parts_dir) if ctx.cfg.parts_dir else None
    for spec in ctx.cfg.methods:
        name = method_name(spec)
        if ctx.only_methods and name not in ctx.only_methods:
            continue
        s = method_spec(spec)
        # the student's FLOPs are its architecture's: keyed without the (machine-local) path of its weights
        key = _key({"spec": s, "model": ctx.cfg.model, "pool": _ids(sp), "q": _ids(sq)})
        path = parts / f"flops-{name}.json" if parts else None
        saved = json.loads(path.read_text()) if path is not None and path.exists() else None
        if saved is not None and saved.get("key") == key:
            out[name] = saved
            continue
        if ctx.committed_only:
            continue
        if spec["kind"] == "influcoder":
            s = {"kind": "influcoder", "name": name, "encoder": result.get("_student_path") or "minilm-l6"}
        ctx.log(f"FLOPs of {name} on {len(sp)}+{len(sq)} examples")
        if spec["kind"] == "exact_query":  # per pool example: its three views through the untrained encoder
            enc = method_flops(ctx, {"kind": "semantic", "encoder": s.get("encoder", "minilm-l6")}, sp, sq)
            f = enc["flops_per_example"]
            out[name] = {**enc, "flops_per_example": None if f is None else 3 * f, "key": key,
                         "note": "3 × the untrained encoder's FLOPs per example (text, response, prompt); the ridge "
                                 "head and the queries' gradients not counted"}
        else:
            out[name] = {**method_flops(ctx, s, sp, sq), "key": key}
        if path is not None:
            _atomic_json(path, out[name])
    return out


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


# ============================================================================ entry point
def run(cfg: EvalConfig, *, progress: bool = True, log: Callable[[str], None] | None = None,
        command: str | None = None, committed_only: bool = False, only_methods: set[str] | None = None,
        only_seeds: list[int] | None = None) -> dict:
    """Run the experiment; write eval_<name>.json/.md/.png under cfg.out_dir; return the results dict.
    ``committed_only`` (toxicity with ``parts_dir``): compute nothing, tabulate the committed results;
    ``only_methods`` / ``only_seeds``: run only these methods (names) / these of the config's seeds (the cost
    sample stays the config's first seed's, so pieces run apart share it)."""
    log = log or (lambda s: None)
    ctx = _Ctx(cfg, log, progress)
    if only_methods:
        unknown = sorted(set(only_methods) - {method_name(m) for m in cfg.methods})
        if unknown:
            raise UserError(f"methods {', '.join(unknown)} not in the config (it has: "
                            f"{', '.join(method_name(m) for m in cfg.methods)})")
    ctx.committed_only, ctx.only_methods = committed_only, set(only_methods) if only_methods else None
    if only_seeds:
        bad = [x for x in only_seeds if x not in cfg.seeds]
        if bad:
            raise UserError(f"seeds {bad} not among the config's seeds {cfg.seeds}")
        ctx.seeds = [x for x in cfg.seeds if x in only_seeds]
    t0 = time.perf_counter()
    if cfg.experiment == "ranking":
        res = run_ranking(ctx)
        data = cfg.data
        pool_all, query_all = _read(data["pool"], data.get("preset")), _read(data["query"], data.get("preset"))
        sp = ranking_split(len(pool_all), len(query_all), data["test_pool"], data["test_queries"], cfg.seeds[0])
        sample_p, sample_q = [pool_all[i] for i in sp["test_pool"]], [query_all[i] for i in sp["test_queries"]]
        stud = [m for m in res["per_seed"][0]["methods"].values() if m["info"].get("method", {}).get("encoder")]
    elif cfg.experiment == "toxicity":
        res = run_toxicity(ctx)
        td = toxicity_data(cfg.data, cfg.seeds[0])
        v0 = next(iter(td["variants"]))
        sample_p, sample_q = td["variants"][v0]["pool"], td["refs"]["Hom"]
        stud = [m for v in res["per_seed"][0]["variants"].values() for m in v["methods"].values()
                if m["info"].get("method", {}).get("encoder")]
    else:
        res = run_fidelity(ctx)
        sample_p = sample_q = []
        stud = []
    if cfg.experiment != "fidelity":
        for m in stud:  # the distilled student's weights (not the untrained encoder of semantic or exact_query)
            if m["info"]["method"].get("name", "").startswith("influcoder") and Path(m["info"]["method"]["encoder"]).exists():
                res["_student_path"] = m["info"]["method"]["encoder"]
        res["flops"] = add_flops(ctx, res, sample_p, sample_q)
        res.pop("_student_path", None)
    res["config"] = cfg.to_dict()
    res["seeds"] = ctx.seeds
    # what auto resolved to, this run; rebuilt from committed parts, each result carries its own machine instead
    # (and no run time), so the files are regenerated byte for byte by the same command
    res["compute"] = ("per result (rebuilt from the committed parts)" if committed_only
                      else {"device": ctx.device, "precision": ctx.precision})
    res["command"] = command
    if not committed_only:
        res["seconds_this_run"] = time.perf_counter() - t0
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"eval_{cfg.name}"
    if cfg.parts_dir:  # the precision-recall curves follow from the committed per-row scores: not repeated (MBs)
        import copy

        slim = copy.deepcopy(res)
        for r in slim.get("per_seed", []):
            for v in r.get("variants", {}).values():
                for m in v.get("methods", {}).values():
                    m.pop("pr_curve", None)
        _atomic_json(stem.with_suffix(".json"), slim)
    else:
        _atomic_json(stem.with_suffix(".json"), res)
    md = report_markdown(cfg, res, command or f"influcoder evaluate <config for {cfg.name}>")
    tmp = stem.with_suffix(".md.tmp")
    tmp.write_text(md)
    os.replace(tmp, stem.with_suffix(".md"))
    png = stem.with_suffix(".png")
    tmp_png = stem.with_name(stem.name + ".tmp.png")
    if make_figures(cfg, res, tmp_png):
        os.replace(tmp_png, png)
    ctx.mark("complete", {"seconds": time.perf_counter() - t0})
    return res
