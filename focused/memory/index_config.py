"""How the kNN memory indexes its keys (DESIGN §3, kNN variant): `KnnIndexConfig` and the FAISS indexes it builds.

`KnnMemoryStore` (faiss_index.py) holds one index per (memory layer, batch row, kv head); this module decides what
each index is: exact flat (float32 or float16 codes), IVF (trained once `train_size` keys have arrived) or HNSW, and
whether it lives on a GPU.
"""

from __future__ import annotations

import dataclasses
import warnings

import faiss
import jax
import numpy as np

INDEX_TYPES = ("flat", "flat_fp16", "ivf_flat", "ivf_sq8", "ivf_fp16", "hnsw")
POLICIES = ("error", "drop_oldest")
PAYLOAD_DTYPES = ("float32", "float16")


@dataclasses.dataclass(frozen=True)
class KnnIndexConfig:
    """How the kNN memory indexes its keys.

    index_type: "flat" (exact IndexFlatIP), "flat_fp16" (exact search over float16-rounded keys, half the RAM of
      flat: an IndexScalarQuantizer, CPU only), "ivf_flat", "ivf_sq8", "ivf_fp16" (IVF, raw / 8-bit / fp16 codes)
      or "hnsw" (IndexHNSWFlat).
    nlist, nprobe: IVF lists, and lists scanned per query.   hnsw_m, ef_search: HNSW graph degree, search beam.
    train_size: valid keys an IVF index collects (searched exactly meanwhile) before it is trained on them.
    use_gpu: "auto" (faiss-gpu when JAX runs on a GPU), True or False; without faiss GPU support → CPU + a warning.
    values_path: directory for `np.memmap` payload files instead of RAM (None: RAM).
    capacity: tokens kept per batch row.   policy: "error" or "drop_oldest" (removes the oldest ids).
    payload_dtype: storage of the returned key/value copies, "float32" or "float16" (the index keeps float32).
    num_threads: OpenMP threads for FAISS (None: all cores this process may use). When other busy processes share
      the cores, use fewer: spinning OpenMP threads then made flat search 10-30x slower (bench/RESULTS.md, section 3).
    """

    index_type: str = "flat"
    nlist: int = 1024
    nprobe: int = 32
    hnsw_m: int = 32
    ef_search: int = 64
    train_size: int = 65536
    use_gpu: bool | str = "auto"
    values_path: str | None = None
    capacity: int = 65536
    policy: str = "error"
    payload_dtype: str = "float32"
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"unknown index_type {self.index_type!r}; use one of {INDEX_TYPES}")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown memory capacity policy {self.policy!r}; use one of {POLICIES}")
        if self.payload_dtype not in PAYLOAD_DTYPES:
            raise ValueError(f"unknown payload_dtype {self.payload_dtype!r}; use one of {PAYLOAD_DTYPES}")
        if self.use_gpu not in ("auto", True, False):
            raise ValueError(f"use_gpu must be 'auto', True or False, got {self.use_gpu!r}")
        for name in ("nlist", "nprobe", "hnsw_m", "ef_search", "train_size", "capacity"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be positive or None, got {self.num_threads}")
        if self.is_ivf and self.train_size < self.nlist:
            raise ValueError(f"train_size {self.train_size} is smaller than nlist {self.nlist}: k-means needs more")
        if self.policy == "drop_oldest" and self.index_type == "hnsw":
            raise ValueError("policy 'drop_oldest' needs remove_ids, which FAISS HNSW lacks: use flat or ivf_*")
        if self.use_gpu is True and (self.index_type in ("hnsw", "flat_fp16") or self.policy == "drop_oldest"):
            raise ValueError(
                "FAISS GPU indexes support neither hnsw, flat_fp16 nor remove_ids (drop_oldest): set use_gpu=False"
            )

    @property
    def is_ivf(self) -> bool:
        return self.index_type.startswith("ivf")


def empty_index(config: KnnIndexConfig, dim: int) -> faiss.Index:
    """A fresh index; for IVF types the exact buffer used until training (`trained_ivf` builds the real one)."""
    if config.index_type == "hnsw":
        return faiss.IndexIDMap(faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT))
    if config.index_type == "flat_fp16":
        return faiss.IndexIDMap(
            faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        )
    return faiss.IndexIDMap(faiss.IndexFlatIP(dim))


def trained_ivf(config: KnnIndexConfig, keys: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """keys `[n, dim]` float32 (n >= train_size), ids `[n]` → an IVF index trained on the first train_size keys."""
    dim = keys.shape[1]
    quantizer = faiss.IndexFlatIP(dim)
    if config.index_type == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, dim, config.nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        qtype = faiss.ScalarQuantizer.QT_8bit if config.index_type == "ivf_sq8" else faiss.ScalarQuantizer.QT_fp16
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, config.nlist, qtype, faiss.METRIC_INNER_PRODUCT)
    index.train(keys[: config.train_size])
    index.add_with_ids(keys, ids)
    return index


def flat_contents(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """An IndexIDMap(IndexFlatIP) → (keys `[n, dim]` float32, ids `[n]` int64), copies."""
    inner = faiss.downcast_index(index.index)
    keys = faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * inner.d).reshape(inner.ntotal, inner.d).copy()
    return keys, faiss.vector_to_array(index.id_map).copy()


def use_gpu(config: KnnIndexConfig) -> bool:
    """Resolves `use_gpu`; warns once (per store) and returns False when FAISS cannot reach a GPU."""
    if config.use_gpu is False:
        return False
    if config.use_gpu == "auto" and (
        jax.default_backend() != "gpu" or config.index_type in ("hnsw", "flat_fp16") or config.policy == "drop_oldest"
    ):
        return False
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        warnings.warn("FAISS has no GPU support here (install faiss-gpu-cu12): kNN memory stays on CPU", stacklevel=3)
        return False
    return True
