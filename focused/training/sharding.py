"""Device mesh, logical-axis sharding rules, and sharded parameters / optimizer state / batches (DESIGN §8).

One code path from 1 CPU device to a multi-host mesh. The mesh has three axes:

    data    pure data parallelism (parameters replicated)
    fsdp    data parallelism with parameters, gradients and optimizer state sharded over it (ZeRO-3 style)
    tensor  tensor (model) parallelism over heads / MLP features / vocabulary

Every `nnx.Param` carries `logical_axes` metadata (e.g. `("embed", "heads")`); `rules` map each logical name to a
mesh axis, a tuple of mesh axes, or None (replicated). The rules live in the config (`config.sharding.rules`):

    config.sharding = sharding_config()          # mesh=dict(data=-1, fsdp=1, tensor=1), rules=DEFAULT_RULES

Divisibility fallback: a dimension that a mesh axis does not divide is not sharded over that axis (the axis is
dropped from that dimension's spec and an INFO message is logged once), so a tiny model still runs on 8 devices;
a spec never uses one mesh axis twice (a later dimension that asks for an axis already used does without it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

AxisTarget = str | tuple[str, ...] | None
Rules = tuple[tuple[str, AxisTarget], ...]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("seq", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("norm", None),
)

_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        log.info(message)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the (data, fsdp, tensor) mesh axes; one of them may be -1 = all remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self) -> None:
        sizes = self.sizes()
        bad = [f"{n}={s}" for n, s in zip(MESH_AXES, sizes, strict=True) if s != -1 and s < 1]
        if bad:
            raise ValueError(f"mesh axis sizes must be >= 1 or -1 (fill), got {', '.join(bad)}")
        if sizes.count(-1) > 1:
            raise ValueError(f"at most one mesh axis may be -1 (fill), got {self._describe()}")

    def sizes(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)

    def _describe(self) -> str:
        return " x ".join(f"{n}={s}" for n, s in zip(MESH_AXES, self.sizes(), strict=True))

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """The concrete (data, fsdp, tensor) sizes for `num_devices` devices (the -1 axis takes the rest)."""
        sizes = self.sizes()
        fixed = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % fixed:
                raise ValueError(f"mesh {self._describe()} does not divide the device count {num_devices}")
            return tuple(num_devices // fixed if s == -1 else s for s in sizes)  # type: ignore[return-value]
        if fixed != num_devices:
            raise ValueError(f"mesh {self._describe()} needs {fixed} devices but the device count is {num_devices}")
        return sizes

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MeshConfig:
        unknown = sorted(set(values) - set(MESH_AXES))
        if unknown:
            raise ValueError(f"unknown mesh axis key(s) {unknown}; valid keys: {', '.join(MESH_AXES)}")
        return cls(**{k: int(v) for k, v in values.items()})


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `Mesh` with axes ("data", "fsdp", "tensor") over `devices` (default: all devices of all processes).

    Axes are `AxisType.Auto` (the compiler propagates shardings); device order follows
    `jax.experimental.mesh_utils.create_device_mesh`, which is topology-aware on TPU/GPU.
    """
    from jax.experimental import mesh_utils

    devices = list(jax.devices() if devices is None else devices)
    shape = cfg.resolve(len(devices))
    try:
        grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def abstract_mesh(cfg: MeshConfig, num_devices: int) -> AbstractMesh:
    """A device-less mesh of the same shape, for planning a run bigger than this machine."""
    return AbstractMesh(cfg.resolve(num_devices), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules_from_config(rules: Mapping[str, Any] | Sequence[Sequence[Any]] | None = None) -> Rules:
    """Validated rules from a mapping or a sequence of (logical name, mesh axis | tuple of axes | None) pairs.

    None gives `DEFAULT_RULES`. An unknown mesh axis or a repeated logical name is a one-line ValueError.
    """
    if rules is None:
        return DEFAULT_RULES
    pairs = list(rules.items()) if isinstance(rules, Mapping) else [tuple(p) for p in rules]
    out: list[tuple[str, AxisTarget]] = []
    seen: set[str] = set()
    for pair in pairs:
        if len(pair) != 2 or not isinstance(pair[0], str):
            raise ValueError(f"a sharding rule must be (logical name, mesh axes), got {pair!r}")
        name, target = pair
        if name in seen:
            raise ValueError(f"logical axis {name!r} has more than one sharding rule")
        seen.add(name)
        axes = () if target is None else (target,) if isinstance(target, str) else tuple(target)
        unknown = [a for a in axes if a not in MESH_AXES]
        if unknown:
            raise ValueError(f"rule for {name!r} names unknown mesh axes {unknown}; mesh axes are {MESH_AXES}")
        out.append((name, None if not axes else axes[0] if len(axes) == 1 else axes))
    return tuple(out)


def sharding_config(mesh: MeshConfig | None = None, rules: Rules = DEFAULT_RULES) -> ml_collections.ConfigDict:
    """The `config.sharding` section: `mesh` (axis sizes) and `rules` (tuple of pairs)."""
    mesh = mesh or MeshConfig()
    return ml_collections.ConfigDict({"mesh": dataclasses.asdict(mesh), "rules": tuple((n, t) for n, t in rules)})


def from_config(section: Mapping[str, Any] | None) -> tuple[MeshConfig, Rules]:
    """(MeshConfig, Rules) from a `config.sharding` section; None or a missing key gives the defaults."""
    section = {} if section is None else dict(section)
    unknown = sorted(set(section) - {"mesh", "rules"})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in config.sharding; valid keys: mesh, rules")
    mesh = section.get("mesh")
    return MeshConfig.from_dict(dict(mesh) if mesh else {}), rules_from_config(section.get("rules"))


def _axis_sizes(mesh: Mesh | AbstractMesh) -> dict[str, int]:
    return dict(mesh.shape)


def logical_to_spec(
    axes: Sequence[str | None],
    rules: Rules,
    mesh: Mesh | AbstractMesh,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """The PartitionSpec for an array whose dimensions have logical names `axes`.

    With `shape`, a mesh axis that does not divide its dimension is dropped (logged once); a mesh axis is never
    used twice in one spec. Example: axes ("embed", "heads"), shape (64, 64) on data=2, fsdp=4, tensor=1 →
    P("fsdp", "tensor").
    """
    if shape is not None and len(shape) != len(axes):
        raise ValueError(f"logical axes {tuple(axes)} do not match the array rank {len(shape)} of shape {tuple(shape)}")
    table = dict(rules)
    sizes = _axis_sizes(mesh)
    used: set[str] = set()
    spec: list[AxisTarget] = []
    for dim, name in enumerate(axes):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(f"logical axis {name!r} has no sharding rule; rules cover {sorted(table)}")
        target = table[name]
        wanted = () if target is None else (target,) if isinstance(target, str) else tuple(target)
        chosen: list[str] = []
        for axis in wanted:
            if axis not in sizes:
                raise ValueError(f"rule {name!r} -> {axis!r}: the mesh has no axis {axis!r} (axes {tuple(sizes)})")
            if axis in used:
                continue
            if shape is not None and shape[dim] % (math.prod(sizes[a] for a in chosen) * sizes[axis]):
                _log_once(
                    f"dimension {dim} ({name}) of size {shape[dim]} is not divisible by mesh axis "
                    f"{axis}={sizes[axis]}: not sharded over {axis}"
                )
                continue
            chosen.append(axis)
            used.add(axis)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def param_specs(model_or_state: nnx.Module | Any, rules: Rules, mesh: Mesh | AbstractMesh) -> Any:
    """Like `param_shardings` but with PartitionSpec leaves (works with an AbstractMesh: no devices needed)."""
    state = nnx.state(model_or_state, nnx.Param) if isinstance(model_or_state, nnx.Module) else model_or_state

    def spec(leaf: Any) -> Any:
        if not _is_variable(leaf):
            return PartitionSpec()
        axes = leaf.get_metadata().get("logical_axes")
        if axes is None:
            return leaf.replace(PartitionSpec())
        return leaf.replace(logical_to_spec(axes, rules, mesh, leaf.get_value().shape))

    return jax.tree.map(spec, state, is_leaf=_is_variable)


def param_shardings(model_or_state: nnx.Module | Any, rules: Rules, mesh: Mesh) -> Any:
    """A tree of NamedSharding shaped like `nnx.state(model, nnx.Param)` (or like the State passed in).

    Variables without `logical_axes` metadata and plain leaves are replicated.
    """
    specs = param_specs(model_or_state, rules, mesh)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def _path_key(path: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(k) for k in path)


def opt_state_shardings(opt_state: Any, params: Any, shardings: Any) -> Any:
    """Shardings for an optax state (arrays or ShapeDtypeStructs): a leaf whose path ends with a parameter's path
    and has that parameter's shape is sharded like it (AdamW mu / nu); every other leaf (step counts) is replicated.
    """
    flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_sh = jax.tree.leaves(shardings)
    if len(flat_params) != len(flat_sh):
        raise ValueError(f"{len(flat_sh)} shardings for {len(flat_params)} parameters: build them from these params")
    table = {_path_key(p): (tuple(leaf.shape), s) for (p, leaf), s in zip(flat_params, flat_sh, strict=True)}
    replicated = NamedSharding(flat_sh[0].mesh, PartitionSpec())

    def one(path: tuple[Any, ...], leaf: Any) -> NamedSharding:
        key = _path_key(path)
        for start in range(len(key)):
            hit = table.get(key[start:])
            if hit is not None and hit[0] == tuple(np.shape(leaf)):
                return hit[1]
        return replicated

    return jax.tree_util.tree_map_with_path(one, opt_state)


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """Sharding of `[batch, seq]` arrays: rows over the mesh axes of the "batch" rule (data + fsdp)."""
    return NamedSharding(mesh, logical_to_spec(("batch", "seq"), rules, mesh))


def shard_params(params: Any, shardings: Any) -> Any:
    """`params` placed as `shardings` say (`jax.device_put`); every process must pass the same values."""
    return jax.device_put(params, shardings)


def init_opt_state(tx: optax.GradientTransformation, params: Any, shardings: Any) -> tuple[Any, Any]:
    """(opt_state created directly sharded, its shardings) for sharded `params`."""
    abstract = jax.eval_shape(tx.init, params)
    opt_sh = opt_state_shardings(abstract, params, shardings)
    return jax.jit(tx.init, out_shardings=opt_sh)(params), opt_sh


def init_sharded(model_factory: Callable[[], nnx.Module], rules: Rules, mesh: Mesh) -> nnx.Module:
    """Calls `model_factory()` inside `jit` with sharded outputs, so each device only ever holds its shards.

    The model is first built abstractly (`nnx.eval_shape`) to read parameter shapes and logical axes.
    """
    abstract = nnx.eval_shape(model_factory)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = param_shardings(abstract_state, rules, mesh)

    def init() -> Any:
        return nnx.split(model_factory())[1]

    state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def make_sharded_step(
    step: Callable[..., Any], param_sh: Any, opt_sh: Any, batch_sh: NamedSharding
) -> Callable[[Any, Any, Mapping[str, Any]], Any]:
    """Wraps a `step(params, opt_state, batch) -> (params, opt_state, metrics)` (e.g. from `make_train_step`)
    in `jit` with fixed input and output shardings (metrics replicated), donating params and opt_state.

    Inputs must already carry these shardings (or be host numpy arrays, which are placed accordingly).
    """
    replicated = NamedSharding(batch_sh.mesh, PartitionSpec())
    return jax.jit(
        step,
        in_shardings=(param_sh, opt_sh, batch_sh),
        out_shardings=(param_sh, opt_sh, replicated),
        donate_argnums=(0, 1),
    )


def sharded_abstract(tree: Any) -> Any:
    """ShapeDtypeStructs that keep each array's sharding (orbax restores straight into those shardings)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def process_rows(sharding: NamedSharding, batch_size: int) -> tuple[int, int]:
    """(start, stop): the rows of a `[batch_size, ...]` global batch that this process's devices hold.

    With the batch sharded over (data, fsdp) and the mesh laid out process by process, process p of n holds rows
    p·batch_size/n … (p+1)·batch_size/n - 1; a process whose devices span every batch shard (a mesh whose data and
    fsdp axes lie within one process) holds them all. Rows that are not one contiguous block are a ValueError.
    """
    index_map = sharding.addressable_devices_indices_map((batch_size, 1))
    spans = sorted({(r.start or 0, batch_size if r.stop is None else r.stop) for r, *_ in index_map.values()})
    start, stop = spans[0][0], spans[0][1]
    for a, b in spans[1:]:
        if a > stop:
            raise ValueError(
                f"process {jax.process_index()} holds batch rows {spans}, not one contiguous block: lay the mesh out "
                "so that each process holds consecutive batch shards"
            )
        stop = max(stop, b)
    return start, stop


def global_batch(
    local: Mapping[str, np.ndarray], sharding: NamedSharding, batch_size: int | None = None
) -> dict[str, jax.Array]:
    """One global `[batch_size, seq]` array per key from this process's rows (`process_rows`).

    batch_size: rows of the global batch; default: this process's rows × the process count (process p holding
    rows p·local_rows … (p+1)·local_rows - 1).
    """
    sizes = _axis_sizes(sharding.mesh)
    rows_axes = sharding.spec[0] if len(sharding.spec) else None
    shards = math.prod(sizes[a] for a in ((rows_axes,) if isinstance(rows_axes, str) else rows_axes or ()))
    out = {}
    for key, value in local.items():
        value = np.asarray(value)
        rows = value.shape[0] * jax.process_count() if batch_size is None else batch_size
        if rows % shards:
            raise ValueError(f"global batch of {rows} rows for {key!r} is not divisible by its {shards} batch shards")
        out[key] = jax.make_array_from_process_local_data(sharding, value, (rows, *value.shape[1:]))
    return out


def allgather_json(value: Any) -> list[Any]:
    """Every process's JSON-serialisable `value`, in process order (a collective: all processes call it)."""
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(len(data)))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: len(data)] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(bytes(row[:size])) for row, size in zip(gathered, sizes, strict=True)]


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else None


def multi_process_env() -> str | None:
    """Which launcher says there are several processes: "jax", "slurm", "openmpi", "tpu", or None."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS") and (_env_int("JAX_NUM_PROCESSES") or 2) > 1:
        return "jax"
    if "SLURM_PROCID" in os.environ and (_env_int("SLURM_NTASKS") or 1) > 1:
        return "slurm"
    if (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return "openmpi"
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("TPU_PROCESS_ADDRESSES") or ""
    if len([h for h in hosts.split(",") if h.strip()]) > 1 or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    return None


def maybe_initialize_distributed() -> bool:
    """Calls `jax.distributed.initialize()` when the environment describes several processes; True if it did
    (or had already). Call it before anything touches a JAX device.

    `JAX_COORDINATOR_ADDRESS` (host:port) goes with `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`; SLURM, Open MPI
    and Cloud TPU pods are detected by JAX itself from their own variables.
    """
    if jax.distributed.is_initialized():
        return True
    kind = multi_process_env()
    if kind is None:
        return False
    if kind == "jax":
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=_env_int("JAX_NUM_PROCESSES"),
            process_id=_env_int("JAX_PROCESS_ID"),
        )
    else:
        jax.distributed.initialize()
    log.info("jax.distributed initialised (%s): process %d of %d", kind, jax.process_index(), jax.process_count())
    return True
