"""Dictionary lookup (key-value retrieval) vs memory size: the FoT paper's memory benchmark (DESIGN §6).

For each memory size N (paper: 1K … 16M tokens) a document holds N tokens of definitions followed by
`query_len = 256` tokens of queries (`focused.data.synthetic`). The document is processed window by window; every
window before the queries only fills the memory, and the query windows are scored. A query counts as correct when
all of its value tokens are the argmax prediction; per-token accuracy is reported too.

Streaming keeps peak RAM bounded at any N: definitions are generated window by window from the document's
`[n_defs, 4]` key/value tables, logits are never kept (only the argmax of the query windows), and memory lives
where the backend puts it:

- `faiss` (sizes above `device_up_to`): a `KnnMemoryStore` (`focused.memory.knn`) per batch of documents, top-k
  neighbours per query (paper: exact FAISS, k = 32); `index.values_path` puts the key/value payload in memmaps;
- `topk` / `dense` on the device (`focused.memory.dense`): used for the `faiss` backend too up to `device_up_to`
  tokens, as exact top-k, which returns what a flat FAISS index returns.

While filling the memory, the last memory layer reads no memory: the keys/values a layer stores come from its
input, which only earlier layers shape, and that layer's output only feeds logits that are thrown away. With one
memory layer (the paper's small models) filling is therefore a plain forward of the layers below it; the query
windows run the full model with every memory layer reading the memory. A model without memory layers (the
plain-transformer baseline) only runs the windows it is scored on, since nothing carries across windows.
"""

from __future__ import annotations

import dataclasses
import functools
import resource
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from focused.config import checked_fields
from focused.data.synthetic import DictionaryDocument, DictionaryTaskConfig, make_document
from focused.memory.backends import MemoryConfig
from focused.memory.dense import DenseMemoryState, append_window, check_capacity, init_memory, memory_blocks
from focused.memory.faiss_index import KnnIndexConfig
from focused.memory.knn import KnnRetriever, add_window, new_store
from focused.model.llama import LlamaForCausalLM

PAPER_SIZES = tuple(2**i for i in range(10, 25, 2))  # 1K, 4K, 16K, 64K, 256K, 1M, 4M, 16M


@dataclasses.dataclass(frozen=True)
class DictionaryEvalConfig:
    """`config.dictionary` of an eval config.

    sizes: memory sizes N (tokens of definitions before the queries).   trials: documents per size (25 queries
    each with the paper's task).   seed: documents are a function of (seed, N, trial).
    device_up_to: with the faiss backend, sizes up to this run on the device as exact top-k (same neighbours).
    window: tokens per window (0 = the model's max_position_embeddings).
    max_batch_tokens: documents of one size are batched while rows * (N + query_len) stays within this.
    task: `DictionaryTaskConfig` fields (letters, key/value length, query_len, id offset) as used in training.
    """

    sizes: tuple[int, ...] = PAPER_SIZES
    trials: int = 4
    seed: int = 0
    device_up_to: int = 16384
    window: int = 0
    max_batch_tokens: int = 1 << 20
    task: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DictionaryEvalConfig:
        fields = checked_fields(cls, values, "config.dictionary")
        if "sizes" in fields:
            fields["sizes"] = tuple(fields["sizes"])
        return cls(**fields)


def evaluate_dictionary_from_config(
    model: LlamaForCausalLM, dictionary: Mapping[str, Any], memory: Mapping[str, Any], *, progress: bool = False
) -> dict[str, Any]:
    """`evaluate_dictionary` driven by the `config.dictionary` and `config.memory` sections of an eval config."""
    cfg = DictionaryEvalConfig.from_dict(dictionary)
    return evaluate_dictionary(
        model,
        cfg.sizes,
        MemoryConfig.from_dict(memory),
        seed=cfg.seed,
        trials=cfg.trials,
        task=DictionaryTaskConfig.from_dict(cfg.task),
        device_up_to=cfg.device_up_to,
        window=cfg.window,
        max_batch_tokens=cfg.max_batch_tokens,
        progress=progress,
    )


def evaluate_dictionary(
    model: LlamaForCausalLM,
    sizes: Sequence[int] = PAPER_SIZES,
    memory_cfg: MemoryConfig | None = None,
    seed: int = 0,
    trials: int = 4,
    *,
    task: DictionaryTaskConfig | None = None,
    device_up_to: int = 16384,
    window: int = 0,
    max_batch_tokens: int = 1 << 20,
    progress: bool = False,
) -> dict[str, Any]:
    """Query accuracy of `model` for each memory size in `sizes`.

    Args:
      model: a (FoT) model trained on the task with the same `task` settings (token id offset included).
      sizes: memory sizes N, tokens of definitions before the `task.query_len` tokens of queries.
      memory_cfg: the memory backend (default: FAISS flat, k = 32, the paper's inference setting).
      seed, trials: documents per size; document t of size N is drawn from `(seed, N, t)`.
      task: the task layout (default: the paper's, offset 0).
      device_up_to: the faiss backend runs sizes up to this many tokens as exact top-k on the device.
      window: tokens per window, 0 = `model.config.max_position_embeddings`. Windows are aligned to the end of the
        document (the first window is left-padded), so the queries fill the last window(s).
      max_batch_tokens: batch documents of one size while `rows * (N + query_len) <= max_batch_tokens`.
    Returns:
      A JSON-serialisable dict: the settings, and `results`, one entry per size with `memory_tokens`,
      `definitions`, `queries`, `accuracy` (all value tokens right), `token_accuracy`, `backend`, `seconds`
      and `peak_rss_gib` (the process's peak resident memory so far).
    """
    task = task or DictionaryTaskConfig()
    memory_cfg = memory_cfg or MemoryConfig(backend="faiss", top_k=32, index={"index_type": "flat"})
    task.check_vocab(model.config.vocab_size, "the model")
    window = window or model.config.max_position_embeddings
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"dictionary eval trials must be a positive int, got {trials!r}")
    if not sizes:
        raise ValueError("dictionary eval needs at least one memory size")
    for size in sizes:
        if not isinstance(size, int | np.integer) or size < 1 + task.item_len:
            raise ValueError(
                f"memory size {size!r} cannot hold one definition: use sizes >= {1 + task.item_len} tokens"
            )
    results = []
    for size in sizes:
        size = int(size)
        backend = _backend(model, memory_cfg, size, device_up_to)
        rows = max(1, min(trials, max_batch_tokens // (size + task.query_len)))
        start = time.perf_counter()
        flags = []
        for first in range(0, trials, rows):
            chunk = range(first, min(first + rows, trials))
            docs = [make_document(task, size, np.random.default_rng([seed, size, t])) for t in chunk]
            predictions, targets = score_documents(model, docs, memory_cfg, window, backend, progress=progress)
            flags.append(predictions == targets)
        hits = np.concatenate(flags)  # [trials, queries per document, value_len]
        results.append(
            {
                "memory_tokens": size,
                "definitions": (size - 1) // task.item_len,
                "queries": int(hits.shape[0] * hits.shape[1]),
                "accuracy": float(hits.all(axis=-1).mean()),
                "token_accuracy": float(hits.mean()),
                "backend": backend,
                "seconds": round(time.perf_counter() - start, 3),
                "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            }
        )
    return {
        "task": "dictionary",
        "window": window,
        "model_window": model.config.max_position_embeddings,
        "memory": {**dataclasses.asdict(memory_cfg), "index": dict(memory_cfg.index)},
        "device_up_to": device_up_to,
        "seed": seed,
        "trials": trials,
        "query_len": task.query_len,
        "results": results,
    }


def _backend(model: LlamaForCausalLM, cfg: MemoryConfig, size: int, device_up_to: int) -> str:
    """What runs size `size`: "local" (no memory layers), "faiss:<index_type>", "topk" or "dense"."""
    if not model.config.mem_layers:
        return "local"
    if cfg.backend == "faiss" and size > device_up_to:
        return f"faiss:{dict(cfg.index).get('index_type', 'flat')}"
    return "dense" if cfg.backend == "dense" else "topk"


@functools.partial(jax.jit, static_argnames=("graphdef", "top_k", "predict"), donate_argnames=("state",))
def _device_step(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    state: DenseMemoryState,
    input_ids: jax.Array,
    valid: jax.Array,
    top_k: int | None,
    predict: bool,
) -> tuple[jax.Array | None, DenseMemoryState]:
    """One window `[batch, W]` with on-device memory → (argmax `[batch, W]` if `predict`, memory with the window)."""
    model = nnx.merge(graphdef, params)
    blocks = memory_blocks(state, top_k)
    if not predict:  # filling: the last memory layer's read only feeds discarded logits
        blocks = (*blocks[:-1], None)
    out = model(input_ids, attention_mask=valid, memory=blocks)
    preds = out.logits.argmax(-1).astype(jnp.int32) if predict else None
    return preds, append_window(state, out.memory_kv, valid)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _local_step(graphdef: nnx.GraphDef, params: nnx.State, input_ids: jax.Array, valid: jax.Array) -> jax.Array:
    """One window `[batch, W]` of a model without memory → argmax `[batch, W]`."""
    return nnx.merge(graphdef, params)(input_ids, attention_mask=valid).logits.argmax(-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "memory", "predict"))
def _knn_step(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    input_ids: jax.Array,
    valid: jax.Array,
    memory: tuple[KnnRetriever | None, ...],
    predict: bool,
) -> tuple[jax.Array | None, jax.Array, jax.Array]:
    """One window `[batch, W]` searching FAISS → (argmax `[batch, W]` if `predict`, the window's raw keys and
    values `[mem_layers, batch, W, kv_heads, head_dim]` for the host to add)."""
    model = nnx.merge(graphdef, params)
    out = model(input_ids, attention_mask=valid, memory=memory)
    keys = jnp.stack([kv.keys for kv in out.memory_kv])
    values = jnp.stack([kv.values for kv in out.memory_kv])
    return (out.logits.argmax(-1).astype(jnp.int32) if predict else None), keys, values


def score_documents(
    model: LlamaForCausalLM,
    docs: Sequence[DictionaryDocument],
    memory_cfg: MemoryConfig,
    window: int = 0,
    backend: str | None = None,
    *,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Runs documents of one length as a batch, window by window (streamed, see the module docstring).

    window: tokens per window (0 = the model's).   backend: "local", "dense", "topk" or "faiss:<index_type>"
    (None: `memory_cfg.backend`). Returns (argmax predictions, true values), both `[batch, queries, value_len]`.
    """
    if len({doc.length for doc in docs}) != 1 or len({doc.task for doc in docs}) != 1:
        raise ValueError("score_documents needs documents of one length and one task layout")
    window = window or model.config.max_position_embeddings
    backend = backend or _backend(model, memory_cfg, docs[0].defs_len, -1)
    if backend not in ("local", "dense", "topk") and not backend.startswith("faiss"):
        raise ValueError(f"unknown dictionary eval backend {backend!r}; use local, dense, topk or faiss:<index_type>")
    n_mem = len(model.config.mem_layers)
    backend = backend if n_mem else "local"  # a model without memory layers has nothing to remember
    batch, length = len(docs), docs[0].length
    pad = (-length) % window  # left padding: the document ends exactly at a window boundary
    n_windows = (length + pad) // window
    capacity = memory_cfg.capacity or n_windows * window
    graphdef, params = nnx.split(model)
    state, store, retrievers = None, None, ()
    if backend.startswith("faiss"):
        index = KnnIndexConfig(**{**dict(memory_cfg.index), "capacity": capacity, "policy": memory_cfg.policy})
        store = new_store(model, batch, index)
        retrievers = tuple(KnnRetriever(store, i, memory_cfg.top_k) for i in range(n_mem))
    elif backend != "local":
        state = init_memory(model.config, batch, capacity)
    top_k = memory_cfg.top_k if backend == "topk" else None
    found: list[list[np.ndarray]] = [[] for _ in docs]
    truth: list[list[np.ndarray]] = [[] for _ in docs]
    written = 0
    bar = tqdm(range(n_windows), desc=f"dictionary {docs[0].defs_len}", disable=not progress, unit="win")
    for w in bar:
        pos = w * window - pad + np.arange(window)
        scored = np.stack([doc.is_query_value(pos + 1) for doc in docs])  # [batch, W]: target is a query value
        predict = bool(scored.any())
        if backend == "local" and not predict:
            continue  # nothing carries across windows without memory layers
        ids = jnp.asarray(np.stack([doc.tokens(pos) for doc in docs]))
        valid = jnp.asarray(np.broadcast_to(pos >= 0, (batch, window)))
        if store is not None:
            memory = retrievers if predict else (*retrievers[:-1], None)
            preds, keys, values = _knn_step(graphdef, params, ids, valid, memory, predict)
            add_window(store, keys, values, valid)
        elif state is not None:
            check_capacity(written, window, capacity, memory_cfg.policy)
            preds, state = _device_step(graphdef, params, state, ids, valid, top_k, predict)
            written += window
        else:
            preds = _local_step(graphdef, params, ids, valid)
        if predict:
            preds, targets = np.asarray(preds), np.stack([doc.tokens(pos + 1) for doc in docs])
            for row in range(batch):
                found[row].append(preds[row, scored[row]])
                truth[row].append(targets[row, scored[row]])
    shape = (batch, -1, docs[0].task.value_len)
    predictions = np.stack([np.concatenate(r) for r in found]).reshape(shape)
    return predictions, np.stack([np.concatenate(r) for r in truth]).reshape(shape)
