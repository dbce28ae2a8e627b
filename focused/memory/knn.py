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

from typing import NamedTuple

import jax
import numpy as np

from focused.memory.faiss_index import KnnMemoryStore


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
    store: KnnMemoryStore, queries_shape: tuple[int, ...], k: int
) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    """Declared results of `search_in_jit` for queries `[layers, batch, seq, heads, head_dim]`.

    Returns ShapeDtypeStructs for keys, values `[layers, batch, seq, heads, k, head_dim]` (the store's payload
    dtype) and mask `[layers, batch, seq, heads, k]` bool. Raises ValueError for queries the store cannot serve.
    """
    expect = (store.num_layers, store.batch)
    if len(queries_shape) != 5 or tuple(queries_shape[:2]) != expect or queries_shape[4] != store.head_dim:
        raise ValueError(
            f"queries have shape {tuple(queries_shape)}, expected ({store.num_layers}, {store.batch}, seq, heads, "
            f"{store.head_dim})"
        )
    if queries_shape[3] % store.kv_heads:
        raise ValueError(f"{queries_shape[3]} query heads cannot share {store.kv_heads} key/value heads")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive Python int (static under jit), got {k!r}")
    dtype = np.dtype(store.config.payload_dtype)
    payload = jax.ShapeDtypeStruct((*queries_shape[:4], k, store.head_dim), dtype)
    return payload, payload, jax.ShapeDtypeStruct((*queries_shape[:4], k), np.dtype(bool))


def search_in_jit(store: KnnMemoryStore, queries: jax.Array, k: int) -> KnnResult:
    """Top-k memory keys/values for every query, callable inside `jax.jit` (one host callback per call).

    Args:
      store: the host memory; query head h searches kv head h // (heads // kv_heads).
      queries: `[layers, batch, seq, heads, head_dim]` (any float dtype; searched as float32, no gradient).
      k: neighbours per query, a static Python int.
    Returns:
      `KnnResult`: keys, values `[layers, batch, seq, heads, k, head_dim]` in the store's payload dtype (zeros where
      masked) and mask `[layers, batch, seq, heads, k]` bool (False where the memory had fewer than k valid
      entries); neighbours are sorted by decreasing inner product.
    """
    shapes = search_result_shapes(store, tuple(queries.shape), k)

    def host_search(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keys, values, mask, _ = store.search(np.asarray(q, np.float32), k)
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
