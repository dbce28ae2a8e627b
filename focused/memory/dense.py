"""Dense memory on the accelerator and the window-by-window forward pass over long inputs.

The memory of every memory layer is one preallocated buffer per layer (no re-allocation per window; a layer's
buffer is read and updated in place, never sliced out of a stack of all layers, which copied it for every window),
laid out heads-major (`MemoryBlock.heads_major`), the layout its readers want: each head's keys and values are
contiguous, so neither a window's flash read nor a decoding step transposes the memory first:

    keys:   one `[batch, kv_heads, capacity, head_dim]` array per memory layer, in `mem_dtype`
    values: one `[batch, kv_heads, head_dim, capacity]` array per memory layer
    mask:         `[batch, capacity]` bool (False for empty slots and for remembered padding)
    length:       scalar int32, how many slots have been written (may exceed capacity with `drop_oldest`)

A long input `[batch, n]` is cut into windows of `max_position_embeddings` tokens; each window attends to itself
(positions rebased to 0..W-1) and, in memory layers, to everything in memory; then its raw keys/values are
written into the buffer. Memory attention has no notion of order, so "drop oldest" is a ring buffer.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from focused.memory.core import MemoryBlock, flash_chunk
from focused.memory.prefix import PrefixMemory, as_documents, as_windows, default_windows_per_call, query_windows
from focused.model.attention import WindowKV
from focused.model.config import LlamaConfig, resolve_dtype
from focused.model.graph import StaticGraph, merge, split_static
from focused.model.llama import LlamaForCausalLM

POLICIES = ("error", "drop_oldest")
# float32 logits one many-window call of `forward_long` may hold (256 MiB): fewer windows a call for a large vocab
LOGIT_BUDGET = 1 << 26


class DenseMemoryState(NamedTuple):
    keys: tuple[jax.Array, ...]  # per memory layer [batch, kv_heads, capacity, head_dim]
    values: tuple[jax.Array, ...]  # per memory layer [batch, kv_heads, head_dim, capacity]
    mask: jax.Array  # [batch, capacity] bool
    length: jax.Array  # [] int32: tokens written so far


def init_memory(config: LlamaConfig, batch: int, capacity: int) -> DenseMemoryState:
    """An empty memory able to hold `capacity` tokens per batch row for every memory layer."""
    if capacity <= 0:
        raise ValueError(f"memory capacity must be positive, got {capacity}")
    keys = (batch, config.kv_heads, capacity, config.head_size)
    values = (batch, config.kv_heads, config.head_size, capacity)
    dtype = resolve_dtype(config.mem_dtype)
    layers = range(len(config.mem_layers))
    return DenseMemoryState(
        keys=tuple(jnp.zeros(keys, dtype) for _ in layers),
        values=tuple(jnp.zeros(values, dtype) for _ in layers),
        mask=jnp.zeros((batch, capacity), bool),
        length=jnp.zeros((), jnp.int32),
    )


def memory_blocks(
    state: DenseMemoryState, top_k: int | None = None, view: int | None = None
) -> tuple[MemoryBlock, ...]:
    """One `MemoryBlock` per memory layer over the first `view` slots (default all; empty slots are masked out).

    top_k: None = dense attention over all of memory; k = exact top-k on device (the `topk` backend).
    Slots fill from 0 until the ring buffer wraps, so each block carries its fill level (`MemoryBlock.filled`).
    """
    n, capacity = len(state.keys), state.mask.shape[1]
    cut = slice(None, view)
    filled = jnp.minimum(state.length, min(capacity, view or capacity)).astype(jnp.int32)
    return tuple(
        MemoryBlock(state.keys[i][:, :, cut], state.values[i][..., cut], state.mask[:, cut], top_k, True, filled=filled)
        for i in range(n)
    )


def memory_view(written: int, capacity: int, minimum: int, whole_from: int | None = None) -> int:
    """How many leading slots attention must look at: the filled ones, rounded up to a power of two (so only
    log2(capacity) shapes compile), or all of them once the ring buffer has wrapped. Slots past `written` are
    empty, so leaving them out changes nothing but the cost.

    whole_from: the flash kernel's chunk (`read_chunk`): it reads only the chunks below the fill level, so a view
    of at least one chunk costs no more than the whole buffer, which is then used (one compiled program for all
    larger fill levels)."""
    if written >= capacity:
        return capacity
    view = min(capacity, max(minimum, 1 << max(written - 1, 0).bit_length()))
    return capacity if whole_from is not None and view >= whole_from else view


def read_chunk(config: LlamaConfig, batch: int, queries: int, top_k: int | None = None) -> int | None:
    """The flash kernel's key chunk when `queries` positions per row read a dense memory, else None (the
    reference kernel and exact top-k read every slot of the view)."""
    if config.memory_read_impl != "flash" or top_k is not None:
        return None
    return flash_chunk(config.attention_chunk, batch, config.num_attention_heads, queries)


def append_window(state: DenseMemoryState, window_kv: tuple[WindowKV, ...], valid: jax.Array) -> DenseMemoryState:
    """Writes one window (`[batch, seq, kv_heads, head_dim]` per layer, valid `[batch, seq]`) after the last slot.

    Slots wrap around modulo capacity, overwriting the oldest entries (the caller enforces the `error` policy).
    """
    capacity = state.mask.shape[1]
    seq = valid.shape[1]
    if not window_kv:  # a model without memory layers
        return state._replace(length=state.length + seq)
    slots = (state.length + jnp.arange(seq)) % capacity

    pairs = list(zip(state.keys, state.values, window_kv, strict=True))
    # a window's [b, seq, kvh, d] goes to keys [b, kvh, seq, d] and values [b, kvh, d, seq]
    return DenseMemoryState(
        keys=tuple(k.at[:, :, slots].set(jnp.moveaxis(kv.keys, 1, 2).astype(k.dtype)) for k, _, kv in pairs),
        values=tuple(
            v.at[..., slots].set(jnp.transpose(kv.values, (0, 2, 3, 1)).astype(v.dtype)) for _, v, kv in pairs
        ),
        mask=state.mask.at[:, slots].set(valid.astype(bool)),
        length=state.length + seq,
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "top_k", "view"), donate_argnames=("state",))
def window_step(
    graphdef: StaticGraph,
    params: nnx.State,
    state: DenseMemoryState,
    input_ids: jax.Array,
    valid: jax.Array,
    top_k: int | None = None,
    view: int | None = None,
    logit_positions: jax.Array | None = None,
) -> tuple[jax.Array, DenseMemoryState]:
    """One window `[batch, seq]` attending to the first `view` memory slots, then appended to the memory;
    returns (logits `[batch, seq or k, vocab]`, memory). logit_positions `[k]`: the window positions whose logits
    are wanted (None = all; an empty array skips the lm_head)."""
    model = merge(graphdef, params)
    out = model(
        input_ids, attention_mask=valid, memory=memory_blocks(state, top_k, view), logit_positions=logit_positions
    )
    return out.logits, append_window(state, out.memory_kv, valid)


@functools.partial(jax.jit, static_argnames=("graphdef", "windows", "view", "with_logits"), donate_argnames=("state",))
def windows_step(
    graphdef: StaticGraph,
    params: nnx.State,
    state: DenseMemoryState,
    input_ids: jax.Array,
    valid: jax.Array,
    windows: int,
    view: int | None,
    with_logits: bool,
) -> tuple[jax.Array | None, DenseMemoryState]:
    """`windows` whole windows of each row `[batch, windows * W]` in one call, layer by layer
    (`focused.memory.prefix`): the same logits and memory as `window_step` on each in turn. Returns (logits
    `[batch, windows * W, vocab]` or None, the memory with all of them appended)."""
    model, docs = merge(graphdef, params), input_ids.shape[0]
    memory = tuple(PrefixMemory(windows, block) for block in memory_blocks(state, None, view))
    skip = None if with_logits else jnp.zeros(0, jnp.int32)
    ids, mask = as_windows(input_ids, windows), as_windows(valid, windows)
    out = model(ids, attention_mask=mask, memory=memory, logit_positions=skip)
    kv = tuple(WindowKV(as_documents(x.keys, docs), as_documents(x.values, docs)) for x in out.memory_kv)
    return (as_documents(out.logits, docs) if with_logits else None), append_window(state, kv, valid)


def check_capacity(written: int, incoming: int, capacity: int, policy: str) -> None:
    """Raises for the `error` policy when `incoming` more tokens would not fit."""
    if policy not in POLICIES:
        raise ValueError(f"unknown memory capacity policy {policy!r}; use one of {POLICIES}")
    if policy == "error" and written + incoming > capacity:
        raise ValueError(
            f"memory capacity {capacity} tokens exceeded ({written} stored + {incoming} new): raise the capacity "
            "or use the 'drop_oldest' policy"
        )


SPLITS = ("windows", "longllama")


def window_starts(n: int, window: int, last_context_length: int, split: str = "windows") -> list[int]:
    """Where the windows of an `n`-token input start.

    "windows": 0, W, 2W, ... (every window full but the last).
    "longllama": the official LongLLaMA forward: the first n - L tokens in windows of W from 0 (the last of them
    may be short), then the final L = last_context_length tokens as one chunk; an input of at most L tokens is one
    chunk. Tail logits differ from "windows" whenever n - L is not a multiple of W.
    """
    if split == "windows":
        return list(range(0, n, window))
    if split == "longllama":
        prefix = max(n - last_context_length, 0)
        return [*range(0, prefix, window), prefix] if prefix < n else list(range(0, prefix, window))
    raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")


@functools.partial(jax.jit, donate_argnames=("buffer",))
def _write_logits(buffer: jax.Array, piece: jax.Array, start: jax.Array) -> jax.Array:
    """Writes a window's logits `[batch, t, vocab]` into `buffer` `[batch, n, vocab]` at `start`, in place."""
    return jax.lax.dynamic_update_slice(buffer, piece, (0, start, 0))


def _bucket(k: int) -> int:
    """Pads a count of wanted positions to a power of two, so a window compiles for few distinct shapes."""
    return 1 << max(k - 1, 0).bit_length()


def forward_long(
    model: LlamaForCausalLM,
    input_ids: np.ndarray | jax.Array,
    attention_mask: np.ndarray | jax.Array | None = None,
    *,
    capacity: int | None = None,
    policy: str = "error",
    memory: DenseMemoryState | None = None,
    top_k: int | None = None,
    logits: str | Sequence[int] | np.ndarray | None = "all",
    split: str = "windows",
    progress: bool = False,
    windows_per_call: int | None = None,
) -> tuple[jax.Array | None, DenseMemoryState]:
    """Runs a long input window by window with dense memory.

    Args:
      input_ids: `[batch, n]` token ids, any n.
      attention_mask: `[batch, n]`, 1 for tokens and 0 for padding (padding is remembered as masked slots).
      capacity: memory slots per row (default: n rounded up to whole windows, i.e. everything fits).
      policy: "error" (refuse input that overflows) or "drop_oldest" (ring buffer).
      memory: continue from an existing memory instead of an empty one.
      top_k: None = dense attention over all of memory; k = exact top-k per query on device.
      logits: which logits to return, and so which positions go through the lm_head (the full-vocabulary
        projection; keeping all of them costs `n * vocab * 4` bytes):
        "all" → `[batch, n, vocab]`; "last" → `[batch, vocab]` at position n - 1; a sequence of positions
        (0 <= p < n, any order, repeats allowed) → `[batch, len(positions), vocab]`; None → no logits (None).
      split: where windows are cut (`window_starts`): "windows" (from token 0) or "longllama" (the official
        forward: the last `last_context_length` tokens are the final chunk). Every window, the final chunk
        included, is appended to the returned memory.
      windows_per_call: whole windows read together, layer by layer (`focused.memory.prefix`, `windows_step`: the
        same numbers in fewer, larger matrix products), in power-of-two groups up to this many; None =
        `default_windows_per_call` (at most LOGIT_BUDGET logits a call), 1 = one window a call. Used for dense memory
        (top_k None) read by the flash kernel that the input does not overflow, with logits "all" or None.
    Returns:
      (logits as asked, float32, the memory after the last window).
    """
    cfg = model.config
    window = cfg.max_position_embeddings
    input_ids = jnp.asarray(input_ids, jnp.int32)
    batch, n = input_ids.shape
    valid = jnp.ones((batch, n), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
    if memory is None:
        memory = init_memory(cfg, batch, capacity or max(-(-n // window) * window, window))
    if isinstance(logits, str) and logits not in ("all", "last"):
        raise ValueError(f"logits must be 'all', 'last', a sequence of positions or None, got {logits!r}")
    wanted = None
    if logits is not None and not isinstance(logits, str):
        wanted = np.asarray(logits, np.int64).reshape(-1)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= n):
            raise ValueError(f"logit positions must lie in [0, {n}), got {wanted.min()}..{wanted.max()}")
    graphdef, params = split_static(model)
    written = int(memory.length)
    starts = window_starts(n, window, cfg.last_context_length, split)
    pieces, order = [], []
    # all logits go straight into one buffer: keeping every window's piece, then concatenating, held two copies
    everything = jnp.zeros((batch, n, cfg.vocab_size), jnp.float32) if logits == "all" else None
    if windows_per_call is not None and windows_per_call < 1:
        raise ValueError(f"windows_per_call must be >= 1 (or None for the default), got {windows_per_call}")
    per_call = windows_per_call or default_windows_per_call(window)
    if logits == "all":
        per_call = max(1, min(per_call, LOGIT_BUDGET // (batch * cfg.vocab_size * window)))
    together = per_call > 1 and cfg.memory_read_impl == "flash" and top_k is None and cfg.mem_layers
    together = together and logits in ("all", None)
    together = together and written + n <= memory.mask.shape[1]  # nothing read in a call is overwritten in it
    segments = list(zip(starts, [*starts[1:], n], strict=True))
    bar = tqdm(total=len(segments), desc="windows", disable=not progress, unit="win")
    i = 0
    while i < len(segments):
        run = 0  # whole windows from here
        while i + run < len(segments) and run < per_call and segments[i + run][1] - segments[i + run][0] == window:
            run += 1
        if together and run > 1:
            count = 1 << (run.bit_length() - 1)  # power-of-two groups: few shapes compile
            start, stop = segments[i][0], segments[i + count - 1][1]
            check_capacity(written, stop - start, memory.mask.shape[1], policy)
            chunk = read_chunk(cfg, batch, query_windows(count, window) * window)
            view = memory_view(written, memory.mask.shape[1], window, chunk)
            ids, ok = input_ids[:, start:stop], valid[:, start:stop]
            out, memory = windows_step(graphdef, params, memory, ids, ok, count, view, logits == "all")
            if logits == "all":
                everything = _write_logits(everything, out, jnp.int32(start))
                del out
            written += stop - start
            i += count
            bar.update(count)
            continue
        start, stop = segments[i]
        i += 1
        bar.update(1)
        check_capacity(written, stop - start, memory.mask.shape[1], policy)
        view = memory_view(written, memory.mask.shape[1], window, read_chunk(cfg, batch, stop - start, top_k))
        ids, ok = input_ids[:, start:stop], valid[:, start:stop]
        if logits == "all":
            positions = None
        elif logits == "last":
            positions = np.array([stop - start - 1] if stop == n else [], np.int32)
        elif logits is None:
            positions = np.zeros(0, np.int32)
        else:
            inside = np.flatnonzero((wanted >= start) & (wanted < stop))
            order.append(inside)
            local = (wanted[inside] - start).astype(np.int32)
            positions = np.zeros(_bucket(local.size) if local.size else 0, np.int32)
            positions[: local.size] = local
        out, memory = window_step(graphdef, params, memory, ids, ok, top_k, view, positions)
        written += stop - start
        if logits == "all":
            everything = _write_logits(everything, out, jnp.int32(start))
            del out
        elif logits == "last" and stop == n:
            pieces.append(out[:, 0])
        elif wanted is not None and order[-1].size:
            pieces.append(out[:, : order[-1].size])
    bar.close()
    if logits is None:
        return None, memory
    if logits == "last":
        return pieces[0], memory
    if logits == "all":
        return everything, memory
    if not pieces:
        return jnp.zeros((batch, 0, cfg.vocab_size), jnp.float32), memory
    found = np.concatenate(order)  # the index into `wanted` of each gathered column
    inverse = np.empty_like(found)
    inverse[found] = np.arange(found.size)
    return jnp.take(jnp.concatenate(pieces, axis=1), jnp.asarray(inverse), axis=1), memory
