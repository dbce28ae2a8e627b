"""Long-input ingestion and generation with memory, following LongLLaMA's rules (DESIGN §3).

For a prompt of n tokens and window W = max_position_embeddings, L = last_context_length:

1. the first max(n - L, 0) tokens are cut into windows of W (the last one may be shorter); each window attends to
   the memory and to itself (positions 0..), then its raw keys/values go into the memory of the memory layers;
2. the remaining min(n, L) tokens go through the model into the local cache (positions 0..), attending to the
   memory too;
3. each generated token is appended to the local cache; when the cache would exceed W tokens, everything in it
   moves to memory (memory layers) or is dropped (other layers), and the new token starts a fresh cache at
   position 0.

These are the rules of the official LongLLaMA PyTorch code, which is what makes outputs agree with it.

    from focused.generate import generate
    tokens = generate(model, prompt_ids, max_new_tokens=32)                # greedy
    tokens = generate(model, prompt_ids, 32, temperature=0.8, top_p=0.9)   # sampling
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from focused.memory.backends import MemoryConfig
from focused.memory.dense import (
    DenseMemoryState,
    append_window,
    check_capacity,
    init_memory,
    memory_blocks,
    memory_view,
    window_step,
)
from focused.memory.faiss_index import KnnIndexConfig, KnnMemoryStore
from focused.memory.knn import KnnRetriever, add_window, knn_window_step, new_store
from focused.model.attention import WindowKV
from focused.model.config import LlamaConfig, resolve_dtype
from focused.model.llama import LlamaForCausalLM, LocalCache


class GenerationState(NamedTuple):
    memory: DenseMemoryState | KnnMemoryStore  # on-device buffer (dense / topk) or host FAISS store (faiss)
    cache: LocalCache
    logits: jax.Array  # [batch, vocab] float32: the next-token logits after the last token seen
    memory_cfg: MemoryConfig


def init_cache(config: LlamaConfig, batch: int) -> LocalCache:
    """An empty local cache of max_position_embeddings slots for every layer."""
    shape = (config.num_hidden_layers, batch, config.max_position_embeddings, config.kv_heads, config.head_size)
    dtype = resolve_dtype(config.dtype)
    return LocalCache(
        keys=jnp.zeros(shape, dtype),
        values=jnp.zeros(shape, dtype),
        valid=jnp.zeros((batch, config.max_position_embeddings), bool),
        length=jnp.zeros((), jnp.int32),
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "top_k", "retrievers", "view"), donate_argnames=("cache",))
def _cache_step(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    memory: DenseMemoryState | None,
    cache: LocalCache,
    input_ids: jax.Array,
    valid: jax.Array,
    top_k: int | None = None,
    retrievers: tuple[KnnRetriever, ...] | None = None,
    view: int | None = None,
) -> tuple[jax.Array, LocalCache]:
    """Runs `[batch, t]` tokens through the model into the local cache (attending to memory and the cache)."""
    model = nnx.merge(graphdef, params)
    blocks = retrievers if retrievers is not None else memory_blocks(memory, top_k, view)
    out = model(input_ids, attention_mask=valid, memory=blocks, cache=cache)
    return out.logits, out.cache


@functools.partial(jax.jit, static_argnames=("mem_layers",), donate_argnames=("memory",))
def _flush_dense(memory: DenseMemoryState, cache: LocalCache, mem_layers: tuple[int, ...]) -> DenseMemoryState:
    kv = tuple(WindowKV(cache.keys[i], cache.values[i]) for i in mem_layers)
    return append_window(memory, kv, cache.valid)


def _flush(
    memory: DenseMemoryState | KnnMemoryStore, cache: LocalCache, mem_layers: tuple[int, ...]
) -> tuple[DenseMemoryState | KnnMemoryStore, LocalCache]:
    """Moves the whole (full) local cache into memory (memory layers) and empties it."""
    if isinstance(memory, KnnMemoryStore):
        layers = np.asarray(mem_layers, np.int32)
        add_window(memory, cache.keys[layers], cache.values[layers], cache.valid)
    else:
        memory = _flush_dense(memory, cache, mem_layers)
    empty = cache._replace(valid=jnp.zeros_like(cache.valid), length=jnp.zeros_like(cache.length))
    return memory, empty


def _stored(memory: DenseMemoryState | KnnMemoryStore) -> tuple[int, int]:
    """(tokens written, capacity) of either kind of memory."""
    if isinstance(memory, KnnMemoryStore):
        return memory.written, memory.config.capacity
    return int(memory.length), memory.mask.shape[1]


def _run(
    model: LlamaForCausalLM,
    memory: DenseMemoryState | KnnMemoryStore,
    cache: LocalCache,
    ids: jax.Array,
    valid: jax.Array,
    memory_cfg: MemoryConfig,
) -> tuple[jax.Array, LocalCache]:
    graphdef, params = nnx.split(model)
    if isinstance(memory, KnnMemoryStore):
        retrievers = tuple(KnnRetriever(memory, i, memory_cfg.top_k) for i in range(len(model.config.mem_layers)))
        return _cache_step(graphdef, params, None, cache, ids, valid, retrievers=retrievers)
    top_k = memory_cfg.top_k if memory_cfg.backend == "topk" else None
    written, capacity = _stored(memory)
    view = memory_view(written, capacity, model.config.max_position_embeddings)
    return _cache_step(graphdef, params, memory, cache, ids, valid, top_k, view=view)


def ingest(
    model: LlamaForCausalLM,
    input_ids: np.ndarray | jax.Array,
    attention_mask: np.ndarray | jax.Array | None = None,
    *,
    capacity: int | None = None,
    policy: str = "error",
    memory_cfg: MemoryConfig | None = None,
    progress: bool = True,
) -> GenerationState:
    """Reads a (long) prompt `[batch, n]`: prefix windows into memory, the last `last_context_length` tokens into
    the local cache. `attention_mask` `[batch, n]` marks padding (left padding for prompts of different lengths).

    capacity: memory slots per row (default: enough for the prompt plus one more window).
    memory_cfg: the memory backend (dense by default; topk, or faiss for memories that do not fit the device).
    """
    cfg = model.config
    memory_cfg = memory_cfg or MemoryConfig(policy=policy)
    window, last = cfg.max_position_embeddings, cfg.last_context_length
    input_ids = jnp.asarray(input_ids, jnp.int32)
    batch, n = input_ids.shape
    if n == 0:
        raise ValueError("the prompt is empty: give at least one token")
    valid = jnp.ones((batch, n), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
    prefix = max(n - last, 0)
    capacity = capacity or memory_cfg.capacity or max(-(-(prefix + window) // window) * window, window)
    graphdef, params = nnx.split(model)
    if memory_cfg.backend == "faiss":
        index = KnnIndexConfig(**{**dict(memory_cfg.index), "capacity": capacity, "policy": memory_cfg.policy})
        memory = new_store(model, batch, index)
    else:
        memory = init_memory(cfg, batch, capacity)
    top_k = memory_cfg.top_k if memory_cfg.backend == "topk" else None
    for start in tqdm(range(0, prefix, window), desc="ingest", unit="win", disable=not progress):
        stop = min(start + window, prefix)
        check_capacity(start, stop - start, capacity, memory_cfg.policy)
        ids, ok = input_ids[:, start:stop], valid[:, start:stop]
        if isinstance(memory, KnnMemoryStore):
            retrievers = tuple(KnnRetriever(memory, i, memory_cfg.top_k) for i in range(len(cfg.mem_layers)))
            _, keys, values = knn_window_step(graphdef, params, ids, ok, retrievers)
            add_window(memory, keys, values, ok)
        else:
            _, memory = window_step(graphdef, params, memory, ids, ok, top_k, memory_view(start, capacity, window))
    logits, cache = _run(model, memory, init_cache(cfg, batch), input_ids[:, prefix:], valid[:, prefix:], memory_cfg)
    return GenerationState(memory, cache, logits[:, -1], memory_cfg)


def decode(model: LlamaForCausalLM, state: GenerationState, tokens: jax.Array) -> GenerationState:
    """Feeds one token per row `[batch]`, moving a full local cache to memory first (LongLLaMA's rule)."""
    cfg = model.config
    memory, cache = state.memory, state.cache
    if int(cache.length) + 1 > cfg.max_position_embeddings:
        written, capacity = _stored(memory)
        check_capacity(written, cfg.max_position_embeddings, capacity, state.memory_cfg.policy)
        memory, cache = _flush(memory, cache, cfg.mem_layers)
    ids = jnp.asarray(tokens, jnp.int32)[:, None]
    logits, cache = _run(model, memory, cache, ids, jnp.ones_like(ids, bool), state.memory_cfg)
    return GenerationState(memory, cache, logits[:, -1], state.memory_cfg)


@functools.partial(jax.jit, static_argnames=("temperature", "top_p"))
def sample(logits: jax.Array, key: jax.Array, temperature: float = 0.0, top_p: float = 1.0) -> jax.Array:
    """`[batch, vocab]` logits → `[batch]` tokens: greedy when temperature == 0, else nucleus sampling."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1)
    logits = logits / temperature
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        keep_sorted = jnp.cumsum(probs, axis=-1) - probs < top_p  # always keeps the most likely token
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1)


def generate(
    model: LlamaForCausalLM,
    input_ids: np.ndarray | jax.Array,
    max_new_tokens: int,
    *,
    attention_mask: np.ndarray | jax.Array | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_token_id: int | None = None,
    capacity: int | None = None,
    policy: str = "error",
    memory_cfg: MemoryConfig | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Generates `max_new_tokens` after each prompt row; returns `[batch, max_new_tokens]` int32 (rows that hit
    `eos_token_id` are padded with it afterwards)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    n = np.shape(input_ids)[1]
    window = model.config.max_position_embeddings
    capacity = capacity or max(-(-(n + max_new_tokens + window) // window) * window, window)
    state = ingest(
        model, input_ids, attention_mask, capacity=capacity, policy=policy, memory_cfg=memory_cfg, progress=progress
    )
    key = jax.random.key(seed)
    out = []
    done = np.zeros(np.shape(input_ids)[0], bool)
    for _ in range(max_new_tokens):
        key, sub = jax.random.split(key)
        token = np.asarray(sample(state.logits, sub, temperature, top_p))
        if eos_token_id is not None:
            token = np.where(done, eos_token_id, token)
            done |= token == eos_token_id
        out.append(token)
        if done.all() or len(out) == max_new_tokens:
            break
        state = decode(model, state, jnp.asarray(token))
    tokens = np.stack(out, axis=1).astype(np.int32)
    if tokens.shape[1] < max_new_tokens:
        tokens = np.pad(tokens, ((0, 0), (0, max_new_tokens - tokens.shape[1])), constant_values=eos_token_id or 0)
    return tokens
