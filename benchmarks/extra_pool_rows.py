"""The 1,700 extra pool rows of the distillation study's round-6 curve (issue 24 item 4), rebuilt exactly.

Experiment 1's pool (``work/full/pool.jsonl``: ``influcoder mix ... --n 1350``) takes 1,350 of the 3,401 rows of its
three sources. The extra rows are the others — every row of the same mix drawn at its full size (3,401) whose id and
text are not in experiment 1's pool and whose response is not empty — shuffled with ``random.Random(0)``, first 1,700:

    influcoder mix --source alpaca=../shared/data/alpaca/alpaca_en_demo.json \\
        --source dolly=../shared/data/dolly/databricks-dolly-15k-safety-only.jsonl \\
        --source alpaca=../shared/data/code_alpaca/code_alpaca_2k.json --n 3401 --out work/more/all.jsonl
    python benchmarks/extra_pool_rows.py --all work/more/all.jsonl --pool work/full/pool.jsonl --out work/more/extra.jsonl
    influcoder stock --model smollm2-135m-instruct --data work/more/extra.jsonl --out work/more/extra \\
        --preset prompt-response --proj-dim 65536 --max-length 256 --dtype float32 --shard-size 64

(the stocking settings are experiment 1's pool store's). Prints the file's sha256 and its rows per source.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import random
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--all", required=True, help="the sources mixed at their full size (3,401 rows)")
    ap.add_argument("--pool", required=True, help="experiment 1's pool (its rows are left out)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=1700)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    pool = [json.loads(line) for line in open(args.pool)]
    used = {r["id"] for r in pool}
    texts = {(r["prompt"], r["response"]) for r in pool}
    rest = [r for r in map(json.loads, open(args.all))
            if r["id"] not in used and (r["prompt"], r["response"]) not in texts and r["response"].strip()]
    random.Random(args.seed).shuffle(rest)
    if len(rest) < args.n:
        raise SystemExit(f"only {len(rest)} rows left outside {args.pool}; asked for {args.n}")
    text = "".join(json.dumps(r) + "\n" for r in rest[:args.n])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote {args.n} rows to {args.out} (sha256 {hashlib.sha256(text.encode()).hexdigest()}); by source:",
          dict(collections.Counter(r["id"].split(":")[0] for r in rest[:args.n])))


if __name__ == "__main__":
    main()
