"""Plan a sharded run without running it: parameter count, per-device memory and the sharding plan.

The model is built with `nnx.eval_shape` (shapes only, nothing allocated) and the specs are computed against a
`jax.sharding.AbstractMesh`, so a 128-device plan works from a 1-CPU laptop:

    from focused.training.dry_run import dry_run
    from focused.training.sharding import DEFAULT_RULES, MeshConfig
    dry_run(LlamaConfig(...), MeshConfig(data=8, fsdp=16), DEFAULT_RULES, batch_size=128, seq_len=2048)

Memory model (per device, GiB = 2**30 bytes). Each tensor is divided by the number of shards it really gets under
the rules (after the divisibility fallback of `focused.training.sharding`):

    params      Σ size · itemsize(param_dtype) / shards
    grads       the same (one gradient copy; accumulation over micro-batches adds a transient second one)
    optimizer   AdamW mu + nu: 2 · Σ size · itemsize(param_dtype) / shards (optax keeps them in the param dtype)

Activations for one micro-batch of b = batch_size / (batch shards · accum_steps) rows of t tokens, compute dtype
itemsize s, hidden e, heads h, kv heads g, head dim d, MLP width f, vocabulary V; tp_x = tensor shards of x:

    per layer   b·t·[ 4·e·s                       residual in/mid, the two RMSNorm outputs
                    + (2·h·d + 3·g·d)·s / tp_heads  q, k, v and rotated q, k
                    + h·d·s / tp_heads              attention output before o_proj
                    + 2·h·c·4 / tp_heads            fp32 scores and probabilities over c keys
                    + 4·f·s / tp_mlp ]              gate, up, silu(gate), product
    logits      b·t·V·(s + 8) / tp_vocab           lm_head output, fp32 logits and log-softmax

with c = t in ordinary layers and c = (1 + cross_batch_range)·t in memory layers (CrossBatch keys). With remat the
step keeps each block's input (L·b·t·e·s) and recomputes one block at a time (+ the largest per-layer term); without
remat it keeps every layer's activations. It is an upper-bound-style estimate: XLA fusion and buffer reuse
usually make the real peak smaller, attention kernels that never materialise scores make it much smaller.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec

from focused.model.config import LlamaConfig, resolve_dtype
from focused.model.llama import LlamaForCausalLM
from focused.training.sharding import MeshConfig, Rules, abstract_mesh, logical_to_spec, param_specs

GIB = float(2**30)


def _num_devices(mesh_cfg: MeshConfig, devices: int | Sequence[jax.Device] | None) -> int:
    if isinstance(devices, int):
        return devices
    if devices is not None:
        return len(devices)
    if -1 in mesh_cfg.sizes():
        return jax.device_count()
    return math.prod(mesh_cfg.sizes())


def _shards(spec: PartitionSpec, mesh: AbstractMesh) -> int:
    sizes = dict(mesh.shape)
    count = 1
    for entry in spec:
        for axis in (entry,) if isinstance(entry, str) else entry or ():
            count *= sizes[axis]
    return count


def _pattern(path: tuple[Any, ...]) -> str:
    """`model.layers.*.self_attn.q_proj.kernel` from a state path (layer indices become `*`)."""
    parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    parts = [p for p in parts if p != "value"]
    return re.sub(r"\.\d+(?=\.|$)", ".*", ".".join(parts))


def activation_bytes(
    cfg: LlamaConfig,
    mesh: AbstractMesh,
    rules: Rules,
    rows: int,
    seq_len: int,
    cross_batch_range: int = 0,
) -> dict[str, float]:
    """Per-device activation bytes for `rows` local rows of `seq_len` tokens: {"remat": …, "no_remat": …}."""
    e, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_size
    h, g, v = cfg.num_attention_heads, cfg.kv_heads, cfg.vocab_size
    s = resolve_dtype(cfg.dtype).itemsize

    def tp(name: str, size: int) -> int:
        return _shards(logical_to_spec((name,), rules, mesh, (size,)), mesh)

    tp_h, tp_f, tp_v = tp("heads", h * d), tp("mlp", f), tp("vocab", v)
    tokens = rows * seq_len

    def layer(context: int) -> float:
        per_token = (
            4 * e * s + (2 * h * d + 3 * g * d) * s / tp_h + h * d * s / tp_h + 2 * h * context * 4 / tp_h
        ) + 4 * f * s / tp_f
        return tokens * per_token

    layers = [
        layer((1 + cross_batch_range) * seq_len if i in cfg.mem_layers else seq_len)
        for i in range(cfg.num_hidden_layers)
    ]
    logits = tokens * v * (s + 8) / tp_v
    saved_inputs = cfg.num_hidden_layers * tokens * e * s
    return {"remat": saved_inputs + max(layers) + logits, "no_remat": sum(layers) + logits}


def dry_run(
    model_config: LlamaConfig,
    mesh_cfg: MeshConfig,
    rules: Rules,
    batch_size: int,
    seq_len: int,
    devices: int | Sequence[jax.Device] | None = None,
    *,
    cross_batch_range: int = 0,
    accum_steps: int = 1,
    verbose: bool = True,
) -> dict[str, Any]:
    """Builds the model abstractly and plans it on the mesh; prints and returns the report.

    `devices`: an int plans for that many devices; a device list uses its length; None uses the mesh sizes
    (or this machine's device count when an axis is -1). Returns {"num_parameters", "config_num_parameters",
    "mesh", "num_devices", "rows_per_device", "memory_gib": {...}, "plan": [{"name", "shape", "spec",
    "count"}, ...]}.
    """
    num_devices = _num_devices(mesh_cfg, devices)
    mesh = abstract_mesh(mesh_cfg, num_devices)
    batch_spec = logical_to_spec(("batch", "seq"), rules, mesh)  # as `batch_sharding`: no fallback for rows
    batch_shards = _shards(batch_spec, mesh)
    if batch_size % (batch_shards * accum_steps):
        raise ValueError(
            f"batch_size {batch_size} is not divisible by batch shards x accum_steps ({batch_shards} x {accum_steps})"
        )
    model = nnx.eval_shape(lambda: LlamaForCausalLM(model_config, rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    specs = param_specs(state, rules, mesh)
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))

    total = 0
    per_device = 0.0
    groups: dict[tuple[str, tuple[int, ...], str], int] = {}
    for (path, leaf), spec in zip(leaves, spec_leaves, strict=True):
        size = int(np.prod(leaf.shape))
        total += size
        per_device += size * np.dtype(leaf.dtype).itemsize / _shards(spec, mesh)
        key = (_pattern(path), tuple(leaf.shape), str(spec))
        groups[key] = groups.get(key, 0) + 1

    rows = batch_size // batch_shards
    act = activation_bytes(model_config, mesh, rules, rows // accum_steps, seq_len, cross_batch_range)
    memory = {
        "params": per_device / GIB,
        "grads": per_device / GIB,
        "optimizer": 2 * per_device / GIB,
        "activations_remat": act["remat"] / GIB,
        "activations_no_remat": act["no_remat"] / GIB,
    }
    chosen = memory["activations_remat" if model_config.remat else "activations_no_remat"]
    memory["total"] = memory["params"] + memory["grads"] + memory["optimizer"] + chosen
    report = {
        "num_parameters": total,
        "config_num_parameters": model_config.num_parameters(),
        "mesh": dict(mesh.shape),
        "num_devices": num_devices,
        "batch_spec": str(batch_spec),
        "rows_per_device": rows,
        "remat": model_config.remat,
        "memory_gib": memory,
        "plan": [
            {"name": name, "shape": shape, "spec": spec, "count": count}
            for (name, shape, spec), count in sorted(groups.items())
        ],
    }
    if verbose:
        print(format_report(report))
    return report


def _count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.3f}M"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable form of a `dry_run` report."""
    mem = report["memory_gib"]
    mesh = " x ".join(f"{k}={v}" for k, v in report["mesh"].items())
    lines = [
        f"parameters: {_count(report['num_parameters'])} (config says {_count(report['config_num_parameters'])})",
        f"mesh: {mesh} ({report['num_devices']} devices); batch {report['batch_spec']}, "
        f"{report['rows_per_device']} rows per device",
        "per-device memory (GiB): "
        f"params {mem['params']:.2f} + grads {mem['grads']:.2f} + AdamW {mem['optimizer']:.2f} + activations "
        f"{mem['activations_remat']:.2f} (remat) / {mem['activations_no_remat']:.2f} (no remat) "
        f"= {mem['total']:.2f} with remat={'on' if report['remat'] else 'off'}",
        "sharding plan:",
    ]
    width = max(len(row["name"]) for row in report["plan"])
    for row in report["plan"]:
        times = f"  x{row['count']}" if row["count"] > 1 else ""
        lines.append(f"  {row['name']:<{width}}  {row['shape']!s:<14} {row['spec']}{times}")
    return "\n".join(lines)
