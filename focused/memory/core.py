"""The memory-attention core: the one function every memory layer calls.

CrossBatch training (memory = the keys/values of the previous rows of the batch) and inference (memory = the
keys/values of the previous windows of the same document, from a cache) both build a `MemoryBlock` and call
`memory_attention`, so what is trained and what is served cannot drift apart.

What it computes (DESIGN §3), per batch row b, head h and query position t:

    s_mem[m]   = <q_t, K_mem[m]> / sqrt(d) + (0 if mem_mask[m] else -inf)      memory keys are un-rotated
    s_loc[s]   = <q_t, K_loc[s]> / sqrt(d) + (0 if local_mask[t, s] else -inf)  causal (and padding) mask
    w          = softmax([s_mem ; s_loc])                                    ONE softmax, in float32
    out_t      = sum_m w_mem[m] V_mem[m] + sum_s w_loc[s] V_loc[s]

With no memory it is ordinary (grouped-query) attention. Key/value heads are shared by groups of
`heads // kv_heads` query heads (grouped-query attention); memory is kept per key/value head. With
`mem_key_norm` (ours, not LongLLaMA's) a memory layer's keys, local and memory alike, arrive here RMS-normalised per
head (`Attention.raw_kv`): this function does not change.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from focused.memory.prefix import PrefixMemory

MASKED = float(jnp.finfo(jnp.float32).min)
# CrossBatch ranges from which the flash path reads memory by blocks of rows (`focused.memory.banded`) instead of
# one rolled window at a time
BANDED_MIN_RANGE = 32
IMPLS = ("reference", "flash")
# The flash kernel's score block per key chunk, `[batch, heads, queries, chunk]`: few queries (a small model's short
# window) read a long memory in fewer, larger chunks, each loop step costing more than its arithmetic on CPU
# (small model, 64 queries over 8K slots: 9.0 ms a window with chunks of 512, 5.1 ms with one chunk of 8192).
SCORE_BLOCK = 1 << 21


def flash_chunk(kv_chunk: int, batch: int, heads: int, queries: int) -> int:
    """Keys per chunk of the flash kernel: at least `kv_chunk`, grown to about SCORE_BLOCK scores per block."""
    return max(kv_chunk, SCORE_BLOCK // (batch * heads * queries))


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["keys", "values", "mask", "filled", "bias"],
    meta_fields=["top_k", "heads_major"],
)
@dataclasses.dataclass(frozen=True)
class MemoryBlock:
    """What a memory layer attends to beyond its local window.

    keys:   `[batch, mem, kv_heads, head_dim]`, un-rotated (RoPE "as if at position 0"), any dtype (mem_dtype)
    values: `[batch, mem, kv_heads, head_dim]`
    mask:   `[batch, mem]` bool, True where the slot holds a real (non-padding) token
    top_k:  static; None = attend to all of it (dense), k = each query keeps its k best scores (exact top-k)
    heads_major: static; True = keys laid out `[batch, kv_heads, mem, head_dim]` and values `[batch, kv_heads,
            head_dim, mem]` (`heads_major()`), for a memory read many times unchanged (every decoding step):
            each read is then a matrix-vector product over contiguous rows (keys for the scores, values for the
            weighted sum), which XLA:CPU does without transposing the whole buffer first; the flash kernel
            reads each head's chunk in place. Dense memory stores keep this layout (`focused.memory.dense`).
    filled: None, or an int32 scalar: slots from `filled` on are all masked (a buffer filled from slot 0), so the
            flash kernel reads only the chunks below it (one compiled program for every fill level).
    bias:   None, or `[batch, mem]` float32 added to the slots' scores (CrossBatch's weighted distractors, training
            only; read by the reference attention).
    """

    keys: jax.Array
    values: jax.Array
    mask: jax.Array
    top_k: int | None = None
    heads_major: bool = False
    filled: jax.Array | None = None
    bias: jax.Array | None = None

    @property
    def kv_heads(self) -> int:
        return self.keys.shape[1 if self.heads_major else 2]


def heads_major(block: MemoryBlock) -> MemoryBlock:
    """The same memory with keys `[batch, kv_heads, mem, head_dim]` and values `[batch, kv_heads, head_dim, mem]`
    (one transpose, then none per read)."""
    if block.heads_major:
        return block
    keys, values = jnp.moveaxis(block.keys, 2, 1), jnp.transpose(block.values, (0, 2, 3, 1))
    return MemoryBlock(keys, values, block.mask, block.top_k, heads_major=True, filled=block.filled, bias=block.bias)


class RolledMemory(NamedTuple):
    """CrossBatch memory (training) before it is laid out: row i sees row i-1-j's window where `visible[i, j]`.

    keys, values: `[batch, seq, kv_heads, head_dim]` (the layer's own raw window keys/values); mask: `[batch, seq]`
    bool (valid keys of each row's window); visible: `[batch, range]` bool; bias: None or `[batch, range]` float32
    added to the scores of row i's keys from row i-1-j (`CrossBatch.distractor_weight`). The flash kernel reads it
    in place, one rolled window per loop step; `materialize()` builds the equivalent `MemoryBlock`
    (`[batch, range * seq, ...]`).
    """

    keys: jax.Array
    values: jax.Array
    mask: jax.Array
    visible: jax.Array
    bias: jax.Array | None = None

    @property
    def kv_heads(self) -> int:
        return self.keys.shape[2]

    def materialize(self) -> MemoryBlock:
        """Block j of row i's memory holds row i-1-j (rolled along the batch axis; wrapped rows are not visible)."""
        seq = self.mask.shape[1]
        shifts = range(1, self.visible.shape[1] + 1)
        if not shifts:
            return MemoryBlock(self.keys[:, :0], self.values[:, :0], self.mask[:, :0])
        keys = jnp.concatenate([jnp.roll(self.keys, s, axis=0) for s in shifts], axis=1)
        values = jnp.concatenate([jnp.roll(self.values, s, axis=0) for s in shifts], axis=1)
        valid = jnp.concatenate([jnp.roll(self.mask, s, axis=0) for s in shifts], axis=1)
        bias = None if self.bias is None else jnp.repeat(self.bias, seq, axis=1)
        return MemoryBlock(keys, values, valid & jnp.repeat(self.visible, seq, axis=1), bias=bias)


class RetrievedMemory(NamedTuple):
    """Per-query memory: each query head's nearest memory entries (from a kNN index such as FAISS).

    keys, values: `[batch, seq, heads, k, head_dim]`; mask: `[batch, seq, heads, k]` bool (False = no entry).
    """

    keys: jax.Array
    values: jax.Array
    mask: jax.Array


@runtime_checkable
class Retriever(Protocol):
    """A kNN memory searched with the layer's queries (e.g. FAISS on the host, `focused.memory.knn`)."""

    def retrieve(self, queries: jax.Array) -> RetrievedMemory:
        """queries `[batch, seq, heads, head_dim]` (rotated as for attention) → each query's neighbours."""
        ...


def causal_mask(key_valid: jax.Array) -> jax.Array:
    """Causal mask with padding for one window: key_valid `[batch, seq]` bool → `[batch, seq, seq]` bool.

    Query t may attend to key s when s <= t and key s is not padding. Queries themselves are never masked (a
    fully masked row would make the softmax meaningless); outputs at padding positions are simply not used.
    """
    seq = key_valid.shape[-1]
    tri = jnp.tril(jnp.ones((seq, seq), dtype=bool))
    return tri[None] & key_valid[:, None, :]


def _memory_scores(
    q: jax.Array, memory: MemoryBlock | RetrievedMemory, scale: float, top_k: int | None
) -> tuple[jax.Array, jax.Array]:
    """Scores `[b, kvh, g, t, m]` (masked) and the matching values `[b, kvh, g, t, m, d]`, or the block's own
    values (`[b, m, kvh, d]`, or `[b, kvh, d, m]` heads-major)."""
    f32 = jnp.float32
    if isinstance(memory, RetrievedMemory):  # per-query neighbours from a kNN index
        b, t, _, n, d = memory.keys.shape
        kvh, g = q.shape[2], q.shape[3]
        keys = memory.keys.reshape(b, t, kvh, g, n, d).astype(q.dtype)
        s_mem = jnp.einsum("btkgd,btkgnd->bkgtn", q, keys, preferred_element_type=f32) * scale
        mask = memory.mask.reshape(b, t, kvh, g, n).transpose(0, 2, 3, 1, 4)
        values = memory.values.reshape(b, t, kvh, g, n, d).transpose(0, 2, 3, 1, 4, 5)
        return jnp.where(mask, s_mem, MASKED), values
    spec = "btkgd,bkmd->bkgtm" if memory.heads_major else "btkgd,bmkd->bkgtm"
    s_mem = jnp.einsum(spec, q, memory.keys.astype(q.dtype), preferred_element_type=f32) * scale
    if memory.bias is not None:
        s_mem = s_mem + memory.bias[:, None, None, None, :]
    s_mem = jnp.where(memory.mask[:, None, None, None, :], s_mem, MASKED)
    if top_k is None or top_k >= s_mem.shape[-1]:
        return s_mem, memory.values
    s_top, idx = jax.lax.top_k(s_mem, top_k)  # [b, kvh, g, t, k]
    if memory.heads_major:  # [b, kvh, d, m]: gather columns
        values = jax.vmap(jax.vmap(lambda v, i: jnp.moveaxis(v[:, i], 0, -1)))(memory.values, idx)
    else:
        values = jax.vmap(jax.vmap(lambda v, i: v[i]))(jnp.moveaxis(memory.values, 2, 1), idx)
    # values: [b, kvh, g, t, k, d]
    return s_top, values


def _attend_chunk(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    local_mask: jax.Array,
    memory: MemoryBlock | RetrievedMemory | None,
    scale: float,
    top_k: int | None = None,
    local_heads_major: bool = False,
) -> jax.Array:
    """q `[b, t, kvh, g, d]`, k/v `[b, s, kvh, d]` (heads-major: k `[b, kvh, s, d]`, v `[b, kvh, d, s]`),
    local_mask `[b, t, s]` → `[b, t, kvh, g, d]`."""
    f32 = jnp.float32
    k_spec, v_spec = ("bksd", "bkds") if local_heads_major else ("bskd", "bskd")
    s_loc = jnp.einsum(f"btkgd,{k_spec}->bkgts", q, k, preferred_element_type=f32) * scale
    s_loc = jnp.where(local_mask[:, None, None], s_loc, MASKED)
    if memory is None:
        w_loc = jax.nn.softmax(s_loc, axis=-1)
        return jnp.einsum(f"bkgts,{v_spec}->btkgd", w_loc.astype(v.dtype), v)
    s_mem, mem_v = _memory_scores(q, memory, scale, top_k)
    n_mem = s_mem.shape[-1]
    w = jax.nn.softmax(jnp.concatenate([s_mem, s_loc], axis=-1), axis=-1)
    w_mem, w_loc = w[..., :n_mem].astype(v.dtype), w[..., n_mem:].astype(v.dtype)
    if mem_v.ndim == 4:  # shared memory [b, m, kvh, d] (or [b, kvh, d, m] heads-major)
        spec = "bkgtm,bkdm->btkgd" if memory.heads_major else "bkgtm,bmkd->btkgd"
        out = jnp.einsum(spec, w_mem, mem_v.astype(v.dtype))
    else:  # per-query memory [b, kvh, g, t, m, d]
        out = jnp.einsum("bkgtm,bkgtmd->btkgd", w_mem, mem_v.astype(v.dtype))
    return out + jnp.einsum(f"bkgts,{v_spec}->btkgd", w_loc.astype(v.dtype), v)


def memory_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    local_mask: jax.Array,
    memory: MemoryBlock | RetrievedMemory | RolledMemory | PrefixMemory | None = None,
    *,
    query_chunk: int | None = None,
    top_k: int | None = None,
    impl: str = "reference",
    kv_chunk: int = 512,
    local_heads_major: bool = False,
    query_stride: int = 1,
) -> jax.Array:
    """Attention over [memory ; local window] with one float32 softmax.

    Args:
      q: `[batch, seq, heads, head_dim]` queries (rotated when the layer uses positions).
      k, v: `[batch, kv_len, kv_heads, head_dim]` local keys (rotated) and values.
      local_mask: `[batch, seq, kv_len]` bool, True where query t may attend to local key s.
      memory: a `MemoryBlock` (shared by all queries), a `RetrievedMemory` (per-query neighbours from a kNN
        index), a `RolledMemory` (CrossBatch training; materialised unless the flash kernel reads it), a bound
        `PrefixMemory` (a prompt's prefix windows read together, `focused.memory.prefix`; always the flash kernel),
        or None.
      top_k: with a MemoryBlock, keep only each query's top_k memory scores (exact kNN on device) before the
        softmax over [top-k ; local]; None = all of memory (dense).
      query_chunk: process queries in chunks of this many positions (LongLLaMA's `mem_attention_grouping`),
        bounding the `[batch, heads, chunk, mem]` score buffer for long memories.
      impl: "reference" (scores materialised, autodiff backward) or "flash" (`focused.memory.flash`: keys in
        chunks of at least `kv_chunk`, grown to about SCORE_BLOCK scores per chunk when there are few queries;
        online softmax, a hand-written backward that keeps no score tensor). "flash" serves
        plain attention and a dense MemoryBlock (either layout); top-k and retrieved (kNN) memory use the reference.
      local_heads_major: k is `[batch, kv_heads, kv_len, head_dim]` and v `[batch, kv_heads, head_dim, kv_len]`
        (the decoding cache's layout, read by one query without transposing the cache); the flash kernel and
        query chunks get them transposed back.
      query_stride: s > 1 with a `RolledMemory` (CrossBatch with a sparse loss on the last row of each k-group):
        q, k, v and local_mask hold only rows s-1, 2s-1, … of the batch, the memory every row.
    Returns:
      `[batch, seq, heads, head_dim]` in v's dtype.
    """
    batch, seq, heads, dim = q.shape
    chunked = query_chunk is not None and query_chunk < seq and seq % query_chunk == 0
    if local_heads_major and (impl == "flash" or chunked):
        k, v, local_heads_major = jnp.moveaxis(k, 1, 2), jnp.transpose(v, (0, 3, 1, 2)), False
    kv_heads = k.shape[1 if local_heads_major else 2]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot share {kv_heads} key/value heads")
    if isinstance(memory, MemoryBlock) and memory.kv_heads != kv_heads:
        raise ValueError(f"memory has {memory.kv_heads} kv heads, the layer has {kv_heads}")
    scale = dim**-0.5
    qg = q.reshape(batch, seq, kv_heads, heads // kv_heads, dim)
    if isinstance(memory, MemoryBlock) and top_k is None:
        top_k = memory.top_k
    if impl not in IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; use one of {IMPLS}")
    from focused.memory import prefix

    if isinstance(memory, prefix.PrefixMemory):  # a prompt's prefix, many windows per call (ingest)
        return prefix.prefix_attention(q, k, v, local_mask, memory, kv_chunk)
    if isinstance(memory, RolledMemory) and memory.kv_heads != kv_heads:
        raise ValueError(f"memory has {memory.kv_heads} kv heads, the layer has {kv_heads}")
    if isinstance(memory, RolledMemory):
        banded = impl == "flash" and top_k is None and not chunked and memory.visible.shape[1] >= BANDED_MIN_RANGE
        if banded:  # a long CrossBatch range: rows by blocks
            from focused.memory.banded import banded_crossbatch_attention

            local, s = (k, v, local_mask), query_stride
            visible = memory.visible[s - 1 :: s]
            bias = None if memory.bias is None else memory.bias[s - 1 :: s]
            out = banded_crossbatch_attention(qg, memory.keys, memory.values, memory.mask, visible, local, s, bias)
            return out.reshape(batch, seq, heads, dim)
        if impl != "flash" or top_k is not None or chunked or query_stride > 1:
            full, rows = memory.materialize(), slice(query_stride - 1, None, query_stride)
            bias = None if full.bias is None else full.bias[rows]
            memory = MemoryBlock(full.keys[rows], full.values[rows], full.mask[rows], bias=bias)  # query rows
    in_place = isinstance(memory, RolledMemory)  # CrossBatch read in place by the flash kernel
    dense_block = isinstance(memory, MemoryBlock) and top_k is None and memory.bias is None
    if impl == "flash" and (memory is None or dense_block or in_place):
        from focused.memory.flash import flash_attention_sets

        key_sets, limits, layouts = ((k, v, local_mask),), (None,), (False,)
        kv_chunk = flash_chunk(kv_chunk, batch, heads, seq)
        if in_place:
            key_sets, limits, layouts = (memory, *key_sets), (None, None), (False, False)
        elif memory is not None:  # memory and local keys share one softmax without being concatenated
            key_sets = ((memory.keys, memory.values, memory.mask[:, None, :]), *key_sets)
            limits, layouts = (memory.filled, None), (memory.heads_major, False)
        out = flash_attention_sets(qg, key_sets, kv_chunk, limits, layouts)
        return out.reshape(batch, seq, heads, dim)
    if not chunked or isinstance(memory, RetrievedMemory):
        out = _attend_chunk(qg, k, v, local_mask, memory, scale, top_k, local_heads_major)
    else:
        n = seq // query_chunk
        q_chunks = jnp.moveaxis(qg.reshape(batch, n, query_chunk, *qg.shape[2:]), 1, 0)
        m_chunks = jnp.moveaxis(local_mask.reshape(batch, n, query_chunk, -1), 1, 0)
        out = jax.lax.map(lambda qm: _attend_chunk(qm[0], k, v, qm[1], memory, scale, top_k), (q_chunks, m_chunks))
        out = jnp.moveaxis(out, 0, 1).reshape(batch, seq, *qg.shape[2:])
    return out.reshape(batch, seq, heads, dim)
