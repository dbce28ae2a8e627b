"""Benchmark of the host kNN memory (`KnnMemoryStore`): build time, search time and peak RSS per index type.

Each (index type, size) runs in its own child process (so `ru_maxrss` is that run's peak) over one memory of
1 layer × 1 batch row × 1 kv head holding N clustered keys (`--clusters` Gaussian centres plus noise: IVF recall on
i.i.d. Gaussian keys is meaningless). Build = all `store.add` calls in chunks (IVF: training on the first
`--train-size` keys included; key generation excluded). Search = one `store.search` of `--queries` queries for the
top `--k` (median of `--repeats`). Peak RSS is taken after build + search (the process's baseline, JAX and numpy
imports included, is ~0.5 GiB). Recall@k is against exact brute force over the stored (payload) keys, so with a
float16 payload even flat can score slightly below 1 (rounding reorders near-ties at rank k).

    python bench/faiss_memory.py --sizes 1e6,16e6 --dim 128 --types flat,ivf_fp16
    python bench/faiss_memory.py --sizes 1e6 --dim 128 --types flat,ivf_fp16,hnsw --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from focused.memory.faiss_index import KnnMemoryStore
from focused.memory.index_config import INDEX_TYPES, KnnIndexConfig

COLUMNS = ("type", "N", "dim", "threads", "build_s", "search_ms", "recall", "peak_rss_gib", "load")


def clustered(rng: np.random.Generator, centers: np.ndarray, n: int, noise: float) -> np.ndarray:
    """`[n, dim]` float32 keys: a random centre plus Gaussian noise of scale `noise`."""
    keys = rng.standard_normal((n, centers.shape[1]), dtype=np.float32)
    keys *= noise
    keys += centers[rng.integers(0, len(centers), n)]
    return keys


def run_one(index_type: str, n: int, args: argparse.Namespace) -> dict:
    """Builds and searches one memory in this process; returns one row of the table."""
    values_path = None
    if args.values_path:
        values_path = tempfile.mkdtemp(prefix=f"{index_type}_{n}_", dir=args.values_path)
    config = KnnIndexConfig(
        index_type=index_type,
        nlist=args.nlist,
        nprobe=args.nprobe,
        hnsw_m=args.hnsw_m,
        ef_search=args.ef_search,
        train_size=args.train_size,
        use_gpu=False,
        values_path=values_path,
        capacity=n,
        payload_dtype=args.payload_dtype,
        num_threads=args.threads,
    )
    store = KnnMemoryStore(1, 1, 1, args.dim, config)
    rng = np.random.default_rng(args.seed)
    centers = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    build = 0.0
    for start in range(0, n, args.chunk):
        keys = clustered(rng, centers, min(args.chunk, n - start), args.noise)[None, None, :, None]
        valid = np.ones((1, keys.shape[2]), bool)
        began = time.perf_counter()
        store.add(keys, keys, valid)  # the values' content does not matter for timing
        build += time.perf_counter() - began
        del keys
    queries = clustered(rng, centers, args.queries, args.noise)[None, None, :, None]
    times = []
    for _ in range(args.repeats):
        began = time.perf_counter()
        store.search(queries, args.k)
        times.append(time.perf_counter() - began)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux → GiB; before the recall check
    recall = store.recall_at_k(queries, args.k) if args.recall else float("nan")
    return dict(
        type=index_type,
        N=n,
        dim=args.dim,
        threads=args.threads or len(os.sched_getaffinity(0)),
        build_s=round(build, 2),
        search_ms=round(1000 * float(np.median(times)), 1),
        recall=round(recall, 3),
        peak_rss_gib=round(peak, 2),
        load=round(os.getloadavg()[0], 1),  # 1-min load average: other jobs on the box slow OpenMP down a lot
    )


def table(rows: list[dict]) -> str:
    """A markdown table of the result rows."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1e6", help="comma-separated entry counts, e.g. 1e6,16e6")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--types", default="flat,ivf_fp16", help=f"comma-separated, from {INDEX_TYPES}")
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads (default: all cores)")
    parser.add_argument("--train-size", type=int, default=65536)
    parser.add_argument("--payload-dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--values-path", default=None, help="directory for memmap payload files (default: RAM)")
    parser.add_argument("--clusters", type=int, default=4096)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--chunk", type=int, default=1 << 18, help="keys per add call")
    parser.add_argument("--no-recall", dest="recall", action="store_false", help="skip the exact recall check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    parser.add_argument("--one", nargs=2, metavar=("TYPE", "N"), help=argparse.SUPPRESS)  # child-process mode
    args = parser.parse_args(argv)
    for name in args.types.split(","):
        if name not in INDEX_TYPES:
            parser.error(f"unknown index type {name!r}; use one of {INDEX_TYPES}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args)), flush=True)
        return
    argv = sys.argv[1:] if argv is None else argv
    rows = []
    for size in (int(float(s)) for s in args.sizes.split(",")):
        for index_type in args.types.split(","):
            print(f"running {index_type} N={size:,} dim={args.dim} ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, os.path.abspath(__file__), *argv, "--one", index_type, str(size)]
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
