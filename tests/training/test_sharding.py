"""Mesh config, logical sharding rules, multi-process setup, dry-run planning, and sharded training on 8 simulated
CPU devices (in a subprocess, because the device count is fixed when JAX starts)."""

from __future__ import annotations

import json
import logging
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from focused.model.config import LlamaConfig
from focused.model.llama import LlamaForCausalLM
from focused.training import sharding as sh
from focused.training.dry_run import dry_run
from focused.training.optimizer import TrainConfig, make_optimizer

MESH_2x4x1 = AbstractMesh((2, 4, 1), sh.MESH_AXES)
MESH_1x2x4 = AbstractMesh((1, 2, 4), sh.MESH_AXES)
TINY = LlamaConfig(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=16,
    last_context_length=8,
    mem_layers=(1,),
)


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("kwargs", "devices", "match"),
    [
        (dict(data=-1, fsdp=-1), 8, r"at most one mesh axis may be -1.*data=-1 x fsdp=-1 x tensor=1"),
        (dict(data=2, fsdp=2, tensor=1), 8, r"data=2 x fsdp=2 x tensor=1 needs 4 devices but the device count is 8"),
        (dict(data=-1, fsdp=3), 8, r"data=-1 x fsdp=3 x tensor=1 does not divide the device count 8"),
        (dict(data=0), 8, r"mesh axis sizes must be >= 1 or -1 \(fill\), got data=0"),
    ],
)
def test_mesh_config_errors_are_one_line(kwargs: dict, devices: int, match: str) -> None:
    with pytest.raises(ValueError, match=match) as excinfo:
        sh.MeshConfig(**kwargs).resolve(devices)
    one_line_error(excinfo)


def test_mesh_config_resolves_and_builds_a_mesh() -> None:
    assert sh.MeshConfig().resolve(8) == (8, 1, 1)
    assert sh.MeshConfig(data=2, fsdp=-1, tensor=2).resolve(16) == (2, 4, 2)
    assert sh.MeshConfig.from_dict({"fsdp": 4, "data": -1}) == sh.MeshConfig(data=-1, fsdp=4)
    with pytest.raises(ValueError, match=r"unknown mesh axis key\(s\) \['model'\]; valid keys: data, fsdp, tensor"):
        sh.MeshConfig.from_dict({"model": 2})
    mesh = sh.make_mesh(sh.MeshConfig(), devices=jax.devices()[:1])
    assert mesh.axis_names == ("data", "fsdp", "tensor") and dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="needs 4 devices but the device count is 1") as excinfo:
        sh.make_mesh(sh.MeshConfig(data=2, fsdp=2), devices=jax.devices()[:1])
    one_line_error(excinfo)


@pytest.mark.parametrize(
    ("axes", "shape", "mesh", "want"),
    [
        (("embed", "heads"), (64, 64), MESH_2x4x1, P("fsdp", "tensor")),
        (("heads", "embed"), (64, 64), MESH_1x2x4, P("tensor", "fsdp")),
        (("vocab", "embed"), (256, 64), MESH_1x2x4, P("tensor", "fsdp")),
        (("batch", "seq"), (8, 32), MESH_2x4x1, P(("data", "fsdp"), None)),
        (("norm",), (64,), MESH_2x4x1, P(None)),
        (("embed", "embed"), (64, 64), MESH_2x4x1, P("fsdp", None)),  # one mesh axis at most once per spec
        (("embed", "kv_heads"), (6, 32), MESH_1x2x4, P("fsdp", "tensor")),
        (("embed", "kv_heads"), (6, 6), MESH_1x2x4, P("fsdp", None)),  # 6 % 4: not sharded over tensor
        (("batch", "seq"), (2, 32), MESH_2x4x1, P("data", None)),  # 2 rows: data only, fsdp dropped
        (("batch", "seq"), (4, 32), MESH_1x2x4, P(("data", "fsdp"), None)),
        (("embed", "mlp"), (3, 5), MESH_1x2x4, P(None, None)),
        (("embed", "heads"), None, MESH_1x2x4, P("fsdp", "tensor")),  # no shape: no divisibility check
    ],
)
def test_logical_to_spec(axes: tuple, shape: tuple | None, mesh: AbstractMesh, want: P) -> None:
    assert sh.logical_to_spec(axes, sh.DEFAULT_RULES, mesh, shape) == want


def test_divisibility_fallback_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="focused.training.sharding"):
        sh.logical_to_spec(("mlp",), sh.DEFAULT_RULES, MESH_1x2x4, (10,))
    assert "dimension 0 (mlp) of size 10 is not divisible by mesh axis tensor=4" in caplog.text


def test_logical_to_spec_errors() -> None:
    with pytest.raises(ValueError, match=r"logical axis 'experts' has no sharding rule; rules cover \[") as e:
        sh.logical_to_spec(("experts",), sh.DEFAULT_RULES, MESH_2x4x1)
    one_line_error(e)
    with pytest.raises(ValueError, match=r"do not match the array rank 1 of shape \(4,\)"):
        sh.logical_to_spec(("embed", "mlp"), sh.DEFAULT_RULES, MESH_2x4x1, (4,))
    with pytest.raises(ValueError, match=r"rule for 'embed' names unknown mesh axes \['model'\]"):
        sh.rules_from_config({"embed": "model"})
    with pytest.raises(ValueError, match="logical axis 'embed' has more than one sharding rule"):
        sh.rules_from_config([("embed", "fsdp"), ("embed", None)])


def test_rules_and_mesh_come_from_the_config() -> None:
    assert sh.rules_from_config(None) == sh.DEFAULT_RULES
    assert sh.rules_from_config({"batch": ["data", "fsdp"], "embed": ("fsdp",), "norm": None}) == (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("norm", None),
    )
    section = sh.sharding_config(sh.MeshConfig(data=-1, fsdp=4))
    section.rules = (*section.rules[:2], ("embed", None), *section.rules[3:])  # a config override: no FSDP
    mesh_cfg, rules = sh.from_config(section)
    assert mesh_cfg == sh.MeshConfig(data=-1, fsdp=4) and dict(rules)["embed"] is None
    assert sh.logical_to_spec(("embed", "heads"), rules, MESH_2x4x1, (64, 64)) == P(None, "tensor")
    assert sh.from_config(None) == (sh.MeshConfig(), sh.DEFAULT_RULES)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['axes'\] in config.sharding"):
        sh.from_config({"axes": 1})


def test_param_and_opt_state_shardings_on_one_device() -> None:
    mesh = sh.make_mesh(sh.MeshConfig(), devices=jax.devices()[:1])
    model = sh.init_sharded(lambda: LlamaForCausalLM(TINY, rngs=nnx.Rngs(0)), sh.DEFAULT_RULES, mesh)
    shardings = sh.param_shardings(model, sh.DEFAULT_RULES, mesh)
    layer = shardings["model"]["layers"][1]
    assert layer["self_attn"]["q_proj"]["kernel"].get_value().spec == P("fsdp", "tensor")
    assert layer["mlp"]["down_proj"]["kernel"].get_value().spec == P("tensor", "fsdp")
    assert shardings["model"]["embed_tokens"]["embedding"].get_value().spec == P("tensor", "fsdp")
    params = sh.shard_params(nnx.state(model, nnx.Param), shardings)
    tx = make_optimizer(TrainConfig(steps=2, warmup_steps=0))
    opt_state, opt_sh = sh.init_opt_state(tx, params, shardings)
    specs = {jax.tree_util.keystr(p): s.spec for p, s in jax.tree_util.tree_flatten_with_path(opt_sh)[0]}
    assert specs["[1][0].count"] == P()
    assert specs["[1][0].mu['lm_head']['kernel'].value"] == P("fsdp", "tensor")
    assert specs["[1][0].nu['model']['norm']['weight'].value"] == P(None)
    restored = sh.sharded_abstract(opt_state)
    assert jax.tree.leaves(restored)[1].sharding == jax.tree.leaves(opt_state)[1].sharding
    batch = sh.global_batch({"inputs": np.zeros((4, 16), np.int32)}, sh.batch_sharding(mesh))
    assert batch["inputs"].shape == (4, 16) and batch["inputs"].sharding.spec == P(("data", "fsdp"), None)


@pytest.mark.parametrize(
    ("env", "kind", "call"),
    [
        ({}, None, None),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "1"}, None, None),
        (
            {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"},
            "jax",
            {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3},
        ),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, None, None),
        ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, "slurm", {}),
        ({"OMPI_COMM_WORLD_SIZE": "8"}, "openmpi", {}),
        ({"TPU_WORKER_HOSTNAMES": "t0"}, None, None),
        ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, "tpu", {}),
    ],
)
def test_maybe_initialize_distributed(monkeypatch: pytest.MonkeyPatch, env: dict, kind: str | None, call) -> None:
    for name in list(os.environ):
        if name.startswith(("JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS", "SLURM_", "OMPI_", "TPU_", "MEGASCALE")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    calls: list[dict] = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    assert sh.multi_process_env() == kind
    assert sh.maybe_initialize_distributed() is (kind is not None)
    assert calls == ([] if call is None else [call])


def test_dry_run_plans_longllama_3b_on_128_devices_without_allocating() -> None:
    config = runpy.run_path("configs/longllama_3b.py")["get_config"]()
    model_cfg = LlamaConfig.from_dict(config.model.to_dict())
    live_before = sum(x.nbytes for x in jax.live_arrays())
    start = time.perf_counter()
    report = dry_run(model_cfg, sh.MeshConfig(data=8, fsdp=16, tensor=1), sh.DEFAULT_RULES, 128, 2048)
    elapsed = time.perf_counter() - start
    assert elapsed < 30, elapsed
    assert sum(x.nbytes for x in jax.live_arrays()) - live_before < 2**20  # nothing big was materialised
    assert abs(report["num_parameters"] / 1e9 - 3.43) < 0.01
    assert report["num_parameters"] == model_cfg.num_parameters()
    assert report["num_devices"] == 128 and report["rows_per_device"] == 1
    plan = {row["name"]: row for row in report["plan"]}
    assert len(plan) == 12
    assert plan["model.layers.*.self_attn.q_proj.kernel"]["spec"] == str(P("fsdp", "tensor"))
    assert plan["model.layers.*.self_attn.q_proj.kernel"]["count"] == 26
    assert plan["model.embed_tokens.embedding"]["spec"] == str(P("tensor", "fsdp"))
    mem = report["memory_gib"]
    norms = (2 * 26 + 1) * 3200  # replicated; every other tensor is split 16 ways over fsdp
    assert mem["params"] == pytest.approx(((report["num_parameters"] - norms) / 16 + norms) * 4 / 2**30)
    assert mem["optimizer"] == pytest.approx(2 * mem["params"])
    assert 0 < mem["activations_remat"] < mem["activations_no_remat"]
    assert mem["total"] == pytest.approx(4 * mem["params"] + mem["activations_remat"])  # the config has remat on


def test_dry_run_fills_the_mesh_for_a_planned_device_count_and_checks_the_batch() -> None:
    report = dry_run(TINY, sh.MeshConfig(data=-1, fsdp=2, tensor=4), sh.DEFAULT_RULES, 64, 16, devices=256)
    assert report["mesh"] == {"data": 32, "fsdp": 2, "tensor": 4} and report["rows_per_device"] == 1
    plan = {row["name"]: row for row in report["plan"]}
    assert plan["model.layers.*.self_attn.k_proj.kernel"]["spec"] == str(P("fsdp", "tensor"))  # 2*8 = 16 % 4
    with pytest.raises(ValueError, match=r"batch_size 96 is not divisible by batch shards x accum_steps \(64 x 1\)"):
        dry_run(TINY, sh.MeshConfig(data=-1, fsdp=2, tensor=4), sh.DEFAULT_RULES, 96, 16, devices=256, verbose=False)


def test_sharded_training_matches_one_device_on_8_simulated_devices() -> None:
    script = Path(__file__).with_name("_multidevice_run.py")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = json.loads(proc.stdout.strip().splitlines()[-1])["losses"]
    print("losses per mesh:", json.dumps(losses))
    reference = losses.pop("single")
    assert len(reference) == 3 and len(losses) == 4
    for name, got in losses.items():
        np.testing.assert_allclose(got, reference, rtol=0, atol=1e-5, err_msg=name)
