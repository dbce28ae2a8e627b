"""One memory interface for generation: the on-device buffer (dense / top-k) and the host FAISS store behave alike.

A `MemoryStore` is what a long-input reader or a decoder talks to; it never needs to know the backend:

    store = new_store(model.config, batch, MemoryConfig(backend="faiss", top_k=32), capacity=65536)
    reader = store.reader()                     # a pytree: pass it into a jitted step
    ...   inside the step: memory=reader.blocks()  (one MemoryBlock or Retriever per memory layer)
    store.append(keys, values, valid)           # after the step, from the host, in window order
    store.stored, store.capacity, store.policy  # host ints / str, no device sync
    store.save(path); store.load(path)

keys, values: `[mem_layers, batch, seq, kv_heads, head_dim]` raw (un-rotated) projections; valid `[batch, seq]` bool.

- `DenseStore`: `DenseMemoryState` buffers on the device (`focused.memory.dense`); `append` is a jitted scatter that
  donates the old buffers. Its reader carries the buffers plus two static fields (top_k; `view`, how many leading
  slots attention looks at, a power of two so few shapes compile).
- `FaissStore`: a `KnnMemoryStore` (`focused.memory.faiss_index`) searched through `jax.pure_callback`; its reader is
  static (no arrays) and the same object for the store's lifetime, so a jitted step compiles once.

A reader is valid until the next `append` (a dense append donates the buffers it points to).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Protocol, runtime_checkable

import jax

from focused.memory.backends import MemoryConfig
from focused.memory.core import MemoryBlock, Retriever
from focused.memory.dense import (
    DenseMemoryState,
    append_window,
    check_capacity,
    init_memory,
    memory_blocks,
    memory_view,
    read_chunk,
)
from focused.memory.faiss_index import KnnMemoryStore
from focused.memory.index_config import KnnIndexConfig
from focused.memory.knn import KnnRetriever, add_window
from focused.model.attention import WindowKV
from focused.model.config import LlamaConfig


@runtime_checkable
class MemoryReader(Protocol):
    """A pytree handed to a jitted step; `blocks()` (called inside the step) gives each memory layer's memory."""

    def blocks(self) -> tuple[MemoryBlock | Retriever, ...]: ...


@runtime_checkable
class MemoryStore(Protocol):
    """The memory of one batch of documents, whatever keeps it."""

    @property
    def stored(self) -> int:
        """Tokens appended so far per row (padding included; may exceed capacity under drop_oldest)."""
        ...

    @property
    def capacity(self) -> int: ...

    @property
    def policy(self) -> str: ...

    def reader(self, queries: int | None = None) -> MemoryReader:
        """What a jitted step reads; `queries`: positions per row that will read it at once (a window), if known."""
        ...

    def append(self, keys: jax.Array, values: jax.Array, valid: jax.Array) -> None: ...

    def save(self, path: str | os.PathLike) -> None: ...

    def load(self, path: str | os.PathLike) -> None: ...


@functools.partial(jax.tree_util.register_dataclass, data_fields=["state"], meta_fields=["top_k", "view"])
@dataclasses.dataclass(frozen=True)
class DenseReader:
    state: DenseMemoryState
    top_k: int | None
    view: int | None

    def blocks(self) -> tuple[MemoryBlock, ...]:
        return memory_blocks(self.state, self.top_k, self.view)


@functools.partial(jax.jit, donate_argnames=("state",))
def _append_dense(state: DenseMemoryState, keys: jax.Array, values: jax.Array, valid: jax.Array) -> DenseMemoryState:
    kv = tuple(WindowKV(keys[i], values[i]) for i in range(keys.shape[0]))
    return append_window(state, kv, valid)


class DenseStore:
    """Memory keys/values in one preallocated device buffer; top_k None = dense attention, k = exact top-k."""

    def __init__(
        self,
        config: LlamaConfig,
        batch: int,
        capacity: int,
        *,
        top_k: int | None = None,
        policy: str = "error",
        state: DenseMemoryState | None = None,
    ) -> None:
        check_capacity(0, 0, capacity, policy)  # validates the policy name
        self.config, self.top_k, self._policy = config, top_k, policy
        self.state = init_memory(config, batch, capacity) if state is None else state
        self._stored = 0 if state is None else int(state.length)

    @property
    def stored(self) -> int:
        return self._stored

    @property
    def capacity(self) -> int:
        return self.state.mask.shape[1]

    @property
    def policy(self) -> str:
        return self._policy

    def reader(self, queries: int | None = None) -> DenseReader:
        whole_from = None if queries is None else read_chunk(self.config, self.state.mask.shape[0], queries, self.top_k)
        view = memory_view(self._stored, self.capacity, self.config.max_position_embeddings, whole_from)
        return DenseReader(self.state, self.top_k, view)

    def append(self, keys: jax.Array, values: jax.Array, valid: jax.Array) -> None:
        seq = valid.shape[1]
        check_capacity(self._stored, seq, self.capacity, self._policy)
        self.state = _append_dense(self.state, keys, values, valid)
        self._stored += seq

    def save(self, path: str | os.PathLike) -> None:
        from focused.memory.persist import save_memory

        save_memory(self.state, self.config, path, overwrite=True)

    def load(self, path: str | os.PathLike) -> None:
        from focused.memory.persist import load_memory

        self.state = load_memory(path, self.config)
        self._stored = int(self.state.length)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, eq=False)
class KnnReader:
    """Static under jit (hashed by identity): the FAISS store changes between calls, the traced program does not."""

    retrievers: tuple[KnnRetriever, ...]

    def blocks(self) -> tuple[KnnRetriever, ...]:
        return self.retrievers


class FaissStore:
    """Host FAISS indexes (`KnnMemoryStore`); each query retrieves its `k` nearest memory keys per layer."""

    def __init__(self, store: KnnMemoryStore, k: int) -> None:
        self.store, self.k = store, k
        self._reader = KnnReader(tuple(KnnRetriever(store, i, k) for i in range(store.num_layers)))

    @property
    def stored(self) -> int:
        return self.store.written

    @property
    def capacity(self) -> int:
        return self.store.config.capacity

    @property
    def policy(self) -> str:
        return self.store.config.policy

    def reader(self, queries: int | None = None) -> KnnReader:
        return self._reader

    def append(self, keys: jax.Array, values: jax.Array, valid: jax.Array) -> None:
        check_capacity(self.stored, valid.shape[1], self.capacity, self.policy)
        add_window(self.store, keys, values, valid)

    def save(self, path: str | os.PathLike) -> None:
        self.store.save(path)

    def load(self, path: str | os.PathLike) -> None:
        self.store.load(path)


def new_store(config: LlamaConfig, batch: int, memory_cfg: MemoryConfig, capacity: int | None = None) -> MemoryStore:
    """An empty store for `config`'s memory layers as `memory_cfg` says.

    capacity: tokens per row; default `memory_cfg.capacity`, which must then be set.
    """
    capacity = capacity or memory_cfg.capacity
    if not capacity:
        raise ValueError("the memory needs a capacity: pass capacity= or set MemoryConfig.capacity")
    if memory_cfg.backend == "faiss":
        index = KnnIndexConfig(**{**dict(memory_cfg.index), "capacity": capacity, "policy": memory_cfg.policy})
        knn = KnnMemoryStore(len(config.mem_layers), batch, config.kv_heads, config.head_size, index)
        return FaissStore(knn, memory_cfg.top_k)
    top_k = memory_cfg.top_k if memory_cfg.backend == "topk" else None
    return DenseStore(config, batch, capacity, top_k=top_k, policy=memory_cfg.policy)
