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

The memory is any `focused.memory.store.MemoryStore` (dense or top-k on the device, FAISS on the host); this module
never branches on the backend. `generate` decodes in segments: between two moves of the cache into memory, one
jitted `lax.while_loop` samples and feeds every token (no host work or sync per token; the cache is donated).

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
from focused.memory.core import MemoryBlock, heads_major
from focused.memory.dense import check_capacity
from focused.memory.prefix import PrefixMemory, as_documents, as_windows, default_windows_per_call, query_windows
from focused.memory.store import MemoryReader, MemoryStore, new_store
from focused.model.config import LlamaConfig, resolve_dtype
from focused.model.graph import StaticGraph, merge, split_static
from focused.model.llama import LlamaForCausalLM, LocalCache


class GenerationState(NamedTuple):
    memory: MemoryStore  # on-device buffer (dense / topk) or host FAISS store (faiss), behind one interface
    cache: LocalCache
    logits: jax.Array  # [batch, vocab] float32: the next-token logits after the last token seen
    cache_length: int  # host copy of cache.length: deciding when to flush needs no device sync


def init_cache(config: LlamaConfig, batch: int) -> LocalCache:
    """An empty local cache of max_position_embeddings slots for every layer."""
    layers, size, kvh, d = config.num_hidden_layers, config.max_position_embeddings, config.kv_heads, config.head_size
    dtype = resolve_dtype(config.dtype)
    return LocalCache(
        keys=tuple(jnp.zeros((batch * kvh, size, d), dtype) for _ in range(layers)),
        values=tuple(jnp.zeros((batch * kvh, d, size), dtype) for _ in range(layers)),
        valid=jnp.zeros((batch, config.max_position_embeddings), bool),
        length=jnp.zeros((), jnp.int32),
    )


def _last_logits(
    model: LlamaForCausalLM, blocks: tuple, cache: LocalCache, ids: jax.Array, valid: jax.Array
) -> tuple[jax.Array, LocalCache]:
    """`[batch, t]` tokens through the model into the cache; only the last position goes through the lm_head."""
    last = jnp.full((1,), ids.shape[1] - 1, jnp.int32)
    out = model(ids, attention_mask=valid, memory=blocks, cache=cache, logit_positions=last)
    return out.logits[:, 0], out.cache


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def _cache_step(
    graphdef: StaticGraph,
    params: nnx.State,
    reader: MemoryReader,
    cache: LocalCache,
    input_ids: jax.Array,
    valid: jax.Array,
) -> tuple[jax.Array, LocalCache]:
    """Runs `[batch, t]` tokens into the local cache (attending to memory and the cache); the last logits
    `[batch, vocab]` and the cache."""
    return _last_logits(merge(graphdef, params), reader.blocks(), cache, input_ids, valid)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _window_kv(
    graphdef: StaticGraph, params: nnx.State, reader: MemoryReader, input_ids: jax.Array, valid: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One prefix window attending to memory → its raw keys/values `[mem_layers, batch, seq, kv_heads, head_dim]`
    (only up to the last memory layer's keys/values: a prefix window's hidden states and logits are never used)."""
    model = merge(graphdef, params)
    window_kv = model.model.memory_kv(input_ids, valid, reader.blocks())
    if not window_kv:
        empty = jnp.zeros((0, *input_ids.shape, model.config.kv_heads, model.config.head_size))
        return empty, empty
    return jnp.stack([kv.keys for kv in window_kv]), jnp.stack([kv.values for kv in window_kv])


@functools.partial(jax.jit, static_argnames=("graphdef", "windows"))
def _prefix_kv(
    graphdef: StaticGraph, params: nnx.State, reader: MemoryReader, input_ids: jax.Array, valid: jax.Array, windows: int
) -> tuple[jax.Array, jax.Array]:
    """`windows` prefix windows of each row `[batch, windows * W]` in one call (`focused.memory.prefix`), attending
    to the dense memory and to each other → raw keys/values `[mem_layers, batch, windows * W, kv_heads, head_dim]`."""
    model, docs = merge(graphdef, params), input_ids.shape[0]
    memory = tuple(PrefixMemory(windows, block) for block in reader.blocks())
    window_kv = model.model.memory_kv(as_windows(input_ids, windows), as_windows(valid, windows), memory)
    keys = jnp.stack([as_documents(kv.keys, docs) for kv in window_kv])
    return keys, jnp.stack([as_documents(kv.values, docs) for kv in window_kv])


def _reads_in_full(memory: MemoryStore, incoming: int) -> bool:
    """Whether prefix windows may be read many per call: every memory layer reads the whole memory (dense blocks,
    not top-k or kNN) and nothing is overwritten while they are read (the incoming tokens fit)."""
    if memory.stored + incoming > memory.capacity:
        return False
    blocks = memory.reader().blocks()
    return bool(blocks) and all(isinstance(b, MemoryBlock) and b.top_k is None for b in blocks)


def _read_prefix(
    graphdef: StaticGraph,
    params: nnx.State,
    memory: MemoryStore,
    input_ids: jax.Array,
    valid: jax.Array,
    window: int,
    per_call: int,
    progress: bool,
) -> None:
    """Appends the windows of `input_ids` `[batch, prefix]` to memory, `per_call` windows per call (the last call
    padded to a power of two windows, so few shapes compile; padding is never stored)."""
    prefix = input_ids.shape[1]
    total = -(-prefix // window)
    with tqdm(total=total, desc="ingest", unit="win", disable=not progress) as bar:
        done = 0
        while done < total:
            count = min(per_call, total - done)
            windows = per_call if count == per_call else min(per_call, 1 << (count - 1).bit_length())
            start, stop = done * window, min((done + count) * window, prefix)
            check_capacity(memory.stored, stop - start, memory.capacity, memory.policy)
            pad = ((0, 0), (0, windows * window - (stop - start)))
            ids, ok = jnp.pad(input_ids[:, start:stop], pad), jnp.pad(valid[:, start:stop], pad)
            reader = memory.reader(query_windows(windows, window) * window)
            keys, values = _prefix_kv(graphdef, params, reader, ids, ok, windows)
            memory.append(keys[:, :, : stop - start], values[:, :, : stop - start], valid[:, start:stop])
            done += count
            bar.update(count)


@functools.partial(jax.jit, static_argnames=("mem_layers",))
def _cache_kv(cache: LocalCache, mem_layers: tuple[int, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The memory layers' part of a full cache: keys, values `[mem_layers, batch, size, kv_heads, head_dim]`."""
    batch = cache.valid.shape[0]  # the cache's [b * kv_heads, size, d] / [b * kv_heads, d, size] per layer
    keys = jnp.stack([cache.keys[i].reshape(batch, -1, *cache.keys[i].shape[1:]) for i in mem_layers])
    values = jnp.stack([cache.values[i].reshape(batch, -1, *cache.values[i].shape[1:]) for i in mem_layers])
    return keys.transpose(0, 1, 3, 2, 4), values.transpose(0, 1, 4, 2, 3), cache.valid


def _flush(model: LlamaForCausalLM, state: GenerationState) -> GenerationState:
    """Moves the whole (full) local cache into memory (memory layers; other layers drop it) and empties it."""
    cfg, memory, cache = model.config, state.memory, state.cache
    check_capacity(memory.stored, cfg.max_position_embeddings, memory.capacity, memory.policy)
    memory.append(*_cache_kv(cache, tuple(cfg.mem_layers)))
    empty = cache._replace(valid=jnp.zeros_like(cache.valid), length=jnp.zeros_like(cache.length))
    return state._replace(cache=empty, cache_length=0)


def ingest(
    model: LlamaForCausalLM,
    input_ids: np.ndarray | jax.Array,
    attention_mask: np.ndarray | jax.Array | None = None,
    *,
    capacity: int | None = None,
    policy: str = "error",
    memory_cfg: MemoryConfig | None = None,
    progress: bool = True,
    windows_per_call: int | None = None,
) -> GenerationState:
    """Reads a (long) prompt `[batch, n]`: prefix windows into memory, the last `last_context_length` tokens into
    the local cache. `attention_mask` `[batch, n]` marks padding (left padding for prompts of different lengths).

    capacity: memory slots per row (default: enough for the prompt plus one more window).
    memory_cfg: the memory backend (dense by default; topk, or faiss for memories that do not fit the device).
    windows_per_call: prefix windows read together, layer by layer (`focused.memory.prefix`; the same numbers as
        one window at a time, in fewer, larger matrix products); None = `default_windows_per_call`. Used
        when the memory is read in full (dense backend) by the flash kernel (`memory_read_impl`) and the prompt
        fits it; otherwise, or with 1, one window per call.
    """
    if windows_per_call is not None and windows_per_call < 1:
        raise ValueError(f"windows_per_call must be >= 1 (or None for the default), got {windows_per_call}")
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
    memory = new_store(cfg, batch, memory_cfg, capacity)
    graphdef, params = split_static(model)
    per_call = windows_per_call or default_windows_per_call(window)
    flash = cfg.memory_read_impl == "flash"  # windows read together always use the flash kernel
    if per_call > 1 and flash and prefix > window and _reads_in_full(memory, prefix):
        _read_prefix(graphdef, params, memory, input_ids[:, :prefix], valid[:, :prefix], window, per_call, progress)
        prefix_done = prefix
    else:
        prefix_done = 0
    for start in tqdm(range(prefix_done, prefix, window), desc="ingest", unit="win", disable=not progress):
        stop = min(start + window, prefix)
        check_capacity(memory.stored, stop - start, memory.capacity, memory.policy)
        ids, ok = input_ids[:, start:stop], valid[:, start:stop]
        keys, values = _window_kv(graphdef, params, memory.reader(stop - start), ids, ok)
        memory.append(keys, values, ok)
    logits, cache = _cache_step(
        graphdef, params, memory.reader(n - prefix), init_cache(cfg, batch), input_ids[:, prefix:], valid[:, prefix:]
    )
    return GenerationState(memory, cache, logits, n - prefix)


def decode(model: LlamaForCausalLM, state: GenerationState, tokens: jax.Array) -> GenerationState:
    """Feeds one token per row `[batch]`, moving a full local cache to memory first (LongLLaMA's rule)."""
    if state.cache_length + 1 > model.config.max_position_embeddings:
        state = _flush(model, state)
    graphdef, params = split_static(model)
    ids = jnp.asarray(tokens, jnp.int32)[:, None]
    logits, cache = _cache_step(graphdef, params, state.memory.reader(), state.cache, ids, jnp.ones_like(ids, bool))
    return state._replace(cache=cache, logits=logits, cache_length=state.cache_length + 1)


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


class _Decoding(NamedTuple):
    """The carry of the decode loop (every field stays on the device between segments)."""

    cache: LocalCache
    logits: jax.Array  # [batch, vocab] float32
    key: jax.Array  # PRNG key
    done: jax.Array  # [batch] bool: the row has produced eos
    tokens: jax.Array  # [batch, max_new_tokens] int32, pre-filled with the padding token
    produced: jax.Array  # [] int32: tokens written to `tokens` so far


def _next_token(
    c: _Decoding, temperature: float, top_p: float, eos_token_id: int | None
) -> tuple[jax.Array, _Decoding]:
    """Samples one token per row from `c.logits` (splitting the key as step-by-step decoding does) and records it."""
    key, sub = jax.random.split(c.key)
    token = sample(c.logits, sub, temperature, top_p).astype(jnp.int32)
    done = c.done
    if eos_token_id is not None:
        token = jnp.where(done, eos_token_id, token)
        done = done | (token == eos_token_id)
    tokens = jax.lax.dynamic_update_slice(c.tokens, token[:, None], (0, c.produced))
    return token, c._replace(key=key, done=done, tokens=tokens, produced=c.produced + 1)


@functools.partial(
    jax.jit, static_argnames=("graphdef", "temperature", "top_p", "eos_token_id"), donate_argnames=("carry",)
)
def _decode_segment(
    graphdef: StaticGraph,
    params: nnx.State,
    reader: MemoryReader,
    carry: _Decoding,
    steps: jax.Array,
    temperature: float,
    top_p: float,
    eos_token_id: int | None,
) -> _Decoding:
    """Up to `steps` rounds of (sample a token from the logits; feed it through the model into the cache) in one
    `lax.while_loop`, stopping early once every row has produced eos. Memory is read-only here: the caller moves
    a full cache into memory between segments, so `steps` never exceeds the free cache slots."""
    model = merge(graphdef, params)
    # every step reads the same memory: lay it out once for reading (no transpose of the buffer per token)
    blocks = tuple(heads_major(b) if isinstance(b, MemoryBlock) else b for b in reader.blocks())

    def body(loop: tuple[jax.Array, _Decoding]) -> tuple[jax.Array, _Decoding]:
        i, c = loop
        token, c = _next_token(c, temperature, top_p, eos_token_id)
        ids = token[:, None]
        logits, cache = _last_logits(model, blocks, c.cache, ids, jnp.ones_like(ids, bool))
        return i + 1, c._replace(cache=cache, logits=logits)

    def cond(loop: tuple[jax.Array, _Decoding]) -> jax.Array:
        i, c = loop
        return (i < steps) & ~jnp.all(c.done)

    return jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), carry))[1]


@functools.partial(jax.jit, static_argnames=("temperature", "top_p", "eos_token_id"), donate_argnames=("carry",))
def _last_token(carry: _Decoding, temperature: float, top_p: float, eos_token_id: int | None) -> _Decoding:
    """The final token: sampled, never fed (its logits are not needed)."""
    return _next_token(carry, temperature, top_p, eos_token_id)[1]


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
    windows_per_call: int | None = None,
) -> np.ndarray:
    """Generates `max_new_tokens` after each prompt row; returns `[batch, max_new_tokens]` int32 (rows that hit
    `eos_token_id` are padded with it afterwards). The prompt is read by `ingest` (`windows_per_call` as there).

    Tokens equal those of step-by-step decoding (`sample` on the logits, `decode` of the token, with the PRNG key
    split once per token); the loop runs on the device, one jitted call per local-cache segment.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    n = np.shape(input_ids)[1]
    window = model.config.max_position_embeddings
    capacity = capacity or max(-(-(n + max_new_tokens + window) // window) * window, window)
    state = ingest(
        model,
        input_ids,
        attention_mask,
        capacity=capacity,
        policy=policy,
        memory_cfg=memory_cfg,
        progress=progress,
        windows_per_call=windows_per_call,
    )
    return generate_from(
        model, state, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, eos_token_id=eos_token_id
    )


def generate_from(
    model: LlamaForCausalLM,
    state: GenerationState,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_token_id: int | None = None,
) -> np.ndarray:
    """Generates `max_new_tokens` `[batch, max_new_tokens]` int32 from an `ingest`ed state (which it consumes: the
    cache is donated and the memory grows)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    window = model.config.max_position_embeddings
    batch = state.logits.shape[0]
    graphdef, params = split_static(model)
    eos = eos_token_id
    carry = _Decoding(
        cache=state.cache,
        logits=state.logits,
        key=jax.random.key(seed),
        done=jnp.zeros(batch, bool),
        tokens=jnp.full((batch, max_new_tokens), eos or 0, jnp.int32),
        produced=jnp.zeros((), jnp.int32),
    )
    # max_new_tokens - 1 rounds of (sample, feed) in segments that fit the cache, then one last sample
    rounds = max_new_tokens - 1
    while rounds:
        if state.cache_length == window:  # the next token needs a slot: cache → memory
            state = _flush(model, state._replace(cache=carry.cache))
            carry = carry._replace(cache=state.cache)
        steps = min(rounds, window - state.cache_length)
        carry = _decode_segment(
            graphdef, params, state.memory.reader(), carry, jnp.int32(steps), float(temperature), float(top_p), eos
        )
        rounds -= steps
        state = state._replace(cache_length=state.cache_length + steps)
        if eos is not None and rounds and bool(jnp.all(carry.done)):  # one sync per segment, only with eos
            return np.asarray(carry.tokens)
    if eos is not None and bool(jnp.all(carry.done)):
        return np.asarray(carry.tokens)
    return np.asarray(_last_token(carry, float(temperature), float(top_p), eos).tokens)
