"""Why dictionary lookup fails at large memory: where the right key ranks among N memory keys (focused.evals.key_ranks).

For each memory size, one document of the eval stream (`--seed`, default 3000: a diagnostic seed, neither a training
seed nor the reported 1000 or the validation 2000/2001), the 16 queries of its first query page, every query head
of the memory layer scored exactly against all N keys. Prints and writes (`--out`, markdown + JSON) per size: the
share of (query, head) pairs whose right key is first and within the top 32 (what FAISS with k = 32 returns), the
median and max rank, and which keys outrank the right one (key letters shared with the query, offset in their item).

    python experiments/dictionary_key_ranks.py                      # models/dict_lookup_fot, 256K / 1M / 4M
    python experiments/dictionary_key_ranks.py --model models/dict_lookup_d1 --sizes 65536,262144
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/dict_lookup_fot", help="an exported dictionary model folder")
    parser.add_argument("--sizes", default="262144,1048576,4194304", help="memory sizes in tokens, comma-separated")
    parser.add_argument("--seed", type=int, default=3000, help="eval-stream seed of the documents")
    parser.add_argument("--k", type=int, default=32, help="the kNN index's neighbours per query (paper: 32)")
    parser.add_argument("--out", default="", help="write <out>.md and <out>.json (default: print only)")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from focused.convert import import_hf
    from focused.data.synthetic import load_task
    from focused.evals.key_ranks import key_ranks, summary

    task = load_task(args.model)
    if task is None:
        raise SystemExit(f"error: {args.model} carries no dictionary task layout: pass a dictionary model folder")
    model = import_hf(args.model)
    rows = []
    for size in args.sizes:
        start = time.perf_counter()
        result = key_ranks(model, task, size, args.seed)
        row = summary(result, args.k)
        row["outranking"] = {f"{s} shared, offset {o}": n for (s, o), n in sorted(result["outranking"].items())}
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [
        f"# Where the right key ranks: {args.model}, eval-stream seed {args.seed}, one document per size",
        "",
        f"| memory tokens | pairs | right key first | within top {args.k} | queries: first in a head | first in most "
        "heads | median rank | max rank | outranking keys sharing no letter | right key first by direction | "
        "outranking keys' length (share of keys shorter, median) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['memory_tokens']} | {r['pairs']} | {r['first']:.1%} | {r[f'top{args.k}']:.1%} | "
            f"{r['query_first_in_a_head']:.1%} | {r['query_first_in_most_heads']:.1%} | "
            f"{r['median_rank']:.0f} | {r['max_rank']} | {r['outranking_no_shared_letter']:.0%} | "
            f"{r['first_by_direction']:.1%} | {_share(r['outranking_norm_median'])} |"
        )
    command = "python experiments/dictionary_key_ranks.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines += ["", f"Command: `{command.strip()}`", ""]
    print("\n".join(lines))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.md").write_text("\n".join(lines))
        Path(f"{args.out}.json").write_text(json.dumps(rows, indent=1))
    return 0


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())
