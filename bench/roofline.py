"""How fast can issue 9's workloads possibly run on this machine? A roofline for the train step, ingest and decode.

Issue 9 asks focused to beat its peers by set factors (train step >= 1.5x HF sdpa, ingest >= 3x and decode >= 2x the
official LongLLaMA code). Whether a factor is reachable at all depends on how close the peer already runs to what
the hardware allows. This script measures the machine's two ceilings in float32 and counts each workload's work:

  GEMM ceiling    the best fp32 matmul throughput of torch (oneDNN/MKL) and of JAX (XLA:CPU) on square matrices
                  (1024, 2048, 3072), best of several calls: an upper bound for any dense layer here
  memory ceiling  the best read bandwidth (a sum over a 1 GiB fp32 array, torch and JAX)
  work            FLOPs counted from the model shapes (2 per multiply-add: every projection, the LM head where it
                  is needed, attention scores and values over the keys a query actually sees; backward = 2x
                  forward) and, for decoding, the bytes every new token must read (all weights once, plus the
                  keys/values it attends to)

The time bound of a workload is max(FLOPs / GEMM ceiling, bytes / memory ceiling): nothing doing that work can be
faster. Two counts per task: the peer's work as it does it (the official forward computes logits at every
position) and the least work the task needs (ingest for generation needs hidden states up to the last memory
layer for every window but the last, and one row of logits). Given the peers' measured times (the JSON files of
bench/train_throughput.py and bench/longllama_ingest_decode.py from the same session), it prints the fastest any
implementation could be against that peer ("max speed-up") beside the issue's target:

    python bench/train_throughput.py --json train.json
    python bench/longllama_ingest_decode.py --official-src ... --python ... --models small,mid --json ingest.json
    python bench/roofline.py --train-json train.json --ingest-json ingest.json [--json roofline.json]

The ceilings are optimistic (large square GEMMs, a streaming read), so the bounds are optimistic too: a "max
speed-up" below the target means the target cannot be met in fp32 on this machine by any code. Refuses to start
when the 1-minute load average is above --max-load (contention lowers the ceilings).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from longllama_ingest_decode import MODELS
from quiet import ForeignCpu, refuse_if_busy

from focused.config import load_config
from focused.memory.dense import window_starts

ROOT = Path(__file__).resolve().parent.parent

F32 = 4  # bytes


@dataclasses.dataclass(frozen=True)
class Shape:
    """The model dimensions that set the work (LLaMA layout; head_dim = hidden / heads)."""

    vocab: int
    hidden: int
    inter: int
    layers: int
    heads: int
    kv_heads: int
    window: int
    last_context: int
    mem_layers: tuple[int, ...]

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    def layer_params(self) -> int:
        """Weights of one decoder layer's projections (norms are negligible)."""
        h = self.hidden
        return h * h * 2 + h * self.kv_dim * 2 + 3 * h * self.inter

    def dense_flops(self, tokens: int, layers: int | None = None) -> float:
        """Forward FLOPs of `layers` decoder layers' projections for `tokens` tokens."""
        return 2.0 * tokens * self.layer_params() * (self.layers if layers is None else layers)

    def attention_flops(self, keys_seen: float, layers: int = 1) -> float:
        """Scores (q.k) and weighted values for a total of `keys_seen` (query, key) pairs, over `layers` layers."""
        return 4.0 * keys_seen * self.hidden * layers

    def head_flops(self, rows: int) -> float:
        return 2.0 * rows * self.hidden * self.vocab


def shape_from(cfg: dict, kv_heads: int | None = None) -> Shape:
    return Shape(
        vocab=cfg["vocab_size"],
        hidden=cfg["hidden_size"],
        inter=cfg["intermediate_size"],
        layers=cfg["num_hidden_layers"],
        heads=cfg["num_attention_heads"],
        kv_heads=kv_heads or cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        window=cfg["max_position_embeddings"],
        last_context=cfg.get("last_context_length", cfg["max_position_embeddings"]),
        mem_layers=tuple(cfg.get("mem_layers", ())),
    )


def causal_pairs(t: int) -> float:
    """(query, key) pairs of causal attention inside a block of t tokens."""
    return t * (t + 1) / 2


def train_step_flops(s: Shape, batch: int, seq: int) -> float:
    """Forward + backward (2x forward) of the plain model on batch x seq tokens, logits at every position."""
    tokens = batch * seq
    fwd = s.dense_flops(tokens) + s.attention_flops(batch * causal_pairs(seq), s.layers) + s.head_flops(tokens)
    return 3.0 * fwd


def _windows(s: Shape, n: int) -> list[tuple[int, int]]:
    """The official split of n tokens (`focused.memory.dense.window_starts`, "longllama"): windows of W from token 0
    into memory, then the last `last_context` tokens as one chunk; (start, length) per block."""
    starts = window_starts(n, s.window, s.last_context, split="longllama")
    return [(a, b - a) for a, b in zip(starts, [*starts[1:], n], strict=True)]


def ingest_flops(s: Shape, n: int, minimal: bool) -> float:
    """Reading n tokens with dense memory (every memory layer attends to all earlier tokens).

    minimal=False: the official forward (every layer for every token, logits at every position).
    minimal=True: what generation needs: for blocks before the last, layers up to the last memory layer (whose
    keys/values go to memory; its attention output is not needed), and one row of logits at the end."""
    last_mem = max(s.mem_layers) if s.mem_layers else s.layers - 1
    total = 0.0
    blocks = _windows(s, n)
    for i, (start, length) in enumerate(blocks):
        final = i == len(blocks) - 1
        layers = s.layers if (final or not minimal) else last_mem  # full layers below the last memory layer
        mem_reads = [m for m in s.mem_layers if m < layers]
        total += s.dense_flops(length, layers)
        total += s.attention_flops(causal_pairs(length), layers)
        total += s.attention_flops(length * start, len(mem_reads))
        if minimal and not final:
            total += 2.0 * length * s.hidden * s.kv_dim * 2  # k, v projections of the last memory layer
        total += s.head_flops(1 if minimal else length)
    return total


def decode_cost(s: Shape, prompt: int, new: int) -> tuple[float, float]:
    """FLOPs and bytes read for `new - 1` greedy steps after a `prompt`-token prompt (the first token comes from
    the prompt's logits). Every step reads every weight once; memory layers read the keys/values of all earlier
    tokens, the others a local cache of at least `last_context` tokens (the least the official cache holds)."""
    steps = new - 1
    weights = s.layers * s.layer_params() + s.hidden * s.vocab  # + one embedding row, negligible
    flops = bytes_ = 0.0
    for j in range(steps):
        seen = prompt + 1 + j
        local = min(seen, s.last_context)
        keys = len(s.mem_layers) * seen + (s.layers - len(s.mem_layers)) * local
        flops += 2.0 * weights + s.attention_flops(keys)
        bytes_ += F32 * (weights + 2 * keys * s.kv_dim)
    return flops, bytes_


# ---------------------------------------------------------------------------------------------------------------
# the ceilings


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (JAX compiles here)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_ceiling(repeats: int) -> dict[str, dict[int, float]]:
    """fp32 GFLOP/s of an n x n x n matmul, per library and size."""
    import jax
    import jax.numpy as jnp
    import torch

    out: dict[str, dict[int, float]] = {"torch": {}, "jax": {}}
    rng = np.random.default_rng(0)
    matmul = jax.jit(lambda a, b: a @ b)
    for n in (1024, 2048, 3072):
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        flops = 2.0 * n**3
        out["torch"][n] = flops / best_seconds(lambda ta=ta, tb=tb: torch.matmul(ta, tb), repeats) / 1e9
        out["jax"][n] = flops / best_seconds(lambda ja=ja, jb=jb: matmul(ja, jb).block_until_ready(), repeats) / 1e9
    return out


def read_bandwidth(repeats: int, gib: float = 1.0) -> dict[str, float]:
    """GB/s of summing a `gib` GiB fp32 array (a pure streaming read)."""
    import jax
    import jax.numpy as jnp
    import torch

    n = int(gib * 2**30) // F32
    x = np.random.default_rng(1).standard_normal(n, dtype=np.float32)
    tx, jx = torch.from_numpy(x), jnp.asarray(x)
    total = jax.jit(jnp.sum)
    return {
        "torch": n * F32 / best_seconds(lambda: tx.sum(), repeats) / 1e9,
        "jax": n * F32 / best_seconds(lambda: total(jx).block_until_ready(), repeats) / 1e9,
    }


# ---------------------------------------------------------------------------------------------------------------


def peer_times(train_json: str, ingest_json: str) -> dict[str, dict[str, float]]:
    """{task: {"peer": s, "focused": s}} from the other benchmarks' JSON (best over rounds: the least disturbed)."""
    times: dict[str, dict[str, float]] = {}
    if train_json:
        train = json.loads(Path(train_json).read_text())["train"]
        times["train"] = {
            "peer": min(train["hf_sdpa"]["seconds"]),
            "focused": min(train["focused_plain"]["seconds"]),
        }
    if ingest_json:
        for model, entry in json.loads(Path(ingest_json).read_text())["models"].items():
            for row, r in entry["rows"].items():
                kind = "ingest" if "(ingest)" in row else "decode" if "decode" in row else None
                if kind:
                    times[f"{model} {kind}"] = {"peer": min(r["official_all"]), "focused": min(r["focused_all"])}
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", default=str(ROOT / "configs" / "tiny_fot.py"), help="the train benchmark's config (its default)"
    )
    parser.add_argument("--train-json", default="", help="bench/train_throughput.py --json output")
    parser.add_argument("--ingest-json", default="", help="bench/longllama_ingest_decode.py --json output")
    parser.add_argument("--ingest", type=int, default=8192, help="tokens ingested (as in the ingest benchmark)")
    parser.add_argument("--prompt", type=int, default=4096, help="decode: prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="decode: generated tokens")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--ignore-load", action="store_true", help="run on a busy machine (results INVALID)")
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args()
    load = refuse_if_busy(args.max_load, args.ignore_load)
    flag = "  INVALID (busy machine)" if load > args.max_load else ""

    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    foreign = ForeignCpu().start()
    gemm = gemm_ceiling(args.repeats)
    bandwidth = read_bandwidth(args.repeats)
    foreign.stop()
    peak_flops = max(max(v.values()) for v in gemm.values()) * 1e9
    peak_bytes = max(bandwidth.values()) * 1e9
    print(f"load average before {load:.2f}; foreign CPU while measuring {foreign.fraction or 0:.1%}{flag}")
    print("fp32 GEMM GFLOP/s (n x n x n):")
    for lib, by_n in gemm.items():
        print(f"  {lib:6s} " + "  ".join(f"n={n}: {v:6.1f}" for n, v in by_n.items()))
    print("read bandwidth GB/s: " + "  ".join(f"{k} {v:.1f}" for k, v in bandwidth.items()))

    config = load_config(["roofline", "--config", args.config])
    batch, window = config.data.batch_size, config.model.max_position_embeddings
    if args.train_json:  # the shape the train benchmark ran (it may override the config's)
        info = json.loads(Path(args.train_json).read_text())["info"]
        batch, window = info["batch"], info["window"]
    shapes = {"train": shape_from(config.model.to_dict()), **{name: shape_from(cfg) for name, cfg in MODELS.items()}}
    work: dict[str, dict[str, float]] = {"train": {"flops_peer": train_step_flops(shapes["train"], batch, window)}}
    work["train"]["flops_min"] = work["train"]["flops_peer"]
    for name in MODELS:
        s = shapes[name]
        work[f"{name} ingest"] = {
            "flops_peer": ingest_flops(s, args.ingest, minimal=False),
            "flops_min": ingest_flops(s, args.ingest, minimal=True),
        }
        flops, bytes_ = decode_cost(s, args.prompt, args.new)
        work[f"{name} decode"] = {"flops_peer": flops, "flops_min": flops, "bytes": bytes_}
    targets = {"train": 1.5, "small ingest": 3.0, "mid ingest": 3.0, "small decode": 2.0, "mid decode": 2.0}
    times = peer_times(args.train_json, args.ingest_json)

    rows = []
    print(
        "\n| task | GFLOP peer / least | GB read | bound (least work) | peer | focused | peer at % of its bound "
        "| max speed-up over peer | target | focused now |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for task, w in work.items():
        bytes_ = w.get("bytes", 0.0)
        bound_peer = max(w["flops_peer"] / peak_flops, bytes_ / peak_bytes)
        bound_min = max(w["flops_min"] / peak_flops, bytes_ / peak_bytes)
        t = times.get(task, {})
        row = dict(task=task, **w, bound_peer_s=bound_peer, bound_min_s=bound_min, target=targets[task], **t)
        cells = [
            f"{w['flops_peer'] / 1e9:.1f} / {w['flops_min'] / 1e9:.1f}",
            f"{bytes_ / 1e9:.2f}",
            f"{bound_min:.3f} s",
        ]
        if t:
            row["peer_efficiency"] = bound_peer / t["peer"]
            row["max_speedup"] = t["peer"] / bound_min
            row["focused_speedup"] = t["peer"] / t["focused"]
            cells += [
                f"{t['peer']:.3f} s",
                f"{t['focused']:.3f} s",
                f"{row['peer_efficiency']:.0%}",
                f"{row['max_speedup']:.2f}x",
                f"{targets[task]:.1f}x",
                f"{row['focused_speedup']:.2f}x",
            ]
        else:
            cells += ["", "", "", "", f"{targets[task]:.1f}x", ""]
        print(f"| {task} | " + " | ".join(cells) + " |")
        rows.append(row)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                dict(load=load, foreign=foreign.fraction, gemm_gflops=gemm, read_gbs=bandwidth, rows=rows), indent=1
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
