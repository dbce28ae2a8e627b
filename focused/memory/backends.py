"""One memory interface, three backends, chosen in the config (`MemoryConfig`):

- `dense`: all memory keys/values on the device in `mem_dtype`, preallocated; exact attention over all of it
  (LongLLaMA's default);
- `topk`: the same buffer, but each query keeps only its `top_k` best memory scores (exact kNN on device);
- `faiss`: per (memory layer, batch row, kv head) a FAISS index on the host, searched from inside `jax.jit`
  (`focused.memory.knn`); for memories that do not fit the device (the 16M-token key-value eval).

`run_long(model, ids, mask, cfg)` processes a long input window by window with the chosen backend and returns
the logits; all three call the same memory-attention core.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from focused.config import checked_fields
from focused.memory.dense import POLICIES, forward_long
from focused.memory.index_config import KnnIndexConfig
from focused.memory.knn import forward_long_knn, new_store
from focused.model.llama import LlamaForCausalLM

BACKENDS = ("dense", "topk", "faiss")


@dataclasses.dataclass(frozen=True)
class MemoryConfig:
    """`config.memory` for inference and evals.

    backend: "dense", "topk" or "faiss".   top_k: neighbours per query for topk / faiss (paper: 32 at inference).
    capacity: memory tokens per batch row (0 = as many as the input needs).   policy: "error" or "drop_oldest".
    index: FAISS settings (`KnnIndexConfig` fields: index_type, nlist, nprobe, ...), faiss backend only.
    """

    backend: str = "dense"
    top_k: int = 32
    capacity: int = 0
    policy: str = "error"
    index: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown memory backend {self.backend!r}; use one of {BACKENDS}")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown memory capacity policy {self.policy!r}; use one of {POLICIES}")
        if self.top_k < 1:
            raise ValueError(f"memory top_k must be >= 1, got {self.top_k}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MemoryConfig:
        return cls(**checked_fields(cls, values, "config.memory"))


def run_long(
    model: LlamaForCausalLM,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    cfg: MemoryConfig,
    *,
    progress: bool = False,
) -> np.ndarray:
    """Logits `[batch, n, vocab]` of a long input processed window by window with the configured memory."""
    batch, n = np.shape(input_ids)
    window = model.config.max_position_embeddings
    capacity = cfg.capacity or max(-(-n // window) * window, window)
    if cfg.backend == "faiss":
        index = KnnIndexConfig(**{**dict(cfg.index), "capacity": capacity, "policy": cfg.policy})
        store = new_store(model, batch, index)
        return forward_long_knn(model, input_ids, store, cfg.top_k, attention_mask, progress=progress)
    top_k = cfg.top_k if cfg.backend == "topk" else None
    logits, _ = forward_long(
        model, input_ids, attention_mask, capacity=capacity, policy=cfg.policy, top_k=top_k, progress=progress
    )
    return np.asarray(logits)
