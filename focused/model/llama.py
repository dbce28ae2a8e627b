"""The LLaMA / LongLLaMA decoder in Flax NNX.

Attribute paths mirror Hugging Face `LlamaForCausalLM` so every parameter has one obvious torch name:
`model.embed_tokens.embedding` ↔ `model.embed_tokens.weight`, `model.layers.{i}.self_attn.q_proj.kernel` ↔
`model.layers.{i}.self_attn.q_proj.weight` (transposed), `model.norm.weight`, `lm_head.kernel` ↔ `lm_head.weight`.

One call processes one window of at most `max_position_embeddings` tokens. Memory layers take a `MemoryBlock`
each (`memory`, ordered as `config.mem_layers`) and hand back the window's raw keys/values (`memory_kv`) for the
caller to append; `focused.memory.dense` runs the window-by-window loop over long inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from focused.memory.core import MemoryBlock, causal_mask
from focused.memory.crossbatch import CrossBatch
from focused.memory.prefix import PrefixMemory
from focused.model.attention import Attention, RopeTables, WindowKV, dense
from focused.model.config import LlamaConfig, resolve_dtype
from focused.model.rope import rope_cos_sin, rope_frequencies


class RMSNorm(nnx.Module):
    """x / rms(x) * weight, with the statistics in float32 (as LLaMA does); `weight` is `[hidden]`."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        del rngs
        self.eps = config.rms_norm_eps
        self.weight = nnx.Param(
            jnp.ones((config.hidden_size,), resolve_dtype(config.param_dtype)), logical_axes=("norm",)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * normed.astype(x.dtype)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); `[batch, seq, hidden]` → same."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        e, f = config.hidden_size, config.intermediate_size
        self.gate_proj = dense(config, e, f, ("embed", "mlp"), rngs)
        self.up_proj = dense(config, e, f, ("embed", "mlp"), rngs)
        self.down_proj = dense(config, f, e, ("mlp", "embed"), rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(config, rngs=rngs)
        self.self_attn = Attention(config, layer_idx, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        rope: RopeTables,
        mask: jax.Array,
        memory: MemoryBlock | CrossBatch | PrefixMemory | None,
        cache: WindowKV | None,
        cache_index: jax.Array | int,
        query_positions: jax.Array | None = None,
        query_stride: int = 1,
    ) -> tuple[jax.Array, WindowKV | None, WindowKV | None]:
        """x `[batch, seq, hidden]` → (`[batch, seq, hidden]`, or `[batch / query_stride, n, hidden]` at
        `query_positions` `[batch / query_stride, n]` of rows query_stride-1, 2·query_stride-1, … only: keys and
        values still come from every position of every row, the rest only from those)."""
        h = self.input_layernorm(x)
        attn, kv, cache = self.self_attn(h, rope, mask, memory, cache, cache_index, query_positions, query_stride)
        x = x[query_stride - 1 :: query_stride]
        if query_positions is not None:
            x = jnp.take_along_axis(x, query_positions[..., None], axis=1)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), kv, cache


def _run_layer(
    layer: DecoderLayer,
    x: jax.Array,
    rope: RopeTables,
    mask: jax.Array,
    memory: MemoryBlock | CrossBatch | PrefixMemory | None,
    cache: WindowKV | None,
    cache_index: jax.Array | int,
    query_positions: jax.Array | None = None,
    query_stride: int = 1,
) -> tuple[jax.Array, WindowKV | None, WindowKV | None]:
    return layer(x, rope, mask, memory, cache, cache_index, query_positions, query_stride)


class LocalCache(NamedTuple):
    """The local (windowed) key/value cache used while generating: raw keys in memory layers (they move into
    memory when the cache is full; rotated on use), keys rotated at their slot's position in the other layers.

    keys: one `[batch * kv_heads, size, head_dim]` per layer, values: one `[batch * kv_heads, head_dim, size]` per
        layer (size = max_position_embeddings): laid out so that one query reads each as a matrix-vector product
        over contiguous rows, and kept per layer in the reading dots' own shapes so that each is updated in place
        and read without a copy (XLA:CPU would otherwise transpose, slice out or copy every layer's cache for
        every decoded token)
    valid: `[batch, size]` bool; length: `[]` int32 slots in use (the same for every row).
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    valid: jax.Array
    length: jax.Array


class LlamaModel(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed_tokens = nnx.Embed(
            config.vocab_size,
            config.hidden_size,
            dtype=resolve_dtype(config.dtype),
            param_dtype=resolve_dtype(config.param_dtype),
            embedding_init=nnx.initializers.normal(config.initializer_range),
            embedding_metadata={"logical_axes": ("vocab", "embed")},
            rngs=rngs,
        )
        self.layers = nnx.List([DecoderLayer(config, i, rngs=rngs) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config, rngs=rngs)
        inv_freq, factor = rope_frequencies(
            config.head_size, config.rope_theta, config.rope_scaling, config.max_position_embeddings
        )
        # static (not a Variable): derived from the config, never trained or saved
        self.inv_freq = tuple(float(f) for f in inv_freq)
        self.rope_attention_factor = factor

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        memory: Sequence[MemoryBlock | None] | CrossBatch | None = None,
        inputs_embeds: jax.Array | None = None,
        cache: LocalCache | None = None,
        output_positions: jax.Array | None = None,
        output_stride: int = 1,
    ) -> tuple[jax.Array, tuple[WindowKV, ...], LocalCache | None]:
        """input_ids `[batch, seq]` (or inputs_embeds `[batch, seq, hidden]`) → (hidden `[batch, seq, hidden]`,
        raw K/V of each memory layer, updated cache).

        Without a cache the window attends causally to itself at positions 0..seq-1 (or `positions`). With a
        cache the window is written at slots length..length+seq-1 and attends to every valid slot up to its own.

        output_positions `[batch, n]` int in 0..seq-1: hidden is `[batch, n, hidden]`, the states at those
        positions. The last layer then runs its queries, residual and MLP only there (its keys and values, and
        every earlier layer, still at every position): exact, since the last layer's output at a position feeds
        nothing but that position's logits. A loss on few positions per window (dictionary lookup, passkey
        tuning) thereby skips most of the last layer, which under CrossBatch is a memory read of r windows.
        output_stride s > 1: output_positions `[batch / s, n]` are positions of rows s-1, 2s-1, … only (a loss on
        the last row of each k-group, as dictionary lookup's query rows): the last layer skips the other rows.
        """
        cfg = self.config
        mask, rope, valid = self._local_attention(input_ids.shape[:2], attention_mask, positions, cache)
        if isinstance(memory, CrossBatch):
            memory = (memory,) * len(cfg.mem_layers)
        if memory is not None and len(memory) != len(cfg.mem_layers):
            raise ValueError(f"got {len(memory)} memory blocks for {len(cfg.mem_layers)} memory layers")
        mem_by_layer = dict(zip(cfg.mem_layers, memory or (None,) * len(cfg.mem_layers), strict=True))
        run = nnx.remat(_run_layer, static_argnums=(8,)) if cfg.remat else _run_layer
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        new_kv: list[WindowKV] = []
        # every layer writes its own cache buffers in place
        index = 0 if cache is None else cache.length
        new_keys, new_values = [], []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            own = None if cache is None else WindowKV(cache.keys[i], cache.values[i])
            where, stride = (output_positions, output_stride) if i == last else (None, 1)
            x, kv, own = run(layer, x, rope, mask, mem_by_layer.get(i), own, index, where, stride)
            if kv is not None:
                new_kv.append(kv)
            if own is not None:
                new_keys.append(own.keys)
                new_values.append(own.values)
        out_cache = None
        if cache is not None:
            out_cache = LocalCache(tuple(new_keys), tuple(new_values), valid, cache.length + input_ids.shape[1])
        return self.norm(x), tuple(new_kv), out_cache

    def memory_kv(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None,
        memory: Sequence[MemoryBlock | PrefixMemory | None] | None,
    ) -> tuple[WindowKV, ...]:
        """Only what a window adds to memory: the raw K/V `[batch, seq, kv_heads, head_dim]` of each memory layer,
        equal to `__call__(...)[1]`.

        The layers after the last memory layer and that layer's own attention are skipped: their outputs reach
        neither a memory layer's keys/values nor anything else when the window's hidden states are not needed (a
        prompt's prefix windows). With one memory layer this makes reading a long prompt linear in its length.
        """
        if not self.config.mem_layers:
            return ()
        x, earlier = self.last_memory_layer_input(input_ids, attention_mask, memory)
        last_layer = self.layers[max(self.config.mem_layers)]
        return (*earlier, last_layer.self_attn.raw_kv(x))

    def last_memory_layer_input(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None,
        memory: Sequence[MemoryBlock | PrefixMemory | None] | None,
    ) -> tuple[jax.Array, tuple[WindowKV, ...]]:
        """(the normed input of the last memory layer's attention `[batch, seq, hidden]`, the raw K/V of the memory
        layers before it): the layers below run as in `__call__`, the layer itself and those above do not."""
        cfg = self.config
        if not cfg.mem_layers:
            raise ValueError("the model has no memory layers (config.mem_layers is empty)")
        mask, rope, _ = self._local_attention(input_ids.shape[:2], attention_mask, None, None)
        memory = memory or (None,) * len(cfg.mem_layers)
        if len(memory) != len(cfg.mem_layers):
            raise ValueError(f"got {len(memory)} memory blocks for {len(cfg.mem_layers)} memory layers")
        mem_by_layer = dict(zip(cfg.mem_layers, memory, strict=True))
        last = max(cfg.mem_layers)
        x = self.embed_tokens(input_ids)
        earlier: list[WindowKV] = []
        for i, layer in enumerate(self.layers[:last]):
            x, kv, _ = layer(x, rope, mask, mem_by_layer.get(i), None, 0)
            if kv is not None:
                earlier.append(kv)
        return self.layers[last].input_layernorm(x), tuple(earlier)

    def _local_attention(
        self,
        shape: tuple[int, int],
        attention_mask: jax.Array | None,
        positions: jax.Array | None,
        cache: LocalCache | None,
    ) -> tuple[jax.Array, RopeTables, jax.Array | None]:
        """(local mask `[batch, seq, keys]`, RoPE tables, the cache's updated valid slots or None) of a window of
        `shape` = (batch, seq): causal at positions 0..seq-1 (or `positions`), or written into the cache."""
        b, t = shape
        key_valid = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
        inv_freq = np.asarray(self.inv_freq, np.float32)
        valid = None
        if cache is None:
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
            mask = causal_mask(key_valid)
            cos, sin = rope_cos_sin(positions, inv_freq, self.rope_attention_factor)
            rope = RopeTables(cos, sin, cos, sin)
        else:
            size = cache.valid.shape[1]
            slots = jnp.arange(size, dtype=jnp.int32)
            q_pos = cache.length + jnp.arange(t, dtype=jnp.int32)
            valid = jax.lax.dynamic_update_slice(cache.valid, key_valid, (0, cache.length))
            mask = (slots[None, None, :] <= q_pos[None, :, None]) & valid[:, None, :]
            q_cos, q_sin = rope_cos_sin(jnp.broadcast_to(q_pos, (b, t)), inv_freq, self.rope_attention_factor)
            k_cos, k_sin = rope_cos_sin(jnp.broadcast_to(slots, (b, size)), inv_freq, self.rope_attention_factor)
            rope = RopeTables(q_cos, q_sin, k_cos, k_sin)
        return mask, rope, valid


class CausalLMOutput(NamedTuple):
    logits: jax.Array  # [batch, seq, vocab] float32
    memory_kv: tuple[WindowKV, ...]  # one per memory layer: the window's raw keys/values
    cache: LocalCache | None = None  # the updated local cache when one was given


class LlamaForCausalLM(nnx.Module):
    """Decoder + untied (or tied) lm_head. Call on one window; see `focused.memory.dense` for long inputs."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.model = LlamaModel(config, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = dense(config, config.hidden_size, config.vocab_size, ("embed", "vocab"), rngs)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        memory: Sequence[MemoryBlock | None] | CrossBatch | None = None,
        inputs_embeds: jax.Array | None = None,
        cache: LocalCache | None = None,
        logit_positions: jax.Array | None = None,
        output_positions: jax.Array | None = None,
        output_stride: int = 1,
    ) -> CausalLMOutput:
        """input_ids `[batch, seq]` int, attention_mask `[batch, seq]` (1 = token, 0 = padding),
        positions `[batch, seq]` (default 0..seq-1), memory: one `MemoryBlock` per memory layer, a `CrossBatch`
        spec (training: memory layers attend to earlier rows of the batch), or None; cache: a `LocalCache`
        (generation, see focused.generate); logit_positions: `[k]` int indices into the window: the lm_head runs
        only there, and the last decoder layer's queries too, and logits are `[batch, k, vocab]` (None = every
        position): decoding and `forward_long(logits="last")` skip the full-vocabulary projection, the largest
        matmul of a small model, elsewhere.
        output_positions: `[batch, n]` int, per row (training on a sparse loss, `focused.training.step`): logits
        are `[batch, n, vocab]` and the last decoder layer runs only there too (`LlamaModel`); with
        output_stride s > 1 only for rows s-1, 2s-1, …: `[batch / s, n]` → logits `[batch / s, n, vocab]`."""
        if logit_positions is not None and output_positions is not None:
            raise ValueError("pass logit_positions (shared by all rows) or output_positions (per row), not both")
        if output_stride > 1 and output_positions is None:
            raise ValueError("output_stride > 1 needs output_positions (the positions of the rows it keeps)")
        at = None if logit_positions is None else jnp.asarray(logit_positions, jnp.int32)
        if at is not None and at.shape[0]:  # the same positions in every row
            output_positions = jnp.broadcast_to(at[None], (input_ids.shape[0], at.shape[0]))
        hidden, kv, cache = self.model(
            input_ids, attention_mask, positions, memory, inputs_embeds, cache, output_positions, output_stride
        )
        if at is not None and not at.shape[0]:  # no logits wanted, only the memory K/V and the cache
            hidden = hidden[:, :0]
        if self.config.tie_word_embeddings:
            logits = self.model.embed_tokens.attend(hidden)
        else:
            logits = self.lm_head(hidden)
        return CausalLMOutput(logits.astype(jnp.float32), kv, cache)
