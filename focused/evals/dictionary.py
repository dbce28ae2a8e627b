"""Dictionary lookup (key-value retrieval) vs memory size: the FoT paper's memory benchmark (DESIGN §6).

For each memory size N (tokens of definitions, a multiple of the task's `page_len`; default 64 … 16M) a document
holds N / page_len pages of definitions followed by the task's query pages (`focused.data.synthetic`). The
document is processed window by window: windows before the queries only fill the memory, the query windows are
scored. A query counts as correct when all of its value tokens are the argmax prediction.

Keys are uniformly random and distinct, so beyond a few thousand tokens no partial key identifies a definition
(with the default 3-letter keys over 256 letters, each pair of letters is shared by ~50 definitions at 16M tokens).

Streaming keeps peak RAM bounded at any N: definitions are generated page by page from the document's key/value
tables, logits are never kept (only the argmax of the query windows), and memory lives where the backend puts it:

- `faiss` (sizes above `device_up_to`): a `KnnMemoryStore` (`focused.memory.knn`) per batch of documents, top-k
  neighbours per query (paper: exact FAISS, k = 32); `index.values_path` puts the key/value payload in memmaps;
- `topk` / `dense` on the device (`focused.memory.dense`): used for the `faiss` backend too up to `device_up_to`
  tokens, as exact top-k, which returns what a flat FAISS index returns.

Filling is batched. The keys/values a memory layer stores come from its input, which only the layers below it
shape; with one memory layer (the paper's small models) no layer below reads memory, so every filling window is
independent and many run as one batch (`fill_tokens` tokens per call). With several memory layers the windows
run one after another, each reading the memory of the earlier ones. The query windows always run in order with
every memory layer reading the memory. A model without memory layers (the plain-transformer baseline) only runs
the windows it is scored on, since nothing carries across windows.
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
from focused.data.synthetic import DictionaryDocument, DictionaryTaskConfig, key_free_accuracy, make_document
from focused.memory.backends import MemoryConfig
from focused.memory.dense import DenseMemoryState, append_window, check_capacity, init_memory, memory_blocks
from focused.memory.index_config import KnnIndexConfig
from focused.memory.knn import KnnRetriever, add_window, new_store
from focused.memory.prefix import as_documents
from focused.model.attention import WindowKV
from focused.model.graph import StaticGraph, merge, split_static
from focused.model.llama import LlamaForCausalLM

EVAL_STREAM = 0x5EED  # eval documents draw from (seed, EVAL_STREAM, N, trial): never a training document
DEFAULT_SIZES = tuple(64 * 4**i for i in range(10))  # 64 … 16,777,216 tokens (powers of 4 pages of 64)


@dataclasses.dataclass(frozen=True)
class DictionaryEvalConfig:
    """`config.dictionary` of an eval config.

    sizes: memory sizes N (tokens of definitions before the queries; multiples of the task's page_len).
    trials: documents per size.   seed: documents are a function of (seed, N, trial); keep it apart from training.
    trial_tokens: caps the documents of a size at max(1, trial_tokens // N) (0 = no cap), so that the largest
      memories (16M tokens: ~2-3 minutes a document on 2 CPU cores) run fewer documents: 1 at 16M, 4 at 4M.
    device_up_to: with the faiss backend, sizes up to this run on the device as exact top-k (same neighbours).
    window: tokens per window (0 = the model's max_position_embeddings).
    max_batch_tokens: documents of one size are batched while rows * (N + queries) stays within this.
    fill_tokens: tokens per batched filling call (single memory layer models).
    task: `DictionaryTaskConfig` fields overriding the layout stored with the checkpoint (`dictionary_task.json`);
      unset (None) fields keep the checkpoint's.
    """

    sizes: tuple[int, ...] = DEFAULT_SIZES
    trials: int = 8
    trial_tokens: int = 1 << 24
    seed: int = 1000
    device_up_to: int = 65536
    window: int = 0
    max_batch_tokens: int = 1 << 21
    fill_tokens: int = 1 << 16
    task: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DictionaryEvalConfig:
        fields = checked_fields(cls, values, "config.dictionary")
        if "sizes" in fields:
            fields["sizes"] = tuple(int(s) for s in fields["sizes"])
        return cls(**fields)


def evaluate_dictionary_from_config(
    model: LlamaForCausalLM,
    dictionary: Mapping[str, Any],
    memory: Mapping[str, Any],
    *,
    task: DictionaryTaskConfig | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """`evaluate_dictionary` driven by the `config.dictionary` and `config.memory` sections of an eval config.

    task: the checkpoint's own layout (`focused.data.synthetic.load_task`); fields set in `config.dictionary.task`
      override it.
    """
    cfg = DictionaryEvalConfig.from_dict(dictionary)
    overrides = {k: v for k, v in dict(cfg.task).items() if v is not None}
    if task is None and not overrides:
        raise ValueError(
            "the checkpoint carries no dictionary task layout (dictionary_task.json): set the fields of "
            "config.dictionary.task to the training config's config.data.synthetic"
        )
    base = dataclasses.asdict(task) if task is not None else {}
    task = DictionaryTaskConfig.from_dict({**base, **overrides})
    return evaluate_dictionary(
        model,
        cfg.sizes,
        MemoryConfig.from_dict(memory),
        seed=cfg.seed,
        trials=cfg.trials,
        trial_tokens=cfg.trial_tokens,
        task=task,
        device_up_to=cfg.device_up_to,
        window=cfg.window,
        max_batch_tokens=cfg.max_batch_tokens,
        fill_tokens=cfg.fill_tokens,
        progress=progress,
    )


def evaluate_dictionary(
    model: LlamaForCausalLM,
    sizes: Sequence[int] = DEFAULT_SIZES,
    memory_cfg: MemoryConfig | None = None,
    seed: int = 1000,
    trials: int = 8,
    *,
    trial_tokens: int = 0,
    task: DictionaryTaskConfig | None = None,
    device_up_to: int = 65536,
    window: int = 0,
    max_batch_tokens: int = 1 << 21,
    fill_tokens: int = 1 << 16,
    progress: bool = False,
) -> dict[str, Any]:
    """Query accuracy of `model` for each memory size in `sizes`.

    Args:
      model: a model trained on the task with the same `task` layout (token id offset included).
      sizes: memory sizes N, tokens of definitions (multiples of `task.page_len`) before the query pages.
      memory_cfg: the memory backend (default: FAISS flat, k = 32, the paper's inference setting).
      seed, trials: documents per size; document t of size N is drawn from `(seed, EVAL_STREAM, N, t)`.
      trial_tokens: at most max(1, trial_tokens // N) documents of size N (0 = always `trials`).
      task: the task layout (default: `DictionaryTaskConfig()`).
      device_up_to: the faiss backend runs sizes up to this many tokens as exact top-k on the device.
      window: tokens per window, 0 = `model.config.max_position_embeddings` (a multiple of `task.page_len`).
        Windows are aligned to the end of the document, so the queries fill the last window(s).
      max_batch_tokens: batch documents of one size while `rows * (N + query tokens) <= max_batch_tokens`.
      fill_tokens: tokens per batched filling call.
    Returns:
      A JSON-serialisable dict: the settings, `key_free_accuracy` (best guessing without keys, full pages), and
      `results`, one entry per size with `memory_tokens`, `definitions`, `queries`, `accuracy` (all value tokens
      right), `token_accuracy`, `backend`, `seconds` and `peak_rss_gib` (the process's peak resident memory).
    """
    task = task or DictionaryTaskConfig()
    memory_cfg = memory_cfg or MemoryConfig(backend="faiss", top_k=32, index={"index_type": "flat"})
    task.check_vocab(model.config.vocab_size, "the model")
    window = window or model.config.max_position_embeddings
    if window % task.page_len:
        raise ValueError(f"window {window} is not a multiple of the task's page_len {task.page_len}")
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"config.dictionary.trials must be a positive int, got {trials!r}")
    if not isinstance(trial_tokens, int) or trial_tokens < 0:
        raise ValueError(f"config.dictionary.trial_tokens must be a non-negative int, got {trial_tokens!r}")
    if not sizes:
        raise ValueError("config.dictionary.sizes is empty: give at least one memory size")
    for size in sizes:
        if not isinstance(size, int | np.integer) or size < task.page_len or size % task.page_len:
            raise ValueError(
                f"memory size {size!r} is not a positive multiple of the task's page_len {task.page_len}: "
                "use whole pages of definitions"
            )
        if size > task.max_memory_tokens:
            raise ValueError(
                f"memory size {size} needs more distinct keys than {task.key_letters}**{task.key_len}: at most "
                f"{task.max_memory_tokens} tokens"
            )
    results = []
    for size in sizes:
        size = int(size)
        backend = _backend(model, memory_cfg, size, device_up_to)
        doc_tokens = size + task.query_pages * task.page_len
        docs_here = min(trials, max(1, trial_tokens // size)) if trial_tokens else trials
        rows = max(1, min(docs_here, max_batch_tokens // doc_tokens))
        start = time.perf_counter()
        flags = []
        for first in range(0, docs_here, rows):
            chunk = range(first, min(first + rows, docs_here))
            rngs = [np.random.default_rng([seed, EVAL_STREAM, size, t]) for t in chunk]
            docs = [make_document(task, size // task.page_len, rng) for rng in rngs]
            predictions, targets = score_documents(
                model, docs, memory_cfg, window, backend, fill_tokens=fill_tokens, progress=progress
            )
            flags.extend(np.all(p == t, axis=-1) for p, t in zip(predictions, targets, strict=True))
        hits = np.concatenate(flags)  # [queries]
        token_hits = np.concatenate([f.ravel() for f in flags])
        results.append(
            {
                "memory_tokens": size,
                "definitions": size // task.page_len * task.items_per_page,
                "trials": docs_here,
                "queries": len(hits),
                "accuracy": float(hits.mean()),
                "token_accuracy": float(token_hits.mean()),
                "key_free_accuracy": round(
                    key_free_accuracy(task, size // task.page_len * task.items_per_page, training=False), 5
                ),
                "backend": backend,
                "seconds": round(time.perf_counter() - start, 3),
                "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            }
        )
    return {
        "task": "dictionary",
        "layout": dataclasses.asdict(task),
        "window": window,
        "model_window": model.config.max_position_embeddings,
        "memory": {**dataclasses.asdict(memory_cfg), "index": dict(memory_cfg.index)},
        "device_up_to": device_up_to,
        "seed": seed,
        "trials": trials,
        "trial_tokens": trial_tokens,
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
    graphdef: StaticGraph,
    params: nnx.State,
    state: DenseMemoryState,
    input_ids: jax.Array,
    valid: jax.Array,
    top_k: int | None,
    predict: bool,
) -> tuple[jax.Array | None, DenseMemoryState]:
    """One window `[batch, W]` with on-device memory → (argmax `[batch, W]` if `predict`, memory with the window)."""
    model = merge(graphdef, params)
    blocks = memory_blocks(state, top_k)
    if not predict:  # filling: the last memory layer's read only feeds discarded logits
        blocks = (*blocks[:-1], None)
    out = model(input_ids, attention_mask=valid, memory=blocks)
    preds = out.logits.argmax(-1).astype(jnp.int32) if predict else None
    return preds, append_window(state, out.memory_kv, valid)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _fill_kv(graphdef: StaticGraph, params: nnx.State, input_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Many filling windows of a single-memory-layer model at once: input_ids `[batch, n, W]` → the memory
    layer's raw keys, values `[1, batch, n * W, kv_heads, head_dim]` (the layers below read no memory)."""
    docs = input_ids.shape[0]
    (kv,) = merge(graphdef, params)(input_ids.reshape(-1, input_ids.shape[2])).memory_kv
    return as_documents(kv.keys, docs)[None], as_documents(kv.values, docs)[None]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _local_step(graphdef: StaticGraph, params: nnx.State, input_ids: jax.Array, valid: jax.Array) -> jax.Array:
    """One window `[batch, W]` of a model without memory → argmax `[batch, W]`."""
    return merge(graphdef, params)(input_ids, attention_mask=valid).logits.argmax(-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "memory", "predict"))
def _knn_step(
    graphdef: StaticGraph,
    params: nnx.State,
    input_ids: jax.Array,
    valid: jax.Array,
    memory: tuple[KnnRetriever | None, ...],
    predict: bool,
) -> tuple[jax.Array | None, jax.Array, jax.Array]:
    """One window `[batch, W]` searching FAISS → (argmax `[batch, W]` if `predict`, the window's raw keys and
    values `[mem_layers, batch, W, kv_heads, head_dim]` for the host to add)."""
    model = merge(graphdef, params)
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
    fill_tokens: int = 1 << 16,
    progress: bool = False,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Runs documents of one length as a batch, window by window (streamed, see the module docstring).

    window: tokens per window (0 = the model's).   backend: "local", "dense", "topk" or "faiss:<index_type>"
    (None: `memory_cfg.backend`). Returns (argmax predictions, true values), one `[queries, value_len]` array per
    document.
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
    graphdef, params = split_static(model)
    state, store, retrievers = None, None, ()
    if backend.startswith("faiss"):
        index = KnnIndexConfig(**{**dict(memory_cfg.index), "capacity": capacity, "policy": memory_cfg.policy})
        store = new_store(model, batch, index)
        retrievers = tuple(KnnRetriever(store, i, memory_cfg.top_k) for i in range(n_mem))
    elif backend != "local":
        state = init_memory(model.config, batch, capacity)
    top_k = memory_cfg.top_k if backend == "topk" else None

    def positions(w: int) -> np.ndarray:
        return w * window - pad + np.arange(window)

    scored_windows = [w for w in range(n_windows) if any(doc.is_query_value(positions(w) + 1).any() for doc in docs)]
    first_scored = scored_windows[0] if scored_windows else n_windows
    windows = range(n_windows)
    written = 0
    if n_mem == 1 and backend != "local" and pad == 0 and first_scored > 0:
        # batched filling: windows 0 .. first_scored-1 are independent for a single memory layer
        per_call = max(1, fill_tokens // (batch * window))
        bar = tqdm(total=first_scored, desc=f"filling {docs[0].defs_len}", disable=not progress, unit="win")
        for start in range(0, first_scored, per_call):
            ws = range(start, min(start + per_call, first_scored))
            pos = np.concatenate([positions(w) for w in ws])
            ids = np.stack([doc.tokens(pos).reshape(len(ws), window) for doc in docs])  # [batch, n, W]
            keys, values = _fill_kv(graphdef, params, jnp.asarray(ids))
            valid = np.ones((batch, len(ws) * window), bool)
            if store is not None:
                add_window(store, keys, values, valid)
            else:
                check_capacity(written, valid.shape[1], capacity, memory_cfg.policy)
                state = _append(state, WindowKV(keys[0], values[0]), jnp.asarray(valid))
                written += valid.shape[1]
            bar.update(len(ws))
        bar.close()
        windows = range(first_scored, n_windows)
    found: list[list[np.ndarray]] = [[] for _ in docs]
    truth: list[list[np.ndarray]] = [[] for _ in docs]
    bar = tqdm(windows, desc=f"dictionary {docs[0].defs_len}", disable=not progress, unit="win")
    for w in bar:
        pos = positions(w)
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
    value_len = docs[0].task.value_len
    predictions = [np.concatenate(r).reshape(-1, value_len) for r in found]
    return predictions, [np.concatenate(r).reshape(-1, value_len) for r in truth]


@functools.partial(jax.jit, donate_argnames=("state",))
def _append(state: DenseMemoryState, kv: WindowKV, valid: jax.Array) -> DenseMemoryState:
    return append_window(state, (kv,), valid)
