"""Rewrite a seed file's train / held-out split so that whole source files (and same-named twins) are held out.

    python scripts/split_seed_by_source.py data/seed/seed_v1.jsonl --heldout 40 --seed 2026

Rows keep their order and content; only `split` changes. The rule is `method.seed.split_by_source`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scoder_lib.core.io import write_jsonl
from scoder_lib.method import seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path)
    ap.add_argument("--heldout", type=int, required=True, help="at least this many held-out samples")
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()
    rows = seed.load(args.path).rows
    split = seed.split_by_source(rows, args.heldout, args.seed)
    raw = [json.loads(line) for line in args.path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for r in raw:
        r["split"] = split[r["id"]]
    write_jsonl(args.path, raw)
    fixed = seed.load(args.path)
    print(f"{len(fixed.train)} train, {len(fixed.heldout)} held out; leaks: {seed.leaks(fixed) or 'none'}")


if __name__ == "__main__":
    main()
