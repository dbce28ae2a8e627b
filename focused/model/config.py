"""Model configuration: the LLaMA fields (named as in Hugging Face `LlamaConfig`) plus the LongLLaMA / FoT fields.

The same names appear in `configs/*.py` (`config.model.<field>`), in exported `config.json` files and here, so a
field can be followed from a config file to the tensor shapes it decides without a renaming table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from focused.config import checked_fields

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def resolve_dtype(name: str) -> jnp.dtype:
    """Maps a dtype name from a config ("float32", "bfloat16", "float16") to a JAX dtype."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: use one of {sorted(DTYPES)}")
    return jnp.dtype(DTYPES[name])


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """A LLaMA / LongLLaMA decoder.

    Attributes follow Hugging Face `LlamaConfig` / LongLLaMA `LongLlamaConfig` names. Extra fields that are ours:
    `param_dtype` (storage of parameters), `dtype` (compute), `remat` (rematerialise each block in backward),
    `attention_impl` / `attention_chunk` (the attention kernel: "reference" or chunked "flash"),
    `memory_read_impl` (the kernel when a memory layer reads memory: a memory store's `MemoryBlock` in ingest,
    `forward_long` and prompts, and the CrossBatch memory of earlier rows in training; "flash" by default, which
    skips the `[heads, t, memory]` score tensor, reads CrossBatch memory in place and a long memory about twice as
    fast on CPU; single-token decoding steps always use "reference", the faster kernel for one query).
    """

    vocab_size: int = 32000
    hidden_size: int = 3200
    intermediate_size: int = 8640
    num_hidden_layers: int = 26
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None = num_attention_heads (no grouped-query attention)
    head_dim: int | None = None  # None = hidden_size // num_attention_heads
    max_position_embeddings: int = 2048  # the local window W
    rope_theta: float = 10000.0
    rope_scaling: Mapping[str, Any] | None = None  # see focused.model.rope
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    # Focused Transformer / LongLLaMA
    mem_layers: tuple[int, ...] = ()
    mem_dtype: str = "bfloat16"
    mem_positionals: bool = True
    last_context_length: int = 1024
    mem_attention_grouping: tuple[int, int] | None = None
    # ours, not LongLLaMA's: memory layers' keys RMS-normalised per head (no weight), so that every key has the same
    # norm and a query ranks memory keys by direction alone (see README "Dictionary lookup": at 1M tokens the keys
    # that outrank the right one are the long ones). Exported in config.json; the official code would ignore it.
    mem_key_norm: bool = False
    # numerics
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: bool = False
    attention_impl: str = "reference"  # "flash": chunked attention with a hand-written VJP (focused.memory.flash)
    attention_chunk: int = 512  # keys per chunk for attention_impl="flash"
    memory_read_impl: str = "flash"  # kernel for reading memory (a store, or CrossBatch); "reference" or "flash"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mem_layers", tuple(int(i) for i in self.mem_layers))
        if self.mem_attention_grouping is not None:
            object.__setattr__(self, "mem_attention_grouping", tuple(self.mem_attention_grouping))
        if self.rope_scaling is not None:
            object.__setattr__(self, "rope_scaling", dict(self.rope_scaling))
        if self.hidden_size % self.num_attention_heads and self.head_dim is None:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}: set head_dim explicitly or change one of them"
            )
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} must be a multiple of num_key_value_heads "
                f"{self.kv_heads}"
            )
        bad = [i for i in self.mem_layers if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ValueError(
                f"mem_layers {list(self.mem_layers)} name layers outside 0..{self.num_hidden_layers - 1}: {bad}"
            )
        for name in ("attention_impl", "memory_read_impl"):
            if getattr(self, name) not in ("reference", "flash"):
                raise ValueError(f"{name} must be 'reference' or 'flash', got {getattr(self, name)!r}")
        if self.attention_chunk < 1:
            raise ValueError(f"attention_chunk must be positive, got {self.attention_chunk}")
        for name in ("mem_dtype", "param_dtype", "dtype"):
            resolve_dtype(getattr(self, name))
        if not 0 < self.last_context_length <= self.max_position_embeddings:
            raise ValueError(
                f"last_context_length {self.last_context_length} must be in 1..max_position_embeddings "
                f"({self.max_position_embeddings})"
            )

    def __hash__(self) -> int:
        """Hashable although `rope_scaling` is a dict: the model graph, static under jit, carries this config."""
        values = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return hash(tuple(tuple(sorted(v.items())) if isinstance(v, dict) else v for v in values))

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LlamaConfig:
        """Builds a config from a mapping; an unknown key is an error that lists the valid ones."""
        return cls(**checked_fields(cls, values, "the model config"))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["mem_layers"] = list(self.mem_layers)
        if self.mem_attention_grouping is not None:
            out["mem_attention_grouping"] = list(self.mem_attention_grouping)
        return out

    def replace(self, **changes: Any) -> LlamaConfig:
        return dataclasses.replace(self, **changes)

    def num_parameters(self) -> int:
        """Exact parameter count (embeddings, blocks, final norm, lm_head)."""
        e, f, d = self.hidden_size, self.intermediate_size, self.head_size
        attn = e * d * (self.num_attention_heads * 2 + self.kv_heads * 2)
        block = attn + 3 * e * f + 2 * e
        head = 0 if self.tie_word_embeddings else self.vocab_size * e
        return self.vocab_size * e + self.num_hidden_layers * block + e + head
