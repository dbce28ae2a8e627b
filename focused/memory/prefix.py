"""Reading a long prompt's prefix many windows per call, layer by layer, instead of one window per call.

A memory layer's keys and values at window i depend only on the layers below it, at window i and (through their
memory) at earlier windows. So all prefix windows of a prompt can go through the model together: the call's rows
are windows (row `b * n + i` holds window i of document b, at positions 0..W-1 like any window), every layer
works on all of them at once, and a memory layer lets window i attend, in ONE softmax, to

    [what the memory store held before the call (a dense `MemoryBlock`) ; the raw keys/values of windows 0..i-1 of
     this call (cast to the store's dtype, as if they had been stored) ; its own window, causally]

which is exactly what reading the windows one at a time and appending each to the store would give (DESIGN §3).
The work is the same, but it runs as a few large matrix products instead of n small ones, and the earlier-window
part is read by query blocks of about `QUERY_BLOCK` positions whose fill level stops the flash kernel at the
block's last window (so no key past the triangle is read). `focused.generate.ingest` and
`focused.memory.dense.forward_long` use it for dense memory read by the flash kernel (top-k and kNN memories read
only some keys per query, so they go one window at a time).

Shapes: R = docs * n rows of W tokens; q `[R, W, heads, d]`; keys/values `[R, W, kv_heads, d]`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from focused.memory.core import MemoryBlock, flash_chunk
from focused.memory.flash import flash_attention_sets

# queries per block of the earlier-window read: about one flash score block's worth of positions (on 2 CPU cores
# 512 beat 256 and 1024 for a 4-head model with 64-token windows: 0.24 s against 0.30-0.34 s for 8K tokens)
QUERY_BLOCK = 512
# prefix tokens a call reads when windows go through the model together (`ingest`, `forward_long`): on 2 CPU cores
# a small model's 8K ingest (64-token windows) took 0.23-0.29 s with 32 windows a call, 0.27-0.33 s with 128, 0.40-0.46
# s with 8 and 0.62-0.75 s with 1; the mid model's (512-token windows) 3.6-4.3 s with 1, 4.2-4.5 s with 16
TOKENS_PER_CALL = 2048


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["store", "keys", "values", "mask"], meta_fields=["windows"]
)
@dataclasses.dataclass(frozen=True)
class PrefixMemory:
    """A memory layer's memory while a call reads `windows` consecutive windows of each document.

    store: the dense store's block for this layer (`[docs, ...]`, any layout, with its fill level), or None.
    keys, values: `[docs * windows, W, kv_heads, d]` raw keys/values of this call's windows (set by `bind` inside
        the layer, in the store's dtype); mask `[docs * windows, W]` bool, True for real tokens.
    """

    windows: int
    store: MemoryBlock | None = None
    keys: jax.Array | None = None
    values: jax.Array | None = None
    mask: jax.Array | None = None

    def bind(self, keys: jax.Array, values: jax.Array, mask: jax.Array, dtype) -> PrefixMemory:
        """The same memory with this call's own raw keys/values `[rows, W, kv_heads, d]` and key mask `[rows, W]`."""
        if self.store is not None and self.store.top_k is not None:
            raise ValueError("windows read together need a dense memory block (top_k None); read top-k one at a time")
        if keys.shape[0] % self.windows:
            raise ValueError(f"{keys.shape[0]} rows are not whole documents of {self.windows} windows")
        return dataclasses.replace(self, keys=keys.astype(dtype), values=values.astype(dtype), mask=mask)


def as_windows(x: jax.Array, windows: int) -> jax.Array:
    """`[docs, windows * W, ...]` → `[docs * windows, W, ...]`: each window its own row (row `b * windows + i`)."""
    return x.reshape(x.shape[0] * windows, x.shape[1] // windows, *x.shape[2:])


def as_documents(x: jax.Array, docs: int) -> jax.Array:
    """`[docs * windows, W, ...]` → `[docs, windows * W, ...]`: the inverse of `as_windows`."""
    return x.reshape(docs, -1, *x.shape[2:])


def default_windows_per_call(window: int) -> int:
    """Windows a call reads by default: about TOKENS_PER_CALL tokens of short windows; windows of QUERY_BLOCK tokens
    or more one at a time (their matrix products are large already, and on CPU larger ones only miss the cache)."""
    return max(1, TOKENS_PER_CALL // window) if window < QUERY_BLOCK else 1


def query_windows(windows: int, window: int) -> int:
    """Windows per query block: the largest divisor of `windows` with at most QUERY_BLOCK positions (at least 1)."""
    best = 1
    for g in range(1, windows + 1):
        if windows % g == 0 and g * window <= QUERY_BLOCK:
            best = g
    return best


def prefix_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, local_mask: jax.Array, memory: PrefixMemory, kv_chunk: int
) -> jax.Array:
    """Attention of every window over [store ; earlier windows of the call ; itself] with one softmax.

    q `[R, W, heads, d]`; k, v `[R, W, kv_heads, d]` (local keys, rotated where the layer uses RoPE);
    local_mask `[R, W, W]` (causal and padding); memory bound (`PrefixMemory.bind`). Returns `[R, W, heads, d]`.
    """
    rows, w, heads, dim = q.shape
    n, kvh = memory.windows, k.shape[2]
    docs, g = rows // n, query_windows(memory.windows, w)
    blocks, size = n // g, g * w

    def by_block(x: jax.Array) -> jax.Array:  # [R, W, ...] → [blocks, docs, g * W, ...]
        x = x.reshape(docs, blocks, size, *x.shape[2:])
        return jnp.moveaxis(x, 1, 0)

    qb = by_block(q.reshape(rows, w, kvh, heads // kvh, dim))
    kb, vb = by_block(k), by_block(v)
    # block-diagonal local mask of a block's g windows: [blocks, docs, g * W, g * W]
    same = jnp.eye(g, dtype=bool)[None, None, :, None, :, None]
    lm = local_mask.reshape(docs, blocks, g, w, 1, w) & same
    lm = jnp.moveaxis(lm.reshape(docs, blocks, size, size), 1, 0)
    # the call's earlier windows, flattened per document: [docs, n * W, kv_heads, d]
    mem_k = memory.keys.reshape(docs, n * w, kvh, dim)
    mem_v = memory.values.reshape(docs, n * w, kvh, dim)
    key_ok = memory.mask.reshape(docs, 1, n * w)
    key_window = jnp.arange(n * w) // w
    chunk = flash_chunk(kv_chunk, docs, heads, size)
    store = memory.store

    def block(xs):
        j, qj, kj, vj, lmj = xs
        q_window = j * g + jnp.arange(size) // w  # [g * W]
        earlier = (key_window[None, None, :] < q_window[None, :, None]) & key_ok  # [docs, g * W, n * W]
        sets = [(mem_k, mem_v, earlier), (kj, vj, lmj)]
        limits = [(j * g + g - 1) * w, None]  # keys from the block's last window on are never seen
        layouts = [False, False]
        if store is not None:
            sets.insert(0, (store.keys, store.values, store.mask[:, None, :]))
            limits.insert(0, store.filled)
            layouts.insert(0, store.heads_major)
        return flash_attention_sets(qj, tuple(sets), chunk, tuple(limits), tuple(layouts))

    out = jax.lax.map(block, (jnp.arange(blocks), qb, kb, vb, lm))  # [blocks, docs, g * W, kvh, g', d]
    return jnp.moveaxis(out, 0, 1).reshape(rows, w, heads, dim)
