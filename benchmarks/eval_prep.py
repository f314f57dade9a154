"""Write the student training files used by configs/exp1_ranking.yaml and configs/exp2_toxicity.yaml.

On this shared 2-core machine one LoRA-gradient pass of SmolLM2 took ~40 s per example, so the two
experiments share gradient computations: experiment 1's student trains on experiment 2's benign evaluation
pool (× BBH queries outside experiment 1's test block), and experiment 2's student trains on experiment 1's
held-out pool (benign, none of it in experiment 2's pool or references) plus unsafe examples whose prompts
appear nowhere in experiment 2's pool or references. Overlaps are checked by the harness at run time too.

    python benchmarks/eval_prep.py
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from influcoder.evaluate import _read, ranking_split, toxicity_data


def write(path: Path, recs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in recs:
            f.write(json.dumps({"id": r.id, "prompt": r.prompt, "response": r.response}) + "\n")
    print(path, len(recs))


def main() -> None:
    c1 = yaml.safe_load(open("configs/exp1_ranking.yaml"))
    c2 = yaml.safe_load(open("configs/exp2_toxicity.yaml"))
    d1, d2 = c1["data"], dict(c2["data"])
    d2.pop("train_benign_file", None)
    tox = toxicity_data({**d2, "train_benign": 0}, c2["seeds"][0])
    pool, qs = _read(d1["pool"], d1.get("preset")), _read(d1["query"], d1.get("preset"))
    sp = ranking_split(len(pool), len(qs), d1["test_pool"], d1["test_queries"], c1["seeds"][0])
    test_pool = [pool[i] for i in sp["test_pool"]]
    eval2_ids = {r.id for r in tox["pool"]}
    test1_ids = {r.id for r in test_pool}
    exp2_benign = [r for r in tox["pool"] if not r.id.startswith("xstest:")]
    write(Path("work/eval/exp1_train_pool.jsonl"), [r for r in exp2_benign if r.id not in test1_ids])
    write(Path("work/eval/exp1_train_queries.jsonl"), [qs[i] for i in sp["train_queries"][:8]])
    write(Path("work/eval/exp2_train_benign.jsonl"), [r for r in test_pool if r.id not in eval2_ids])


if __name__ == "__main__":
    main()
