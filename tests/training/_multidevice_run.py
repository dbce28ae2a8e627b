"""Child process of test_sharding: trains a micro model for 3 steps on 1 device and on several simulated meshes.

Run as `python tests/training/_multidevice_run.py`; the 8 CPU devices must be requested before JAX starts, so
this file sets XLA_FLAGS itself (the parent sets it too). Prints one JSON line: {"losses": {name: [l1, l2, l3]}}.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    "--xla_force_host_platform_device_count=8 "
    # cheaper CPU codegen: halves the compile time of the five train steps this script builds
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)
os.environ["JAX_PLATFORMS"] = "cpu"

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from focused.memory.crossbatch import CrossBatch
from focused.model.config import LlamaConfig
from focused.model.llama import LlamaForCausalLM
from focused.training import sharding as sh
from focused.training.loop import make_train_step
from focused.training.optimizer import TrainConfig, make_optimizer

# CrossBatch over the sharded batch axis: rows see earlier rows that live on other devices
CROSS_BATCH = CrossBatch(range=3, group=4, stepping=True)
CONFIG = LlamaConfig(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32,
    last_context_length=16,
    mem_layers=(1,),
    mem_dtype="float32",
)
TRAIN = TrainConfig(steps=3, learning_rate=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.1)
MESHES = {
    "data8": sh.MeshConfig(data=8, fsdp=1, tensor=1),
    "data2_fsdp4": sh.MeshConfig(data=2, fsdp=4, tensor=1),
    "fsdp2_tensor4": sh.MeshConfig(data=1, fsdp=2, tensor=4),
}


def factory() -> LlamaForCausalLM:
    return LlamaForCausalLM(CONFIG, rngs=nnx.Rngs(0))


def batches() -> list[dict[str, np.ndarray]]:
    """Three random `[8, 32]` token batches (inputs, shifted targets, all-ones loss mask)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(3):
        tokens = rng.integers(0, CONFIG.vocab_size, size=(8, 33), dtype=np.int32)
        out.append({"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": np.ones((8, 32), np.int32)})
    return out


def run_single_device(init: dict) -> list[float]:
    graphdef, params = nnx.split(factory())
    params = jax.device_put(params, jax.devices()[0])
    assert _same(params, init)
    tx = make_optimizer(TRAIN)
    opt_state = tx.init(params)
    step = make_train_step(graphdef, tx, TRAIN.accum_steps, CROSS_BATCH)
    losses = []
    for batch in batches():
        params, opt_state, metrics = step(params, opt_state, {k: jax.numpy.asarray(v) for k, v in batch.items()})
        losses.append(float(metrics["loss"]))
    return losses


def _same(params: nnx.State, init: dict) -> bool:
    got = jax.tree.map(np.asarray, nnx.to_pure_dict(params))
    pairs = zip(jax.tree.leaves(got), jax.tree.leaves(init), strict=True)
    return all(np.allclose(a, b, rtol=0, atol=1e-7) for a, b in pairs)  # jit vs eager: last-ulp differences


def _specs(tree: object) -> list[P]:
    return [x.sharding.spec for x in jax.tree.leaves(tree)]


def run_mesh(mesh_cfg: sh.MeshConfig, init: dict, wrapped: bool) -> list[float]:
    mesh = sh.make_mesh(mesh_cfg)
    rules = sh.DEFAULT_RULES
    model = sh.init_sharded(factory, rules, mesh)
    graphdef, params = nnx.split(model)
    assert _same(params, init), "sharded init differs from the single-device init"
    p_sh = sh.param_shardings(params, rules, mesh)
    want = [s.spec for s in jax.tree.leaves(p_sh)]
    assert _specs(params) == want, (_specs(params), want)
    q = params["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"][...]
    rows, cols = mesh.shape["fsdp"], mesh.shape["tensor"]
    assert q.addressable_shards[0].data.shape == (64 // rows, 64 // cols), q.addressable_shards[0].data.shape
    tx = make_optimizer(TRAIN)
    opt_state, o_sh = sh.init_opt_state(tx, params, p_sh)
    mu = opt_state[1][0].mu["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"][...]
    assert mu.sharding.spec == q.sharding.spec, (mu.sharding.spec, q.sharding.spec)
    b_sh = sh.batch_sharding(mesh, rules)
    step = make_train_step(graphdef, tx, TRAIN.accum_steps, CROSS_BATCH)
    if wrapped:
        step = sh.make_sharded_step(step, p_sh, o_sh, b_sh)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    try:
        sh.global_batch({"inputs": np.zeros((6, 32), np.int32)}, b_sh)
        assert 6 % shards == 0, f"6 rows were accepted for {shards} batch shards"
    except ValueError as err:
        assert str(err) == f"global batch of 6 rows for 'inputs' is not divisible by its {shards} batch shards", err
    losses = []
    for batch in batches():
        feed = sh.global_batch(batch, b_sh)
        assert feed["inputs"].addressable_shards[0].data.shape[0] == 8 // shards
        params, opt_state, metrics = step(params, opt_state, feed)
        losses.append(float(metrics["loss"]))
    if wrapped:
        assert _specs(params) == want, "the step changed the parameter shardings"
    return losses


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    init = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.split(factory())[1]))
    losses = {"single": run_single_device(init)}
    for name, mesh_cfg in MESHES.items():
        losses[name] = run_mesh(mesh_cfg, init, wrapped=True)
    losses["data2_fsdp4_plain_jit"] = run_mesh(MESHES["data2_fsdp4"], init, wrapped=False)
    print(json.dumps({"losses": losses}))


if __name__ == "__main__":
    main()
