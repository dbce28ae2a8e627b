"""Training (and eval) throughput on CPU: focused (JAX + Flax NNX) against Hugging Face transformers (PyTorch).

One process, one CPU, one set of weights, one batch shape, one optimizer, float32:

  focused_plain       `make_train_step` without CrossBatch (memory layers see no memory)
  focused_crossbatch  `make_train_step` with CrossBatch(range=r, group=k, stepping) from the config
  hf_eager / hf_sdpa  `transformers.LlamaForCausalLM` (attn_implementation "eager" / "sdpa") loaded with our
                      weights through `hf_state_dict`; the plain model, as transformers has no memory layers

Every system runs the same AdamW (the config's peak learning rate, warmup + decay schedule, betas, eps, weight
decay on matrices only, global-norm clipping at `grad_clip`), the same masked next-token loss (sum over counted
tokens / count) and the same argmax-accuracy metric, over the same random-token batches in the same order. The
first and last training losses are printed next to the speeds as a check that the systems do the same work.

Timing: `--warmup` steps per system first (JAX compiles there; excluded). Then `--repeats` rounds; in each round
every system runs `--steps` steps back to back and is timed to the end of its last step (`jax.block_until_ready`
on the new parameters, optimizer state and metrics; PyTorch on CPU is synchronous). The systems take turns inside
each round, so a burst of load from other processes hits all of them alike. Reported: median tokens/s over the
rounds (tokens = batch x window per step) and the min–max; the ratios are ratios of medians and of bests (on a
shared machine the best round is the one least disturbed by other processes), with the per-round (paired) ratios.
Eval = one forward pass and the loss, no gradient, timed the same way.

Threads: XLA:CPU runs its kernels on an intra-op thread pool sized to the CPUs this process may run on (and may run
independent ops of a step concurrently); it has no flag for an exact count. So `--threads N` pins the process to
N CPUs (`sched_setaffinity`, before JAX or PyTorch start) and sets `torch.set_num_threads(N)`; by default N = all
CPUs the process may use.

    python bench/train_throughput.py
    python bench/train_throughput.py --steps 3 --repeats 5 --threads 2 --json train.json
    python bench/train_throughput.py --config configs/tiny_fot.py --batch 4 --window 128 --no-eval
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import runpy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("focused_plain", "focused_crossbatch", "hf_eager", "hf_sdpa")
RATIOS = (
    ("focused plain / HF eager", "focused_plain", "hf_eager"),
    ("focused plain / HF sdpa", "focused_plain", "hf_sdpa"),
    ("CrossBatch / plain (focused)", "focused_crossbatch", "focused_plain"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny_fot.py"), help="a configs/*.py file")
    parser.add_argument("--steps", type=int, default=1, help="timed train steps per system per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per system first (JAX compiles)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is reported")
    parser.add_argument("--batch", type=int, default=0, help="rows per step (default: config.data.batch_size)")
    parser.add_argument("--window", type=int, default=0, help="tokens per row (default: the config's window W)")
    parser.add_argument("--threads", type=int, default=0, help="CPUs for XLA and torch (default: all available)")
    parser.add_argument("--eval-steps", type=int, default=-1, help="timed eval passes per round (default: --steps)")
    parser.add_argument("--no-eval", action="store_true", help="skip the forward-only measurement")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {SYSTEMS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(args.systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown system(s) {unknown}; choose from {SYSTEMS}")
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first JAX step compiles)")
    if args.eval_steps < 0:
        args.eval_steps = args.steps
    return args


def pin_threads(threads: int) -> list[int]:
    """Restricts this process to `threads` CPUs (0 = leave as is) and returns the CPUs it may use. Must run before
    JAX or PyTorch create their thread pools."""
    cpus = sorted(os.sched_getaffinity(0))
    if threads:
        if threads > len(cpus):
            raise SystemExit(f"--threads {threads}: this process may only use {len(cpus)} CPUs ({cpus})")
        cpus = cpus[:threads]
        os.sched_setaffinity(0, cpus)
    return cpus


def machine() -> dict[str, Any]:
    """CPU model, SIMD flags, load average: what the numbers depend on."""
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    simd = [f for f in ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return {"cpu": model, "simd": simd, "cores_total": os.cpu_count(), "python": platform.python_version()}


@dataclasses.dataclass
class Setup:
    """Everything the systems share: configs, batches, the learning-rate table, the initial weights."""

    model_cfg: Any
    train_cfg: Any
    cross_batch: Any
    batch: int
    window: int
    batches: list[dict[str, Any]]  # numpy arrays: inputs, targets int32 [B, W]; loss_mask float32 [B, W]
    lr_table: list[float]  # the optax schedule at steps 0 .. total - 1
    model: Any  # the focused model holding the initial weights

    @property
    def tokens(self) -> int:
        return self.batch * self.window


def build_setup(args: argparse.Namespace, total_steps: int) -> Setup:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from focused.memory.crossbatch import CrossBatch
    from focused.model.config import LlamaConfig
    from focused.model.llama import LlamaForCausalLM
    from focused.training.fot import FotConfig
    from focused.training.optimizer import TrainConfig, learning_rate_schedule

    config = runpy.run_path(args.config)["get_config"]()
    model_cfg = LlamaConfig.from_dict(config.model.to_dict())
    window = args.window or model_cfg.max_position_embeddings
    if window != model_cfg.max_position_embeddings:
        model_cfg = model_cfg.replace(
            max_position_embeddings=window, last_context_length=min(model_cfg.last_context_length, window)
        )
    batch = args.batch or config.data.batch_size
    train_cfg = TrainConfig.from_dict(config.train.to_dict())
    fot = FotConfig.from_dict(config.fot.to_dict())
    cross_batch = None
    if fot.cross_batch_range:
        cross_batch = CrossBatch(fot.cross_batch_range, config.data.k, fot.cross_batch_stepping)
    rng = np.random.default_rng(args.seed)
    batches = []
    for _ in range(4):
        tokens = rng.integers(0, model_cfg.vocab_size, (batch, window + 1), dtype=np.int32)
        batches.append(
            {
                "inputs": tokens[:, :-1].copy(),
                "targets": tokens[:, 1:].copy(),
                "loss_mask": np.ones((batch, window), np.float32),
            }
        )
    schedule = learning_rate_schedule(train_cfg)
    lr_table = [float(v) for v in jax.vmap(schedule)(jnp.arange(total_steps))]
    model = LlamaForCausalLM(model_cfg, rngs=nnx.Rngs(args.seed))
    return Setup(model_cfg, train_cfg, cross_batch, batch, window, batches, lr_table, model)


@dataclasses.dataclass
class Runner:
    """One system: `train(n)` / `evaluate(n)` run n steps and return the seconds to their end; `losses` collects
    the loss of every training step as a lazily read value."""

    name: str
    train: Callable[[int], float]
    evaluate: Callable[[int], float]
    losses: list[Any]
    note: str


def focused_runner(setup: Setup, cross_batch: Any) -> Runner:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from focused.training.optimizer import make_optimizer
    from focused.training.step import make_eval_step, make_train_step

    graphdef, initial = nnx.split(setup.model)
    tx = make_optimizer(setup.train_cfg)
    params = jax.tree.map(jnp.copy, initial)  # the train step donates its params and optimizer state
    state = {"params": params, "opt": tx.init(params), "step": 0}
    eval_params = jax.tree.map(jnp.copy, initial)
    batches = [jax.device_put(b) for b in setup.batches]
    step = make_train_step(graphdef, tx, setup.train_cfg.accum_steps, cross_batch)
    eval_step = make_eval_step(graphdef, cross_batch)
    losses: list[Any] = []

    def train(n: int) -> float:
        start = time.perf_counter()
        params, opt, metrics = state["params"], state["opt"], None
        for _ in range(n):
            params, opt, metrics = step(params, opt, batches[state["step"] % len(batches)])
            state["step"] += 1
            losses.append(metrics["loss"])
        jax.block_until_ready((params, opt, metrics))
        elapsed = time.perf_counter() - start
        state["params"], state["opt"] = params, opt
        return elapsed

    def evaluate(n: int) -> float:
        start = time.perf_counter()
        out = [eval_step(eval_params, batches[i % len(batches)]) for i in range(n)]
        jax.block_until_ready(out)
        return time.perf_counter() - start

    what = "no CrossBatch" if cross_batch is None else f"CrossBatch{dataclasses.astuple(cross_batch)}"
    return Runner("", train, evaluate, losses, f"jax.jit step, {what}")


def hf_runner(setup: Setup, attn: str) -> Runner:
    import numpy as np
    import torch
    import transformers

    from focused.convert import hf_config_dict, hf_state_dict, tensor_specs

    cfg, tc = setup.model_cfg, setup.train_cfg
    state_dict = hf_state_dict(setup.model, cfg)
    if cfg.tie_word_embeddings:
        state_dict["lm_head.weight"] = state_dict["model.embed_tokens.weight"]

    def build() -> Any:
        hf_cfg = transformers.LlamaConfig.from_dict(hf_config_dict(cfg, format="llama"))
        hf_cfg._attn_implementation = attn
        model = transformers.LlamaForCausalLM(hf_cfg)
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, strict=True)
        if model.config._attn_implementation != attn:
            raise RuntimeError(f"asked for {attn} attention, got {model.config._attn_implementation}")
        return model.float()

    model = build().train()
    eval_model = build().eval()
    # weight decay exactly where focused applies it (optimizer._decay_mask): kernels, i.e. projections + lm_head
    decayed = {s.hf_name for s in tensor_specs(cfg) if tc.decay_norms_and_embeddings or s.path[-1] == "kernel"}
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if n in decayed], "weight_decay": tc.weight_decay},
        {"params": [p for n, p in named if n not in decayed], "weight_decay": 0.0},
    ]
    peak = tc.learning_rate
    optimizer = torch.optim.AdamW(groups, lr=peak, betas=(tc.b1, tc.b2), eps=tc.eps)
    table = setup.lr_table
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: table[min(s, len(table) - 1)] / peak)
    params = [p for _, p in named]
    batches = [{k: torch.from_numpy(v) for k, v in b.items()} for b in setup.batches]
    for b in batches:
        b["inputs"], b["targets"] = b["inputs"].long(), b["targets"].long()
    state = {"step": 0}
    losses: list[Any] = []

    def loss_of(m: Any, b: dict[str, Any]) -> tuple[Any, Any, Any]:
        logits = m(input_ids=b["inputs"], use_cache=False).logits
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["targets"].flatten(), reduction="none")
        mask = b["loss_mask"].flatten()
        count = mask.sum()
        with torch.no_grad():
            correct = ((logits.argmax(-1) == b["targets"]).float().flatten() * mask).sum()
        return (ce * mask).sum(), count, correct

    def train(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            b = batches[state["step"] % len(batches)]
            state["step"] += 1
            loss_sum, count, _correct = loss_of(model, b)
            loss = loss_sum / count.clamp_min(1.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(loss.detach())
        return time.perf_counter() - start

    def evaluate(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(n):
                loss_of(eval_model, batches[i % len(batches)])
        return time.perf_counter() - start

    return Runner("", train, evaluate, losses, f"transformers.LlamaForCausalLM, attn={attn}, torch.optim.AdamW")


def summarize(seconds: list[float], tokens_per_call: int) -> dict[str, Any]:
    rates = [tokens_per_call / s for s in seconds]
    return {
        "seconds": seconds,
        "tokens_per_s": rates,
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
    }


def timed_rounds(runners: list[Runner], kind: str, calls: int, repeats: int, tokens: int) -> dict[str, Any]:
    """`repeats` rounds; in each, every runner does `calls` steps of `kind` ("train" / "evaluate") in turn."""
    seconds: dict[str, list[float]] = {r.name: [] for r in runners}
    for _ in range(repeats):
        for r in runners:
            time.sleep(0.2)  # let the other library's idle worker threads stop spinning
            seconds[r.name].append(getattr(r, kind)(calls))
    return {name: summarize(s, calls * tokens) for name, s in seconds.items()}


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for label, a, b in RATIOS:
        if a in results and b in results:
            paired = [x / y for x, y in zip(results[a]["tokens_per_s"], results[b]["tokens_per_s"], strict=True)]
            out[label] = {
                "median_ratio": results[a]["median"] / results[b]["median"],
                "best_ratio": results[a]["max"] / results[b]["max"],
                "paired": paired,
            }
    return out


def print_table(title: str, results: dict[str, Any], tokens_per_step: int) -> None:
    print(f"\n{title}")
    print(f"  {'system':<20} {'tokens/s median':>16} {'min – max':>15} {'s/step median':>14} {'s/step best':>12}")
    for name, r in results.items():
        spread = f"{r['min']:.0f} – {r['max']:.0f}"
        print(
            f"  {name:<20} {r['median']:>16.0f} {spread:>15} {tokens_per_step / r['median']:>14.3f} "
            f"{tokens_per_step / r['max']:>12.3f}"
        )
    for label, v in ratios(results).items():
        paired = ", ".join(f"{x:.2f}" for x in v["paired"])
        print(f"  {label:<30} {v['median_ratio']:.2f}x median, {v['best_ratio']:.2f}x best   (per round: {paired})")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cpus = pin_threads(args.threads)
    load_before = os.getloadavg()

    import jax
    import torch
    import transformers
    from flax import __version__ as flax_version

    torch.set_num_threads(len(cpus))
    total_steps = args.warmup + args.repeats * args.steps
    setup = build_setup(args, total_steps)
    if setup.cross_batch is None and "focused_crossbatch" in args.systems:
        print(f"{args.config} has cross_batch_range = 0: dropping focused_crossbatch")
        args.systems.remove("focused_crossbatch")

    runners = []
    for name in args.systems:
        if name == "focused_plain":
            runner = focused_runner(setup, None)
        elif name == "focused_crossbatch":
            runner = focused_runner(setup, setup.cross_batch)
        else:
            runner = hf_runner(setup, name.removeprefix("hf_"))
        runner.name = name
        runners.append(runner)

    info = {
        **machine(),
        "cpus_used": len(cpus),
        "jax": jax.__version__,
        "flax": flax_version,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "jax_devices": [str(d) for d in jax.devices()],
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "params": setup.model_cfg.num_parameters(),
        "batch": setup.batch,
        "window": setup.window,
        "tokens_per_step": setup.tokens,
        "cross_batch": dataclasses.asdict(setup.cross_batch) if setup.cross_batch else None,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
    }
    print(
        f"{info['cpu']} ({', '.join(info['simd'])}), {len(cpus)} of {info['cores_total']} CPUs; "
        f"jax {info['jax']} (XLA:CPU, {info['jax_devices']}), torch {info['torch']} ({info['torch_threads']} "
        f"threads), transformers {info['transformers']}"
    )
    print(
        f"model: {info['params'] / 1e6:.2f}M params, batch {setup.batch} x window {setup.window} = {setup.tokens} "
        f"tokens/step, float32; CrossBatch {info['cross_batch']}; load average {load_before[0]:.2f}"
    )
    for r in runners:
        print(f"  {r.name:<20} {r.note}")

    warm = {}
    for r in runners:
        start = time.perf_counter()
        r.train(1)
        first = time.perf_counter() - start
        if args.warmup > 1:
            r.train(args.warmup - 1)
        warm[r.name] = first
    print("\nfirst step (JAX: compile + run): " + ", ".join(f"{k} {v:.1f}s" for k, v in warm.items()))

    train = timed_rounds(runners, "train", args.steps, args.repeats, setup.tokens)
    for r in runners:
        train[r.name]["first_loss"] = float(r.losses[0])
        train[r.name]["last_loss"] = float(r.losses[-1])
        train[r.name]["first_step_s"] = warm[r.name]
    print_table(
        f"train step ({args.steps} steps x {args.repeats} rounds after {args.warmup} warm-up)", train, setup.tokens
    )
    print("  loss at step 1 / step " + str(total_steps) + ": ", end="")
    print(", ".join(f"{k} {v['first_loss']:.5f} / {v['last_loss']:.5f}" for k, v in train.items()))

    evaluation = {}
    if not args.no_eval and args.eval_steps:
        for r in runners:
            r.evaluate(1)  # compiles the JAX eval step
        evaluation = timed_rounds(runners, "evaluate", args.eval_steps, args.repeats, setup.tokens)
        print_table(f"eval forward + loss ({args.eval_steps} passes x {args.repeats} rounds)", evaluation, setup.tokens)

    info["load_average"] = {"before": load_before, "after": os.getloadavg()}
    print(f"\nload average before {load_before[0]:.2f}, after {info['load_average']['after'][0]:.2f}")
    results = {
        "info": info,
        "train": train,
        "train_ratios": ratios(train),
        "eval": evaluation,
        "eval_ratios": ratios(evaluation),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
