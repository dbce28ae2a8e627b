"""Ingest throughput of a long prompt with each memory backend on the tiny model (random weights).

    python bench/ingest_memory.py --tokens 65536 --backends dense,topk,faiss_flat,faiss_ivf_fp16

Prints tokens/s per backend and the ratio to `dense` (measured in the same run on the same machine). The first
window of each backend compiles; it is timed separately (`compile_s`) and excluded from tokens/s.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from flax import nnx

from focused.config import load_config
from focused.memory.backends import MemoryConfig, run_long
from focused.model.config import LlamaConfig
from focused.model.llama import LlamaForCausalLM

BACKENDS = {
    "dense": MemoryConfig(backend="dense"),
    "topk": MemoryConfig(backend="topk", top_k=32),
    "faiss_flat": MemoryConfig(backend="faiss", top_k=32, index={"index_type": "flat", "num_threads": 1}),
    "faiss_ivf_fp16": MemoryConfig(
        backend="faiss",
        top_k=32,
        index={"index_type": "ivf_fp16", "nlist": 64, "nprobe": 8, "train_size": 8192, "num_threads": 1},
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args()
    config = load_config(["bench", "--config", "configs/tiny.py"])
    model_cfg = LlamaConfig.from_dict(config.model.to_dict())
    model = LlamaForCausalLM(model_cfg, rngs=nnx.Rngs(0))
    window = model_cfg.max_position_embeddings
    ids = np.random.default_rng(0).integers(3, model_cfg.vocab_size, size=(1, args.tokens)).astype(np.int32)
    rows = []
    for name in args.backends.split(","):
        cfg = BACKENDS[name]
        t0 = time.perf_counter()
        run_long(model, ids[:, :window], None, cfg)  # compile (same shapes as every later window)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_long(model, ids, None, cfg)
        seconds = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        rows.append((name, args.tokens / seconds, seconds, compile_s, rss))
        print(
            f"{name:16s} {args.tokens / seconds:10.0f} tok/s  {seconds:8.1f} s  compile {compile_s:5.1f} s", flush=True
        )
    base = dict((r[0], r[1]) for r in rows).get("dense")
    print("\n| backend | tokens/s | total s | first-window (compile) s | ratio to dense | peak RSS so far GiB |")
    print("|---|---|---|---|---|---|")
    for name, tps, seconds, compile_s, rss in rows:
        ratio = f"{tps / base:.2f}" if base else "-"
        print(f"| {name} | {tps:.0f} | {seconds:.1f} | {compile_s:.1f} | {ratio} | {rss:.2f} |")


if __name__ == "__main__":
    main()
