"""Self-attention of one decoder block, with the FoT memory path for layers listed in `mem_layers`.

Every layer runs causal attention with RoPE inside its window. A memory layer additionally attends to a
`MemoryBlock` (earlier windows, or earlier rows under CrossBatch) through the shared core in
`focused.memory.core`, and returns its window's raw keys/values so the caller can append them to memory.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from focused.memory.core import MemoryBlock, Retriever, memory_attention
from focused.memory.crossbatch import CrossBatch
from focused.memory.prefix import PrefixMemory
from focused.model.config import LlamaConfig, resolve_dtype
from focused.model.rope import apply_rope


class Dense(nnx.Linear):
    """`nnx.Linear` applied to `[..., d_in]` as one `[tokens, d_in]` matrix: the leading axes are merged first (free).

    The weight gradient then contracts one token axis instead of (batch, seq). XLA:CPU lays a two-axis
    contraction out as a transposing copy fused with the elementwise producer of its operand, which cost a
    third of a train step (bench/RESULTS.md section 11); a one-axis contraction is read in place by the GEMM.
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:
        lead = inputs.shape[:-1]
        out = super().__call__(inputs.reshape(-1, inputs.shape[-1]))
        return out.reshape(*lead, out.shape[-1])


def dense(config: LlamaConfig, d_in: int, d_out: int, axes: tuple[str, str], rngs: nnx.Rngs) -> Dense:
    """A bias-free projection; its kernel `[d_in, d_out]` (torch weight transposed) carries logical axis names."""
    return Dense(
        d_in,
        d_out,
        use_bias=False,
        dtype=resolve_dtype(config.dtype),
        param_dtype=resolve_dtype(config.param_dtype),
        kernel_init=nnx.initializers.normal(config.initializer_range),
        kernel_metadata={"logical_axes": axes},
        rngs=rngs,
    )


class WindowKV(NamedTuple):
    """A memory layer's contribution to memory from one window.

    keys, values: `[batch, seq, kv_heads, head_dim]`; keys un-rotated (as if at position 0).
    """

    keys: jax.Array
    values: jax.Array


class Attention(nnx.Module):
    """Multi-head attention with grouped-query key/value heads and optional memory."""

    def __init__(self, config: LlamaConfig, layer_idx: int, *, rngs: nnx.Rngs):
        self.config = config
        self.layer_idx = layer_idx
        self.is_memory_layer = layer_idx in config.mem_layers
        # LongLLaMA's NoPE variant: no RoPE at all inside memory layers
        self.use_rope = not (self.is_memory_layer and not config.mem_positionals)
        # the local cache keeps raw keys only where they move into memory (memory layers); the other layers keep
        # them rotated (a slot's position never changes while it is in the cache), so reads need no RoPE
        self.cache_rotated = self.use_rope and not self.is_memory_layer
        e, h, kv, d = config.hidden_size, config.num_attention_heads, config.kv_heads, config.head_size
        self.q_proj = dense(config, e, h * d, ("embed", "heads"), rngs)
        self.k_proj = dense(config, e, kv * d, ("embed", "kv_heads"), rngs)
        self.v_proj = dense(config, e, kv * d, ("embed", "kv_heads"), rngs)
        self.o_proj = dense(config, h * d, e, ("heads", "embed"), rngs)

    def __call__(
        self,
        x: jax.Array,
        rope: RopeTables,
        local_mask: jax.Array,
        memory: MemoryBlock | CrossBatch | PrefixMemory | Retriever | None = None,
        cache: WindowKV | None = None,
        cache_index: jax.Array | int = 0,
        query_positions: jax.Array | None = None,
        query_stride: int = 1,
    ) -> tuple[jax.Array, WindowKV | None, WindowKV | None]:
        """x `[batch, seq, hidden]`; local_mask `[batch, seq, keys]` bool where keys = seq, or the cache size.

        memory: a MemoryBlock (inference, dense or top-k), a Retriever (inference, kNN index), a CrossBatch spec
        (training; built from this window's own raw keys and values of earlier rows), or None.
        cache: this layer's part of the local cache (`LocalCache`): keys `[batch * kv_heads, cache_size, head_dim]`
        (raw in memory layers, rotated at their slot's position in the others) and values `[batch * kv_heads,
        head_dim, cache_size]`; the window's keys/values are written into it in place at `cache_index` and
        attention runs over the whole buffer (masked by local_mask).
        query_positions: `[batch / query_stride, n]` int (in 0..seq-1): queries only at these positions of each row,
        against every key (see `focused.model.llama`); the output is then `[batch / query_stride, n, hidden]`.
        query_stride: s > 1 = queries only in rows s-1, 2s-1, … (a loss only on the last row of each k-group;
        with CrossBatch memory or none). Keys and values, and CrossBatch memory, still come from every row.
        Returns (output `[batch, seq, hidden]`, or `[batch / query_stride, n, hidden]`, the window's raw
        keys/values if this is a memory layer else None, the updated cache or None).
        """
        cfg = self.config
        key_valid = local_mask[:, -1, :]  # [batch, keys]: the last query's row of a causal mask
        x_q, stride = x, query_stride
        window_rope = rope  # the window's own positions (a rotated cache writes its keys there)
        if stride > 1:
            if cache is not None or not (memory is None or isinstance(memory, CrossBatch)):
                raise ValueError("query_stride > 1 is for training (CrossBatch memory or none), not for inference")
            x_q, local_mask = x[stride - 1 :: stride], local_mask[stride - 1 :: stride]
            rope = rope._replace(q_cos=rope.q_cos[stride - 1 :: stride], q_sin=rope.q_sin[stride - 1 :: stride])
        if query_positions is not None:
            at = query_positions[..., None]
            x_q = jnp.take_along_axis(x_q, at, axis=1)
            local_mask = jnp.take_along_axis(local_mask, at, axis=1)
            rope = rope._replace(
                q_cos=jnp.take_along_axis(rope.q_cos, at, axis=1), q_sin=jnp.take_along_axis(rope.q_sin, at, axis=1)
            )
        b, t, _ = x.shape
        q = self.q_proj(x_q).reshape(*x_q.shape[:2], cfg.num_attention_heads, cfg.head_size)
        k, v = self.raw_kv(x)
        raw = WindowKV(k, v) if self.is_memory_layer else None
        new_cache = None
        if cache is not None:  # written in place into this layer's own buffers (no copies)
            # [b * kvh, t, d] and [b * kvh, d, t]: the buffers have the shape the reading dots use, so no reshape
            # stands between the in-place update and the reads (XLA:CPU would copy the buffer for one)
            kvh, d = cfg.kv_heads, cfg.head_size
            if self.cache_rotated:  # the new slots sit at the queries' positions
                k = apply_rope(k, window_rope.q_cos, window_rope.q_sin)
            k_t = jnp.swapaxes(k, 1, 2).reshape(b * kvh, t, d).astype(cache.keys.dtype)
            v_t = jnp.transpose(v, (0, 2, 3, 1)).reshape(b * kvh, d, t).astype(cache.values.dtype)
            new_cache = WindowKV(
                jax.lax.dynamic_update_slice(cache.keys, k_t, (0, cache_index, 0)),
                jax.lax.dynamic_update_slice(cache.values, v_t, (0, 0, cache_index)),
            )
            size = cache.keys.shape[1]
            k, v = new_cache.keys.reshape(b, kvh, size, d), new_cache.values.reshape(b, kvh, d, size)
        if self.use_rope:
            q = apply_rope(q, rope.q_cos, rope.q_sin)
            if cache is None:
                k = apply_rope(k, rope.k_cos, rope.k_sin)
            elif not self.cache_rotated:
                k = apply_rope(k, rope.k_cos, rope.k_sin, heads_axis=1)
        if memory is not None and not self.is_memory_layer:
            raise ValueError(f"layer {self.layer_idx} is not a memory layer but was given memory")
        if isinstance(memory, CrossBatch) and memory.range == 0:  # no earlier rows: exactly the plain layer
            memory = None
        # Reading memory (a store's, or CrossBatch's earlier rows) may use another kernel than local attention; a
        # single-token decoding step reads memory and cache with the reference kernel (faster for one query on CPU).
        impl = cfg.memory_read_impl if isinstance(memory, (MemoryBlock, CrossBatch)) else cfg.attention_impl
        if t == 1:
            impl = "reference"
        if isinstance(memory, CrossBatch):  # training: memory = earlier rows of this batch, un-rotated
            memory = memory.rolled(raw.keys, raw.values, key_valid)
        elif isinstance(memory, PrefixMemory):  # ingest: this call's earlier windows, as the store would hold them
            memory = memory.bind(raw.keys, raw.values, key_valid, resolve_dtype(cfg.mem_dtype))
        elif isinstance(memory, Retriever):  # kNN index: each query fetches its own neighbours
            memory = memory.retrieve(q)
        chunk = cfg.mem_attention_grouping[1] if cfg.mem_attention_grouping else None
        if stride > 1:  # the query rows' own windows
            k, v = k[stride - 1 :: stride], v[stride - 1 :: stride]
        out = memory_attention(
            q,
            k,
            v,
            local_mask,
            memory,
            query_chunk=chunk,
            impl=impl,
            kv_chunk=cfg.attention_chunk,
            local_heads_major=cache is not None,
            query_stride=stride,
        )
        return self.o_proj(out.reshape(*q.shape[:2], -1)), raw, new_cache

    def raw_kv(self, x: jax.Array) -> WindowKV:
        """The un-rotated keys and values `[batch, seq, kv_heads, head_dim]` of x `[batch, seq, hidden]` (a memory
        layer's keys RMS-normalised per head when `config.mem_key_norm`)."""
        cfg = self.config
        b, t, _ = x.shape
        shape = (b, t, cfg.kv_heads, cfg.head_size)
        k = self.k_proj(x).reshape(shape)
        if cfg.mem_key_norm and self.is_memory_layer:
            k32 = k.astype(jnp.float32)
            k = (k32 * jax.lax.rsqrt(jnp.mean(k32 * k32, axis=-1, keepdims=True) + cfg.rms_norm_eps)).astype(k.dtype)
        return WindowKV(k, self.v_proj(x).reshape(shape))


class RopeTables(NamedTuple):
    """cos/sin `[batch, seq, head_dim]` for the queries and `[batch, keys, head_dim]` for the keys."""

    q_cos: jax.Array
    q_sin: jax.Array
    k_cos: jax.Array
    k_sin: jax.Array
