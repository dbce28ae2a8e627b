"""Where the time of one XLA:CPU train step goes: a per-HLO-op breakdown of `make_train_step` (forward, backward,
optimizer), from a `jax.profiler` trace of a few steps joined with the compiled HLO's source metadata.

Each HLO instruction of the compiled step carries `op_name` metadata: the JAX primitive path that made it, e.g.
`jit(step)/transpose(jvp(...))/.../dot_general` for backward work. The trace names the instructions it ran; this
script sums their durations per instruction and groups them by

  phase:  backward (a `transpose(` in the path: the VJP), forward (the rest of the loss), optimizer (outside the
          value_and_grad: AdamW, clipping, the parameter update)
  kind:   the HLO opcode (a fusion is named after its root: "fusion(dot)" / "fusion(reduce)" ...)
  where:  the model part, read from the primitive path and the result shape (NNX adds no module names)

Only shares are printed, never tokens/s: the shares stay meaningful on a loaded machine (ops slow down alike),
absolute times do not. The trace is written under --out (open it in Perfetto).

    python bench/profile_train_step.py                              # configs/tiny_fot.py, CrossBatch on
    python bench/profile_train_step.py --plain --steps 3 --top 40
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

# op_name paths carry primitive names and einsum specs but no module names (Flax NNX adds none), so the model part
# is read from them and from the result shape: the vocabulary axis marks the lm_head and the loss
ATTENTION_SPECS = ("bkgt", "bskd", "bmkd", "btkg")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny_fot.py"))
    parser.add_argument("--plain", action="store_true", help="profile the step without CrossBatch")
    parser.add_argument("--attention-impl", default="", help="override model.attention_impl (reference / flash)")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after 2 warm-up steps)")
    parser.add_argument("--batch", type=int, default=0)
    parser.add_argument("--window", type=int, default=0)
    parser.add_argument("--top", type=int, default=25, help="instructions listed individually")
    parser.add_argument("--out", default="/tmp/focused_train_profile", help="trace folder")
    parser.add_argument("--json", default="", help="also write the breakdown here")
    return parser.parse_args(argv)


def op_metadata(hlo_text: str) -> dict[str, tuple[str, str]]:
    """instruction name → (opcode or fusion root kind, op_name path) from a compiled module's text."""
    out = {}
    fusion_root = {}
    computation = None
    for line in hlo_text.splitlines():
        head = re.match(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if head and "=" not in line.split("{")[0]:
            computation = head.group(1)
        inst = re.match(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)\s+([\w\-]+)\(", line)
        if not inst:
            continue
        name, shape, opcode = inst.group(2), inst.group(3), inst.group(4)
        if inst.group(1) and computation:
            fusion_root[computation] = opcode
        meta = re.search(r'op_name="([^"]*)"', line)
        calls = re.search(r"calls=%?([\w.\-]+)", line)
        out[name] = (opcode, meta.group(1) if meta else "", calls.group(1) if calls else "", shape)
    resolved = {}
    for name, (opcode, path, calls, shape) in out.items():
        if opcode == "fusion" and calls in fusion_root:
            opcode = f"fusion({fusion_root[calls]})"
        resolved[name] = (opcode, path, shape)
    return resolved


def phase_of(path: str) -> str:
    if "transpose(" in path:
        return "backward"
    if "jvp(" in path or "value_and_grad" in path:
        return "forward"
    return "optimizer/other" if path else "unattributed"


def where_of(path: str, shape: str, vocab: int) -> str:
    if re.search(rf"[\[,]{vocab}[\],]", shape) or "log_softmax" in path or "logsumexp" in path:
        return "lm_head + loss (vocab-sized)"
    if any(spec in path for spec in ATTENTION_SPECS) or "select_n" in path or "softmax" in path:
        return "attention core (scores, masks, softmax)"
    if "silu" in path or "logistic" in path:
        return "mlp activation"
    if "dot_general" in path:
        return "projections (q/k/v/o, mlp)"
    return "other (norms, rope, copies, adds)"


def trace_durations(folder: Path) -> dict[str, float]:
    """Summed duration (µs) per event name over every perfetto trace under `folder`."""
    totals: dict[str, float] = collections.defaultdict(float)
    for path in folder.rglob("*.trace.json.gz"):
        with gzip.open(path, "rt") as f:
            trace = json.load(f)
        for event in trace.get("traceEvents", []):
            if event.get("ph") == "X" and "dur" in event:
                totals[event.get("name", "")] += float(event["dur"])
    return totals


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import jax
    from flax import nnx
    from train_throughput import build_setup

    from focused.training.optimizer import make_optimizer
    from focused.training.step import make_train_step

    setup = build_setup(
        argparse.Namespace(config=args.config, window=args.window, batch=args.batch, seed=0), total_steps=10
    )
    model = setup.model
    if args.attention_impl:
        from focused.model.llama import LlamaForCausalLM

        model = LlamaForCausalLM(setup.model_cfg.replace(attention_impl=args.attention_impl), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tx = make_optimizer(setup.train_cfg)
    opt = tx.init(params)
    step = make_train_step(graphdef, tx, setup.train_cfg.accum_steps, None if args.plain else setup.cross_batch)
    batch = jax.device_put(setup.batches[0])
    compiled = step.lower(params, opt, batch).compile()
    meta = op_metadata(compiled.as_text())
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    for _ in range(2):
        params, opt, metrics = step(params, opt, batch)
    jax.block_until_ready(metrics)
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")  # a fresh folder: only this run's trace is read
    with jax.profiler.trace(str(out), create_perfetto_trace=True):
        for _ in range(args.steps):
            params, opt, metrics = step(params, opt, batch)
        jax.block_until_ready((params, opt, metrics))
    durations = trace_durations(out)
    vocab = setup.model_cfg.vocab_size
    rows = [(name, us, meta[name][0], meta[name][1], meta[name][2]) for name, us in durations.items() if name in meta]
    total = sum(r[1] for r in rows)
    if not total:
        raise SystemExit(f"no HLO instructions found in the trace under {out}: is this jax's CPU profiler?")
    groups: dict[str, dict[str, float]] = {"phase": {}, "kind": {}, "where": {}, "phase x where": {}}
    for _, us, opcode, path, shape in rows:
        where = where_of(path, shape, vocab)
        for group, key in (
            ("phase", phase_of(path)),
            ("kind", opcode),
            ("where", where),
            ("phase x where", f"{phase_of(path)} / {where}"),
        ):
            groups[group][key] = groups[group].get(key, 0.0) + us
    report = {
        "config": args.config,
        "crossbatch": not args.plain,
        "attention_impl": model.config.attention_impl,
        "batch": setup.batch,
        "window": setup.window,
        "flops_per_step": float(cost.get("flops", 0.0)),
        "bytes_accessed_per_step": float(cost.get("bytes accessed", 0.0)),
        "shares": {
            g: dict(sorted(((k, v / total) for k, v in d.items()), key=lambda kv: -kv[1])) for g, d in groups.items()
        },
        "top": [
            {"name": n, "share": us / total, "kind": k, "shape": sh, "op_name": p[-120:]}
            for n, us, k, p, sh in sorted(rows, key=lambda r: -r[1])[: args.top]
        ],
    }
    fwd = groups["phase"].get("forward", 0.0)
    if fwd:
        report["backward_over_forward"] = groups["phase"].get("backward", 0.0) / fwd
    for group, shares in report["shares"].items():
        print(f"\n== share of step time by {group}")
        for key, share in shares.items():
            if share >= 0.005:
                print(f"  {share:6.1%}  {key}")
    if "backward_over_forward" in report:
        print(f"\nbackward / forward time: {report['backward_over_forward']:.2f}")
    print(f"\n== top {args.top} instructions")
    for row in report["top"]:
        print(f"  {row['share']:6.1%}  {row['name']:<26} {row['kind']:<18} {row['shape']:<30} {row['op_name']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
