"""Searching the host kNN memory from inside `jax.jit` (DESIGN §3, "Host FAISS from jitted code").

The FAISS indexes live on the host (`KnnMemoryStore`); a jitted window step reaches them through one
`jax.pure_callback` per call:

    @jax.jit
    def step(params, ids, ...):
        q = ...                                   # [layers, batch, seq, heads, head_dim] memory-layer queries
        mem_k, mem_v, mem_mask = search_in_jit(store, q, k)
        ...                                       # attention over [top-k memory ; local window]
        return logits, new_keys, new_values       # the window's raw keys/values leave the step

    for window in windows:                        # host loop, in window order
        logits, kk, vv = step(params, window, ...)
        add_window(store, kk, vv, valid)          # np.asarray waits for the step: its search saw the old memory

Contract:
  * Adds never happen inside the jitted function. `add_window` converts the step's outputs with `np.asarray`,
    which blocks until that step (and so its search callback) has finished; the next step's search therefore sees
    exactly the windows added so far, and no add is repeated or reordered (a retrace does not re-add either).
  * The callback is a pure function of the queries and the store's state at the time it runs: its results must be
    used (XLA may drop an unused pure callback), and the store must not be changed while a step is in flight
    (`KnnMemoryStore` holds a lock, but which state a racing search sees is then unspecified).
  * Queries go through `jax.lax.stop_gradient`: retrieval is not differentiated (the retrieved keys/values are
    constants of the step, as in the paper).
  * The host function only uses numpy and FAISS, never JAX, and returns arrays of exactly the declared
    shapes/dtypes. Under `vmap` it runs once per mapped element (`vmap_method="sequential"`). Under plain `jit` on
    several devices it runs once with the whole array; `store.search_calls` counts the calls.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from focused.memory.core import RetrievedMemory
from focused.memory.faiss_index import KnnMemoryStore
from focused.memory.index_config import KnnIndexConfig
from focused.model.graph import StaticGraph, merge, split_static
from focused.model.llama import LlamaForCausalLM


class KnnResult(NamedTuple):
    """What `search_in_jit` returns (unpacks as `keys, values, mask`).

    keys, values: `[layers, batch, seq, heads, k, head_dim]` in the store's payload dtype, zeros where masked.
    mask: `[layers, batch, seq, heads, k]` bool, False where the memory had fewer than k valid entries.
    """

    keys: jax.Array
    values: jax.Array
    mask: jax.Array

    def layer(self, index: int) -> KnnResult:
        """The neighbours of memory layer `index` (the leading axis dropped): `[batch, seq, heads, k, ...]`."""
        return KnnResult(self.keys[index], self.values[index], self.mask[index])


def search_result_shapes(
    store: KnnMemoryStore, queries_shape: tuple[int, ...], k: int, layer: int | None = None
) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    """Declared results of `search_in_jit` for queries `[layers, batch, seq, heads, head_dim]`.

    Returns ShapeDtypeStructs for keys, values `[layers, batch, seq, heads, k, head_dim]` (the store's payload
    dtype) and mask `[layers, batch, seq, heads, k]` bool. Raises ValueError for queries the store cannot serve.
    """
    expect = (store.num_layers if layer is None else 1, store.batch)
    if len(queries_shape) != 5 or tuple(queries_shape[:2]) != expect or queries_shape[4] != store.head_dim:
        raise ValueError(
            f"queries have shape {tuple(queries_shape)}, expected ({expect[0]}, {store.batch}, seq, heads, "
            f"{store.head_dim})"
        )
    if queries_shape[3] % store.kv_heads:
        raise ValueError(f"{queries_shape[3]} query heads cannot share {store.kv_heads} key/value heads")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive Python int (static under jit), got {k!r}")
    dtype = np.dtype(store.config.payload_dtype)
    payload = jax.ShapeDtypeStruct((*queries_shape[:4], k, store.head_dim), dtype)
    return payload, payload, jax.ShapeDtypeStruct((*queries_shape[:4], k), np.dtype(bool))


def search_in_jit(store: KnnMemoryStore, queries: jax.Array, k: int, layer: int | None = None) -> KnnResult:
    """Top-k memory keys/values for every query, callable inside `jax.jit` (one host callback per call).

    Args:
      store: the host memory; query head h searches kv head h // (heads // kv_heads).
      queries: `[layers, batch, seq, heads, head_dim]` (any float dtype; searched as float32, no gradient).
      k: neighbours per query, a static Python int.
      layer: search only this memory layer's indexes; queries are then `[1, batch, seq, heads, head_dim]`.
    Returns:
      `KnnResult`: keys, values `[layers, batch, seq, heads, k, head_dim]` in the store's payload dtype (zeros where
      masked) and mask `[layers, batch, seq, heads, k]` bool (False where the memory had fewer than k valid
      entries); neighbours are sorted by decreasing inner product.
    """
    shapes = search_result_shapes(store, tuple(queries.shape), k, layer)
    ref = weakref.ref(store)  # the compiled step keeps this callback: it must not keep the store (GBs) alive

    def host_search(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keys, values, mask, _ = _alive(ref).search(np.asarray(q, np.float32), k, layer)
        return keys, values, mask

    found = jax.pure_callback(host_search, shapes, jax.lax.stop_gradient(queries), vmap_method="sequential")
    return KnnResult(*found)


def add_window(store: KnnMemoryStore, keys: jax.Array, values: jax.Array, valid: jax.Array) -> None:
    """Host-side add of one processed window, outside any jitted function.

    keys, values: `[layers, batch, seq, kv_heads, head_dim]` (the step's returned raw k/v projections),
    valid: `[batch, seq]` bool. `np.asarray` waits for the step that produced them, which orders this add after
    that step's search.
    """
    if isinstance(keys, jax.core.Tracer) or isinstance(values, jax.core.Tracer):
        raise ValueError("add_window was called inside a traced function: add to the kNN memory from the host")
    store.add(np.asarray(keys, np.float32), np.asarray(values), np.asarray(valid).astype(bool))


def _alive(ref: weakref.ref) -> KnnMemoryStore:
    store = ref()
    if store is None:
        raise RuntimeError("the kNN memory store of this retriever was garbage-collected: keep a reference to it")
    return store


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, eq=False, init=False)
class KnnRetriever:
    """The memory of one memory layer as a FAISS store searched from inside the jitted forward pass.

    Static under jit (hashed by identity): the store's contents change between calls, not the traced program.
    A jitted function's compile cache keeps its static arguments, so the retriever holds its store weakly: a store
    nobody else references is freed (its indexes and payload can be gigabytes) although compiled steps remain.
    """

    layer: int  # index among the model's memory layers (0 = config.mem_layers[0])
    k: int
    _store: weakref.ref = dataclasses.field(repr=False)

    def __init__(self, store: KnnMemoryStore, layer: int, k: int) -> None:
        object.__setattr__(self, "_store", weakref.ref(store))
        object.__setattr__(self, "layer", layer)
        object.__setattr__(self, "k", k)

    @property
    def store(self) -> KnnMemoryStore:
        return _alive(self._store)

    def retrieve(self, queries: jax.Array) -> RetrievedMemory:
        """queries `[batch, seq, heads, head_dim]` → top-k keys/values/mask `[batch, seq, heads, k, ...]`."""
        found = search_in_jit(self.store, queries[None], self.k, self.layer)
        return RetrievedMemory(found.keys[0], found.values[0], found.mask[0])


@functools.partial(jax.jit, static_argnames=("graphdef", "retrievers"))
def knn_window_step(
    graphdef: StaticGraph,
    params: nnx.State,
    input_ids: jax.Array,
    valid: jax.Array,
    retrievers: tuple[KnnRetriever, ...],
) -> tuple[jax.Array, jax.Array, jax.Array]:
    model = merge(graphdef, params)
    out = model(input_ids, attention_mask=valid, memory=retrievers)
    keys = jnp.stack([kv.keys for kv in out.memory_kv])  # [mem_layers, batch, seq, kv_heads, head_dim]
    values = jnp.stack([kv.values for kv in out.memory_kv])
    return out.logits, keys, values


def new_store(model: LlamaForCausalLM, batch: int, config: KnnIndexConfig) -> KnnMemoryStore:
    """An empty FAISS memory shaped for `model`'s memory layers."""
    cfg = model.config
    return KnnMemoryStore(len(cfg.mem_layers), batch, cfg.kv_heads, cfg.head_size, config)


def forward_long_knn(
    model: LlamaForCausalLM,
    input_ids: np.ndarray | jax.Array,
    store: KnnMemoryStore,
    k: int,
    attention_mask: np.ndarray | jax.Array | None = None,
    *,
    progress: bool = False,
) -> np.ndarray:
    """Window-by-window forward where memory layers search `store` (FAISS) for each query's k nearest keys.

    After each window, its raw keys/values are added to the store from the host (never inside the jitted step),
    so each window sees exactly the earlier windows. Returns logits `[batch, n, vocab]` float32.
    """
    cfg = model.config
    window = cfg.max_position_embeddings
    ids = np.asarray(input_ids, np.int32)
    batch, n = ids.shape
    valid = np.ones((batch, n), bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    if store.batch != batch:
        raise ValueError(f"the kNN store holds {store.batch} rows but the input has {batch}")
    graphdef, params = split_static(model)
    retrievers = tuple(KnnRetriever(store, i, k) for i in range(len(cfg.mem_layers)))
    logits = []
    for start in tqdm(range(0, n, window), desc="windows", disable=not progress, unit="win"):
        stop = min(start + window, n)
        out, keys, values = knn_window_step(graphdef, params, ids[:, start:stop], valid[:, start:stop], retrievers)
        add_window(store, keys, values, valid[:, start:stop])
        logits.append(np.asarray(out))
    return np.concatenate(logits, axis=1)
