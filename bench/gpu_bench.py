"""GPU readiness benchmark (run by `bench/gpu.sh`): train-step MFU of a ~1B model in bf16, 64K-token ingest with
dense memory, and FAISS search at 1M / 16M keys on the GPU and through the CPU fallback.

    python bench/gpu_bench.py                  # on a GPU machine (bench/gpu.sh wraps it, with a time limit)
    python bench/gpu_bench.py --tiny           # the same code paths at toy sizes, on any machine (CPU: tests)
    python bench/gpu_bench.py --parts train --json out.json

1. train: `make_train_step` (CrossBatch k = 4, r = 3 with stepping, as in the LongLLaMA recipe) on a LLaMA of
   d = 2048, 16 layers, 16 heads, FF 5504, vocab 32000, window W = 2048 (N ≈ 0.94B parameters; memory layers
   4/8/12), bf16 compute with fp32 parameters and remat, batch B rows of W tokens. Model FLOPs per step
   (PaLM appendix B convention, remat recomputation not counted):

       FLOPs/step = 6 · N_matmul · T + 12 · L · d · W · T,     T = B · W tokens per step

   N_matmul = parameters that take part in matmuls (all but the input embedding table, which is a lookup); the
   second term is causal self-attention counted over the full W × W score matrix (QKᵀ and AV, forward + backward).
   Memory attention over the CrossBatch rows is not counted, so the MFU shown is a lower bound.
   MFU = FLOPs/step / step time / peak, peak = `--peak-tflops` (default by device kind: H100/H200 989, A100 312
   dense bf16 TFLOP/s). Step time = median over `--steps` steps after 2 warm-up steps (compile excluded).
2. ingest: `focused.memory.backends.run_long` over `--ingest-tokens` (65536) tokens, one row, dense on-device
   memory of the whole prompt, same model with bf16 parameters; tokens/s of a second run (the first compiles).
3. faiss: `KnnMemoryStore` (1 layer, 1 row, 1 kv head, dim 128, flat index) with N keys for N in `--faiss-sizes`
   (1M, 16M): build time and the median time to search 64 queries for the top 32, with `use_gpu=True` (faiss-gpu)
   and with `use_gpu=False` (the CPU path). A FAISS without GPU support falls back to the CPU with a warning; the
   `use_gpu` row then says `cpu (fallback)`.

Prints one JSON object (and writes it to `--json`). Exit status 0 when every part ran.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def model_config(tiny: bool, param_dtype: str = "float32") -> Any:
    from focused.model.config import LlamaConfig

    if tiny:
        return LlamaConfig(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            last_context_length=32,
            mem_layers=(1,),
            dtype="bfloat16",
            param_dtype=param_dtype,
            mem_dtype="bfloat16",
            remat=True,
        )
    return LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5504,
        num_hidden_layers=16,
        num_attention_heads=16,
        max_position_embeddings=2048,
        last_context_length=1024,
        mem_layers=(4, 8, 12),
        dtype="bfloat16",
        param_dtype=param_dtype,
        mem_dtype="bfloat16",
        remat=True,
    )


def count_params(params: Any) -> tuple[int, int]:
    """(all parameters, parameters that take part in matmuls: all but the input embedding table)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    total = sum(int(np.prod(x.shape)) for _, x in flat)
    embedding = sum(int(np.prod(x.shape)) for p, x in flat if "embed_tokens" in jax.tree_util.keystr(p))
    return total, total - embedding


def train_flops(n_matmul: int, layers: int, hidden: int, window: int, tokens: int) -> float:
    """Model FLOPs of one train step: 6·N·T + 12·L·d·W·T (see the module docstring)."""
    return 6.0 * n_matmul * tokens + 12.0 * layers * hidden * window * tokens


def peak_tflops(requested: float) -> float | None:
    if requested > 0:
        return requested
    kind = jax.devices()[0].device_kind
    for name, value in PEAK_TFLOPS.items():
        if name in kind:
            return value
    return None


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    from focused.memory.crossbatch import CrossBatch
    from focused.model.llama import LlamaForCausalLM
    from focused.training.optimizer import TrainConfig, make_optimizer
    from focused.training.step import make_train_step

    cfg = model_config(args.tiny)
    batch = args.batch or 8
    window = cfg.max_position_embeddings
    graphdef, params = nnx.split(LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)))
    total, n_matmul = count_params(params)
    tx = make_optimizer(TrainConfig(steps=100, learning_rate=1e-4, warmup_steps=0, schedule="constant"))
    opt_state = tx.init(params)
    step = make_train_step(graphdef, tx, 1, CrossBatch(range=3, group=4, stepping=True))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, size=(batch, window + 1), dtype=np.int32)
    data = {
        "inputs": jnp.asarray(tokens[:, :-1]),
        "targets": jnp.asarray(tokens[:, 1:]),
        "loss_mask": jnp.ones((batch, window), jnp.float32),
    }
    began = time.perf_counter()
    params, opt_state, metrics = step(params, opt_state, data)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - began
    params, opt_state, metrics = step(params, opt_state, data)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        began = time.perf_counter()
        params, opt_state, metrics = step(params, opt_state, data)
        jax.block_until_ready((params, opt_state, metrics))
        times.append(time.perf_counter() - began)
    seconds = statistics.median(times)
    flops = train_flops(n_matmul, cfg.num_hidden_layers, cfg.hidden_size, window, batch * window)
    peak = peak_tflops(args.peak_tflops)
    return {
        "params": total,
        "params_matmul": n_matmul,
        "batch": batch,
        "window": window,
        "tokens_per_step": batch * window,
        "flops_per_step": flops,
        "flops_formula": "6*N_matmul*T + 12*L*d*W*T",
        "first_step_s": round(compile_s, 2),
        "step_s": round(seconds, 6),
        "tokens_per_s": round(batch * window / seconds, 1),
        "tflops_per_s": round(flops / seconds / 1e12, 2),
        "peak_tflops": peak,
        "mfu": round(flops / seconds / 1e12 / peak, 6) if peak else None,
        "loss": float(metrics["loss"]),
    }


def bench_ingest(args: argparse.Namespace) -> dict[str, Any]:
    from focused.memory.backends import MemoryConfig, run_long
    from focused.model.llama import LlamaForCausalLM

    cfg = model_config(args.tiny, param_dtype="bfloat16")
    model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
    n = args.ingest_tokens or (256 if args.tiny else 65536)
    ids = np.random.default_rng(0).integers(3, cfg.vocab_size, size=(1, n)).astype(np.int32)
    window = cfg.max_position_embeddings
    memory = MemoryConfig(backend="dense", capacity=n)
    began = time.perf_counter()
    run_long(model, ids, None, memory)  # compiles every window step (memory views grow with the memory)
    compile_s = time.perf_counter() - began
    began = time.perf_counter()
    logits = run_long(model, ids, None, memory)
    seconds = time.perf_counter() - began
    return {
        "tokens": n,
        "window": window,
        "backend": "dense",
        "first_run_s": round(compile_s, 2),
        "seconds": round(seconds, 2),
        "tokens_per_s": round(n / seconds, 1),
        "logits_finite": bool(np.isfinite(np.asarray(logits[0, -1], np.float32)).all()),
    }


def bench_faiss(args: argparse.Namespace) -> list[dict[str, Any]]:
    from focused.memory.faiss_index import KnnMemoryStore
    from focused.memory.index_config import KnnIndexConfig

    sizes = [int(float(s)) for s in (args.faiss_sizes or ("1e4" if args.tiny else "1e6,16e6")).split(",")]
    dim, queries, k, chunk = 128, 64, 32, 1 << 20
    rows = []
    for n in sizes:
        for want_gpu in (True, False):
            config = KnnIndexConfig(index_type="flat", use_gpu=want_gpu, capacity=n, payload_dtype="float16")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                store = KnnMemoryStore(1, 1, 1, dim, config)
            on_gpu = getattr(store, "_gpu", None) is not None
            rng = np.random.default_rng(0)
            build = 0.0
            for start in range(0, n, chunk):
                keys = rng.standard_normal((1, 1, min(chunk, n - start), 1, dim), dtype=np.float32)
                began = time.perf_counter()
                store.add(keys, keys, np.ones((1, keys.shape[2]), bool))
                build += time.perf_counter() - began
                del keys
            q = rng.standard_normal((1, 1, queries, 1, dim), dtype=np.float32)
            store.search(q, k)  # warm-up (GPU kernels, OpenMP threads)
            times = []
            for _ in range(3):
                began = time.perf_counter()
                store.search(q, k)
                times.append(time.perf_counter() - began)
            device = "gpu" if on_gpu else ("cpu (fallback)" if want_gpu else "cpu")
            rows.append(
                {
                    "N": n,
                    "use_gpu": want_gpu,
                    "device": device,
                    "build_s": round(build, 2),
                    "search_ms": round(1000 * statistics.median(times), 2),
                    "warnings": [str(w.message) for w in caught][:2],
                }
            )
            print(f"faiss N={n:,} {device}: search {rows[-1]['search_ms']} ms", file=sys.stderr, flush=True)
            del store
    return rows


PARTS = {"train": bench_train, "ingest": bench_ingest, "faiss": bench_faiss}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="toy sizes (any machine; what the tests run)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {tuple(PARTS)}")
    parser.add_argument("--batch", type=int, default=0, help="train rows per step (default 8)")
    parser.add_argument("--steps", type=int, default=5, help="timed train steps (median reported)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="peak bf16 TFLOP/s (default: by device)")
    parser.add_argument("--ingest-tokens", type=int, default=0, help="default 65536 (--tiny: 256)")
    parser.add_argument("--faiss-sizes", default="", help="comma-separated key counts (default 1e6,16e6)")
    parser.add_argument("--require-gpu", action="store_true", help="exit 3 unless JAX runs on a GPU")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args(argv)
    unknown = [p for p in args.parts.split(",") if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; use {tuple(PARTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backend = jax.default_backend()
    if args.require_gpu and backend != "gpu":
        print(f"error: JAX runs on {backend}, not a GPU: pip install -e '.[gpu]' (jax[cuda12])", file=sys.stderr)
        return 3
    result: dict[str, Any] = {
        "backend": backend,
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "tiny": args.tiny,
    }
    for part in args.parts.split(","):
        began = time.perf_counter()
        print(f"running {part} ...", file=sys.stderr, flush=True)
        result[part] = PARTS[part](args)
        result[f"{part}_wall_s"] = round(time.perf_counter() - began, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
