"""Host-side kNN memory (DESIGN §3, kNN variant): FAISS inner-product indexes plus the keys/values they point to.

One FAISS index per (memory layer, batch row, kv head) holds the `head_dim`-dim float32 keys of that head. Every
stored token has an id: its position in the row's token stream (0, 1, 2, ... over all `add` calls, padding
included), so ids are aligned across layers, rows and heads and survive eviction. The payload returned with each
neighbour (a copy of the key and the value) lives in ring buffers `[layers, batch, capacity, kv_heads, head_dim]`
at slot `id % capacity`, in RAM or in `np.memmap` files (`values_path`).

Padding is remembered but never retrieved: masked tokens take an id and a payload slot (with mask False), but are
NOT added to any index, so a search can never return them. Fewer than k hits are padded with id -1 / mask False.

IVF indexes need training: the first `train_size` valid keys of an index go to an exact flat buffer that is
searched exactly; once it holds `train_size` keys the IVF index is trained on them, they are moved in, and the
buffer is dropped. `add` is a host call, made after each jitted window step (never inside it; see knn.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import threading
from pathlib import Path

import faiss
import numpy as np

from focused.memory.index_config import KnnIndexConfig, empty_index, flat_contents, trained_ivf, use_gpu

# Fields that may differ between a saved memory and the store loading it: search-time knobs and placement.
LOAD_FREE_FIELDS = ("nprobe", "ef_search", "use_gpu", "values_path", "num_threads")
FORMAT_VERSION = 1


def exact_search(
    queries: np.ndarray, keys: np.ndarray, ids: np.ndarray, k: int, chunk: int = 1 << 20
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k: queries `[n, d]`, keys `[m, d]`, ids `[m]` → (scores, ids) `[n, k]`.

    Sorted by decreasing score, padded with (-inf, -1) when m < k; keys are scanned `chunk` rows at a time.
    """
    n = queries.shape[0]
    best_s = np.full((n, k), -np.inf, np.float32)
    best_i = np.full((n, k), -1, np.int64)
    q = np.asarray(queries, np.float32)
    for start in range(0, keys.shape[0], chunk):
        s = q @ np.asarray(keys[start : start + chunk], np.float32).T
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, np.broadcast_to(ids[start : start + chunk], s.shape)], axis=1)
        top = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(all_s, top, 1), axis=1), 1)
        best_s, best_i = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
    return best_s, best_i


class KnnMemoryStore:
    """The kNN memory of one model: `num_layers` memory layers × `batch` rows × `kv_heads` FAISS indexes.

    Attributes:
      keys, values: `[num_layers, batch, capacity, kv_heads, head_dim]` payload ring buffers (payload_dtype).
      mask: `[batch, capacity]` bool, True where the slot holds a real token.
      written: tokens ever added per row (ids run from `max(0, written - capacity)` to `written - 1`).
      search_calls: number of `search` calls so far (lets tests count host callbacks).
    """

    def __init__(self, num_layers: int, batch: int, kv_heads: int, head_dim: int, config: KnnIndexConfig) -> None:
        for name, value in dict(num_layers=num_layers, batch=batch, kv_heads=kv_heads, head_dim=head_dim).items():
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        self.num_layers, self.batch, self.kv_heads, self.head_dim = num_layers, batch, kv_heads, head_dim
        self.config = config
        faiss.cvar.distance_compute_blas_threshold = 20  # default 128000 makes batched flat search ~5x slower
        faiss.omp_set_num_threads(config.num_threads or len(os.sched_getaffinity(0)))
        self._gpu = faiss.StandardGpuResources() if use_gpu(config) else None
        shape = (num_layers, batch, config.capacity, kv_heads, head_dim)
        self.keys = self._payload("keys", shape)
        self.values = self._payload("values", shape)
        self.mask = np.zeros((batch, config.capacity), bool)
        self.written = 0
        self.search_calls = 0
        self._lock = threading.RLock()
        self._trained = np.full(num_layers * batch * kv_heads, not config.is_ivf)
        self._indexes = [self._device(empty_index(config, head_dim), trained) for trained in self._trained]

    def _payload(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        dtype = np.dtype(self.config.payload_dtype)
        if self.config.values_path is None:
            return np.zeros(shape, dtype)
        Path(self.config.values_path).mkdir(parents=True, exist_ok=True)
        # files of their own, unlinked once mapped: stores sharing a values_path must not truncate each other's maps
        with tempfile.NamedTemporaryFile(dir=self.config.values_path, prefix=f"{name}-", suffix=".bin") as f:
            payload = np.memmap(f.name, dtype=dtype, mode="w+", shape=shape)
        return payload

    def _device(self, index: faiss.Index, trained: bool) -> faiss.Index:
        """Moves a trained index to the GPU when enabled (IVF training buffers stay on the host)."""
        return faiss.index_cpu_to_gpu(self._gpu, 0, index) if self._gpu is not None and trained else index

    def _host(self, slot: int) -> faiss.Index:
        """A host copy of index `slot` (the index itself on CPU)."""
        index = self._indexes[slot]
        return faiss.index_gpu_to_cpu(index) if self._gpu is not None and self._trained[slot] else index

    def _slot(self, layer: int, row: int, head: int) -> int:
        return (layer * self.batch + row) * self.kv_heads + head

    @property
    def size(self) -> int:
        """Tokens (padding included) currently stored per batch row."""
        return min(self.written, self.config.capacity)

    @property
    def oldest(self) -> int:
        """Id of the oldest token still stored."""
        return max(0, self.written - self.config.capacity)

    def add(self, keys: np.ndarray, values: np.ndarray, valid: np.ndarray) -> None:
        """Appends one window: keys/values `[layers, batch, seq, kv_heads, head_dim]`, valid `[batch, seq]` bool.

        Call from the host after each jitted step (with the step's returned keys/values), in window order.
        """
        keys, values, valid = np.asarray(keys, np.float32), np.asarray(values), np.asarray(valid).astype(bool)
        expect = (self.num_layers, self.batch, keys.shape[2] if keys.ndim == 5 else -1, self.kv_heads, self.head_dim)
        if keys.shape != expect or values.shape != expect:
            raise ValueError(f"keys {keys.shape} and values {values.shape} must both be {expect} (layers, batch, seq…)")
        seq, cap = expect[2], self.config.capacity
        if valid.shape != (self.batch, seq):
            raise ValueError(f"valid has shape {valid.shape}, expected (batch, seq) = {(self.batch, seq)}")
        with self._lock:
            if self.config.policy == "error" and self.written + seq > cap:
                raise ValueError(
                    f"memory capacity {cap} tokens exceeded ({self.written} stored + {seq} new): raise the capacity "
                    "or use the 'drop_oldest' policy"
                )
            keep = min(seq, cap)  # with drop_oldest, a window longer than the capacity keeps only its tail
            keys, values, valid = keys[:, :, seq - keep :], values[:, :, seq - keep :], valid[:, seq - keep :]
            self._evict(max(0, self.written + seq - cap))
            ids = np.arange(self.written + seq - keep, self.written + seq, dtype=np.int64)
            slots = ids % cap
            self.keys[:, :, slots] = keys
            self.values[:, :, slots] = values
            self.mask[:, slots] = valid
            for row in range(self.batch):
                if not valid[row].any():
                    continue
                row_keys = keys[:, row] if valid[row].all() else keys[:, row, valid[row]]  # [layers, n, kv_heads, dim]
                for layer in range(self.num_layers):
                    for head in range(self.kv_heads):
                        x = np.ascontiguousarray(row_keys[layer, :, head])
                        self._add_one(self._slot(layer, row, head), x, ids[valid[row]])
            self.written += seq

    def _add_one(self, slot: int, keys: np.ndarray, ids: np.ndarray) -> None:
        index = self._indexes[slot]
        index.add_with_ids(keys, ids)
        if not self._trained[slot] and index.ntotal >= self.config.train_size:
            self._indexes[slot] = self._device(trained_ivf(self.config, *flat_contents(index)), True)
            self._trained[slot] = True

    def _evict(self, new_oldest: int) -> None:
        """Removes ids in [oldest, new_oldest) from every index (drop_oldest)."""
        if new_oldest <= self.oldest:
            return
        selector = faiss.IDSelectorRange(self.oldest, new_oldest)
        for index in self._indexes:
            index.remove_ids(selector)

    def _search_one(self, slot: int, queries: np.ndarray, k: int) -> np.ndarray:
        """queries `[n, head_dim]` float32 → neighbour ids `[n, k]` int64 (-1 where fewer than k)."""
        index = self._indexes[slot]
        if index.ntotal == 0:
            return np.full((queries.shape[0], k), -1, np.int64)
        params = None
        if self._trained[slot] and self.config.is_ivf:
            params = faiss.SearchParametersIVF(nprobe=min(self.config.nprobe, self.config.nlist))
        elif self.config.index_type == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.config.ef_search, k))
        return index.search(queries, k, params=params)[1]

    def search(
        self, queries: np.ndarray, k: int, layer: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Top-k memory entries by inner product for every query.

        Args:
          queries: `[layers, batch, seq, heads, head_dim]`; query head h searches kv head h // (heads // kv_heads).
            With `layer` given, `[1, batch, seq, heads, head_dim]`: the queries of that one memory layer (a model
            runs its memory layers one after another, each searching its own indexes).
          k: neighbours per query.
        Returns:
          keys, values `[layers, batch, seq, heads, k, head_dim]` (payload_dtype, zeros where masked),
          mask `[layers, batch, seq, heads, k]` bool, ids `[layers, batch, seq, heads, k]` int64 (-1 where masked);
          neighbours are sorted by decreasing inner product.
        """
        queries = np.asarray(queries, np.float32)
        n_layers = self.num_layers if layer is None else 1
        if layer is not None and not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} is outside the store's {self.num_layers} memory layers")
        if queries.ndim != 5 or queries.shape[:2] != (n_layers, self.batch) or queries.shape[4] != self.head_dim:
            raise ValueError(
                f"queries have shape {queries.shape}, expected ({n_layers}, {self.batch}, seq, heads, {self.head_dim})"
            )
        layers, batch, seq, heads, dim = queries.shape
        if heads % self.kv_heads:
            raise ValueError(f"{heads} query heads cannot share {self.kv_heads} key/value heads")
        if not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        group = heads // self.kv_heads
        ids = np.full((layers, batch, seq, heads, k), -1, np.int64)
        out_keys = np.zeros((*ids.shape, dim), self.keys.dtype)
        out_values = np.zeros((*ids.shape, dim), self.values.dtype)
        with self._lock:
            self.search_calls += 1
            for out_layer in range(layers):
                store_layer = out_layer if layer is None else layer
                for row in range(batch):
                    for head in range(self.kv_heads):
                        heads_of = slice(head * group, (head + 1) * group)
                        x = np.ascontiguousarray(queries[out_layer, row, :, heads_of].reshape(seq * group, dim))
                        slot = self._slot(store_layer, row, head)
                        found = self._search_one(slot, x, k).reshape(seq, group, k)
                        slots = np.where(found >= 0, found % self.config.capacity, 0)
                        ids[out_layer, row, :, heads_of] = found
                        out_keys[out_layer, row, :, heads_of] = self.keys[store_layer, row, slots, head]
                        out_values[out_layer, row, :, heads_of] = self.values[store_layer, row, slots, head]
        mask = ids >= 0
        out_keys[~mask] = 0
        out_values[~mask] = 0
        return out_keys, out_values, mask, ids

    def recall_at_k(self, queries: np.ndarray, k: int) -> float:
        """Fraction of the exact top-k (brute force over the payload keys) that `search` also returns.

        queries: `[layers, batch, seq, heads, head_dim]`. With a float16 payload "exact" is over the rounded keys.
        """
        approx = self.search(queries, k)[3]
        queries = np.asarray(queries, np.float32)
        group = queries.shape[3] // self.kv_heads
        hits = total = 0
        with self._lock:
            ids = np.arange(self.oldest, self.written, dtype=np.int64)
            for layer in range(self.num_layers):
                for row in range(self.batch):
                    kept = ids[self.mask[row, ids % self.config.capacity]]
                    for head in range(self.kv_heads):
                        q = queries[layer, row, :, head * group : (head + 1) * group].reshape(-1, self.head_dim)
                        keys = self.keys[layer, row, kept % self.config.capacity, head]
                        exact = exact_search(q, keys, kept, k)[1]
                        got = approx[layer, row, :, head * group : (head + 1) * group].reshape(-1, k)
                        hits += int(((got[:, :, None] == exact[:, None, :]) & (exact[:, None, :] >= 0)).sum())
                        total += int((exact >= 0).sum())
        return hits / max(total, 1)

    def _header(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "num_layers": self.num_layers,
            "batch": self.batch,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "config": dataclasses.asdict(self.config),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Writes `path/`: one `index_<slot>.faiss` per index, keys/values/mask `.npy`, and `header.json` (last)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with self._lock:
            for slot in range(len(self._indexes)):
                faiss.write_index(self._host(slot), str(path / f"index_{slot}.faiss"))
            np.save(path / "keys.npy", self.keys)
            np.save(path / "values.npy", self.values)
            np.save(path / "mask.npy", self.mask)
            header = self._header() | {"written": self.written, "trained": self._trained.tolist()}
            (path / "header.json").write_text(json.dumps(header, indent=1))

    def load(self, path: str | os.PathLike) -> None:
        """Replaces this store's contents with a memory saved by `save`; shape and config must match.

        Only the search-time / placement fields in `LOAD_FREE_FIELDS`, and fields the index type does not use (nlist,
        train_size for non-IVF; hnsw_m for non-HNSW), may differ; this store's values are used.
        """
        path = Path(path)
        if not (path / "header.json").is_file():
            raise ValueError(f"{path} holds no saved kNN memory (header.json missing)")
        saved = json.loads((path / "header.json").read_text())
        mine = self._header()
        for name in ("format_version", "num_layers", "batch", "kv_heads", "head_dim"):
            if saved.get(name) != mine[name]:
                raise ValueError(f"saved memory has {name}={saved.get(name)}, this store has {name}={mine[name]}")
        for name, value in mine["config"].items():
            unused = (name in ("nlist", "train_size") and not self.config.is_ivf) or (
                name == "hnsw_m" and self.config.index_type != "hnsw"
            )
            if name not in LOAD_FREE_FIELDS and not unused and saved["config"].get(name) != value:
                raise ValueError(
                    f"saved memory has config.{name}={saved['config'].get(name)!r}, this store has {value!r}"
                )
        with self._lock:
            self._trained = np.array(saved["trained"], bool)
            self._indexes = [
                self._device(faiss.read_index(str(path / f"index_{slot}.faiss")), bool(trained))
                for slot, trained in enumerate(self._trained)
            ]
            self.keys[...] = np.load(path / "keys.npy", mmap_mode="r")
            self.values[...] = np.load(path / "values.npy", mmap_mode="r")
            self.mask[...] = np.load(path / "mask.npy")
            self.written = int(saved["written"])
