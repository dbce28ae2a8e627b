"""Speed of long-input ingest and of decoding: focused (JAX) against the official LongLLaMA PyTorch code, on the
same exported weights, interleaved in one run.

For each model (random weights; `--models small,mid`, the shapes of issue 9's table) a focused model is exported
with `focused.convert.export_hf(format="longllama")` and loaded by the official `LongLlamaForCausalLM` in a worker
process of the scratch environment (`--python`, old transformers + torch; the official files in `--official-src`,
fetched at run time as in bench/longllama_parity.py, never committed), and by `focused.convert.import_hf` in a
second worker process (this environment), so each side's peak RSS is its own. Then, `--repeats` rounds, each
timing every task on both sides back to back (the side that goes first alternates between rounds), float32:

  ingest N        official `model(input_ids, attention_mask)` over N tokens (its `_handle_long_input`: windows of
                  W into memory, the last `last_context_length` tokens through the local cache; logits for every
                  position) against focused `forward_long(split="longllama", logits="all")` (the same logits) and
                  `ingest` (the same split, memory + local cache, last logits only: what generation needs)
  decode T after P  greedy decoding of T tokens after a P-token prompt, the prompt read first and not timed:
                  official `generate(use_cache=True)`, timed from the first call of a logits processor (after the
                  prompt forward) to the end; focused `generate_from(ingest(prompt))`. Both run T - 1 forward
                  steps in that span. The generated tokens are compared as a check.

Reported per task: the median seconds of each side and official / focused (> 1: focused is faster), plus each
worker's peak RSS (loading the folder, then every task of that model; `focused_ingest_only`: a fresh focused worker
that only runs `ingest` of the longest input). The first round of every task is a warm-up (JAX compiles there) and
is not reported.

Contention flatters JAX (PyTorch's OpenMP threads slow down 5-10x under load), so the script refuses to start when
the 1-minute load average is above --max-load (1.5), and marks the results invalid when other processes used more
than --max-foreign (10%) of the machine's CPU time during the timed rounds (bench/quiet.py).
`--ignore-load` runs anyway (to check the script), printing INVALID on every line.

    mkdir -p /tmp/longllama_src && cd /tmp/longllama_src && for f in configuration_longllama.py \\
        longllama_utils.py modeling_longllama.py; do git --git-dir=<mirror of long_llama> show HEAD:src/$f > $f; done
    python3 -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install torch==2.13.0 "transformers==4.33.*" safetensors numpy
    python bench/longllama_ingest_decode.py --official-src /tmp/longllama_src --python /tmp/llvenv/bin/python
    python bench/longllama_ingest_decode.py ... --models mid --ingest 8192,32768 --json ingest_decode.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import ForeignCpu, refuse_if_busy

# issue 9's shapes; head counts and MLP widths are not in the issue: 4 heads (small), LLaMA's ~2.7x MLP (mid)
MODELS = {
    "small": dict(
        vocab_size=300,
        hidden_size=96,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=64,
        last_context_length=40,
        mem_layers=(0, 2),
    ),
    "mid": dict(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        max_position_embeddings=512,
        last_context_length=256,
        mem_layers=(2, 4, 6),
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# official side: a worker in the scratch environment, serving one JSON command per stdin line


def official_worker(args: argparse.Namespace) -> None:
    import torch
    from longllama_parity import _import_official

    modeling, configuration = _import_official(Path(args.official_src))
    config = configuration.LongLlamaConfig.from_pretrained(args.hf_dir)
    config.torch_attention = args.official_torch_attention
    model = modeling.LongLlamaForCausalLM.from_pretrained(args.hf_dir, config=config, torch_dtype=torch.float32)
    model.eval()
    model.generation_config.eos_token_id = None

    class Clock:  # a logits processor that notes when the first next-token scores arrive (prompt read)
        first = None

        def __call__(self, input_ids, scores):
            if self.first is None:
                self.first = time.perf_counter()
            return scores

    print(json.dumps({"ready": True, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        ids = torch.from_numpy(np.load(cmd["prompt"])).long()
        mask = torch.ones_like(ids)
        reply = {}
        with torch.no_grad():
            if cmd["op"] == "ingest":
                start = time.perf_counter()
                logits = model(input_ids=ids, attention_mask=mask).logits
                reply["seconds"] = time.perf_counter() - start
                reply["shape"] = list(logits.shape)
                del logits
            elif cmd["op"] == "decode":
                clock = Clock()
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=cmd["new_tokens"],
                    do_sample=False,
                    num_beams=1,
                    use_cache=True,
                    eos_token_id=None,
                    pad_token_id=model.config.pad_token_id,
                    logits_processor=[clock],
                )
                end = time.perf_counter()
                reply["seconds"] = end - clock.first
                reply["tokens"] = out[:, ids.shape[1] :].tolist()
        reply["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(reply), flush=True)


class Worker:
    """A worker process (`--role official` or `--role focused`) loading the exported folder, driven line by line."""

    def __init__(self, role: str, args: argparse.Namespace, hf_dir: Path) -> None:
        self.role = role
        command = [str(Path(__file__).resolve()), "--role", role, "--hf-dir", str(hf_dir)]
        if role == "official":
            command = [args.python, *command, "--official-src", str(Path(args.official_src).resolve())]
            if args.official_torch_attention:
                command.append("--official-torch-attention")
        else:
            command = [sys.executable, *command]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.hello = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.role} worker exited (see its stderr above)")
        return json.loads(line)

    def __call__(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=60)


# ---------------------------------------------------------------------------------------------------------------
# focused side


def focused_worker(args: argparse.Namespace) -> None:
    """Serves the same commands as the official worker, on the model imported from the same exported folder (so
    its peak RSS counts what a user's process holds: the loaded model and one task at a time)."""
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    from focused.convert import import_hf

    model = import_hf(args.hf_dir)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        task = ("decode", 0, cmd["new_tokens"]) if cmd["op"] == "decode" else (cmd["op"], 0)
        reply = {"seconds": focused_tasks(model, np.load(cmd["prompt"]), task)}
        if "tokens" in reply["seconds"]:
            reply["tokens"] = reply["seconds"].pop("tokens")
        reply["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(reply), flush=True)


def build_model(name: str, seed: int, std: float):
    from flax import nnx

    from focused import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**MODELS[name], mem_dtype="float32", rms_norm_eps=1e-6, num_key_value_heads=None)
    model = LlamaForCausalLM(config, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        noise = rng.normal(size=var.shape)
        var[...] = (1 + 0.1 * noise if path[-1] == "weight" else std * noise).astype(var[...].dtype)
    nnx.update(model, state)
    return model


def focused_tasks(model, prompt: np.ndarray, task: tuple) -> dict:
    """Runs one task on the focused side; returns seconds per variant (and tokens for decode)."""
    import jax

    from focused.generate import generate_from, ingest
    from focused.memory.dense import forward_long

    kind = task[0]
    if kind in ("ingest", "ingest_only"):
        # `ingest` first: right after the all-logits pass (1 GiB of logits for the mid model at 8K, just freed) the
        # same ingest ran 20-35% slower in a probe (3.9 s alone, 4.8-5.4 s after it), an artifact of timing both
        # variants in one process that no user's generation pays. "ingest_only": the generation path alone (for
        # its peak RSS in a fresh worker).
        start = time.perf_counter()
        state = ingest(model, prompt, progress=False)
        jax.block_until_ready((state.logits, state.cache))
        seconds = {"ingest": time.perf_counter() - start}
        del state
        if kind == "ingest_only":
            return seconds
        start = time.perf_counter()
        logits, memory = forward_long(model, prompt, split="longllama", logits="all")
        jax.block_until_ready((logits, memory))
        return {"forward_long": time.perf_counter() - start, **seconds}
    new_tokens = task[2]
    window = model.config.max_position_embeddings
    capacity = max(-(-(prompt.shape[1] + new_tokens + window) // window) * window, window)
    state = ingest(model, prompt, capacity=capacity, progress=False)
    jax.block_until_ready((state.logits, state.cache, state.memory.reader()))
    start = time.perf_counter()
    tokens = generate_from(model, state, new_tokens)
    return {"decode": time.perf_counter() - start, "tokens": tokens.tolist()}


# ---------------------------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    try:
        load = refuse_if_busy(args.max_load, args.ignore_load)
    except SystemExit as refusal:
        print(refusal, file=sys.stderr)
        return 3
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    from focused.convert import export_hf

    invalid = " INVALID (loaded machine)" if load > args.max_load else ""
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="ingest_decode_"))
    report = {"load_before": load, "models": {}}
    for name in args.models:
        model = build_model(name, args.seed, args.std)
        hf_dir = work / name / "hf"
        export_hf(model, model.config, hf_dir, format="longllama", overwrite=True)
        rng = np.random.default_rng(args.seed + 1)
        tasks = [("ingest", n) for n in args.ingest] + [("decode", args.prompt, args.new_tokens)]
        prompts = {}
        for task in tasks:
            path = work / name / f"prompt_{task[1]}.npy"
            np.save(path, rng.integers(3, model.config.vocab_size, size=(1, task[1])).astype(np.int32))
            prompts[task] = path
        del model  # the focused side runs in its own process too, on the model it imports from hf_dir
        workers = {side: Worker(side, args, hf_dir) for side in ("official", "focused")}
        foreign = ForeignCpu(workers=tuple(w.proc.pid for w in workers.values())).start()
        rss = {}
        times = {task: {"official": [], "focused": {}} for task in tasks}
        checks = {}
        for round_ in range(args.repeats + 1):  # round 0: warm-up (compiles), not reported
            for task in tasks:
                sides = ["official", "focused"] if round_ % 2 == 0 else ["focused", "official"]
                cmd = {"op": task[0], "prompt": str(prompts[task])}
                if task[0] == "decode":
                    cmd["new_tokens"] = task[2]
                for side in sides:
                    reply = workers[side](**cmd)
                    if "tokens" in reply:
                        checks.setdefault(task, {})[side] = reply["tokens"]
                    rss[side] = reply["peak_rss_gib"]
                    if round_ and side == "official":
                        times[task]["official"].append(reply["seconds"])
                    elif round_:
                        for variant, seconds in reply["seconds"].items():
                            times[task]["focused"].setdefault(variant, []).append(seconds)
            print(f"[{name}] round {round_} done{' (warm-up)' if round_ == 0 else ''}", flush=True)
        foreign.stop()
        for worker in workers.values():
            worker.close()
        # the generation path's own footprint: a fresh focused worker that only runs `ingest` (no all-logits pass)
        alone = Worker("focused", args, hf_dir)
        longest = max((t for t in tasks if t[0] == "ingest"), key=lambda t: t[1], default=None)
        if longest is not None:
            rss["focused_ingest_only"] = alone(op="ingest_only", prompt=str(prompts[longest]))["peak_rss_gib"]
        alone.close()
        rows = {}
        for task, sides in times.items():
            label = f"ingest {task[1]}" if task[0] == "ingest" else f"decode {task[2]} after {task[1]}"
            off = statistics.median(sides["official"])
            for variant, secs in sides["focused"].items():
                foc = statistics.median(secs)
                rows[f"{label} ({variant})"] = {
                    "official_s": off,
                    "focused_s": foc,
                    "official_over_focused": off / foc,
                    "official_all": sides["official"],
                    "focused_all": secs,
                }
        same = {f"decode {t[2]} after {t[1]}": c.get("official") == c.get("focused") for t, c in checks.items()}
        report["models"][name] = {
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in MODELS[name].items()},
            "rows": rows,
            "greedy_tokens_identical": same,
            # each worker's own peak: loading the folder, then every task (focused_ingest_only: a fresh worker
            # running only `ingest` of the longest input, what generation needs)
            "peak_rss_gib": rss,
            "official_threads": workers["official"].hello.get("threads"),
            "foreign_cpu_fraction": foreign.fraction,
        }
        print(f"\n== {name}: official / focused (> 1: focused faster), medians of {args.repeats} rounds{invalid}")
        for label, row in rows.items():
            print(
                f"  {label:<36} official {row['official_s']:8.3f} s  focused {row['focused_s']:8.3f} s  "
                f"ratio {row['official_over_focused']:5.2f}{invalid}"
            )
        print(f"  greedy tokens identical: {same}; peak RSS (GiB): {report['models'][name]['peak_rss_gib']}")
    fractions = [m["foreign_cpu_fraction"] for m in report["models"].values()]
    busiest = max((f for f in fractions if f is not None), default=0.0)
    report["valid"] = load <= args.max_load and busiest <= args.max_foreign
    print(f"\nother processes used {busiest:.1%} of the CPU during the timed rounds (limit {args.max_foreign:.0%})")
    if not report["valid"]:
        print(f"INVALID: load average {load:.2f} before (limit {args.max_load}), other processes {busiest:.1%}")
    report["versions"] = {"jax": jax.__version__}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if report["valid"] else 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-src", default=None, help="folder with the official src/*.py files (required)")
    parser.add_argument("--python", default=sys.executable, help="python of the environment with torch+transformers")
    parser.add_argument("--models", default="small,mid", help=f"comma-separated subset of {sorted(MODELS)}")
    parser.add_argument("--ingest", default="8192", help="comma-separated ingest lengths (tokens)")
    parser.add_argument("--prompt", type=int, default=4096, help="prompt tokens before decoding")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--max-load", type=float, default=1.5, help="refuse above this 1-minute load average")
    parser.add_argument(
        "--max-foreign", type=float, default=0.1, help="invalid if other processes used more of the CPU than this"
    )
    parser.add_argument("--ignore-load", action="store_true", help="run anyway; every result is marked INVALID")
    parser.add_argument("--official-torch-attention", action="store_true", help="official config.torch_attention")
    parser.add_argument("--std", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--json", default="")
    parser.add_argument("--hf-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--role", choices=("main", "official", "focused"), default="main", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role != "focused" and not args.official_src:
        parser.error("--official-src is required: the folder with the official src/*.py files (see above)")
    if args.role == "main":
        args.models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = sorted(set(args.models) - set(MODELS))
        if unknown:
            parser.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
        args.ingest = [int(n) for n in args.ingest.split(",") if n.strip()]
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.role == "official":
        official_worker(arguments)
    elif arguments.role == "focused":
        focused_worker(arguments)
    else:
        sys.exit(main(arguments))
