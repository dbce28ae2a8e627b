"""Shared by the conversion tests: small random models with Hugging Face-like weight scales, and logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from focused.convert import hf_config_dict, hf_state_dict
from focused.model.config import LlamaConfig
from focused.model.llama import LlamaForCausalLM
from focused.training.checkpoint import abstract_model, model_from_params, params_dict
from tests.reference import randomize


def tiny_config(**changes) -> LlamaConfig:
    """3 layers, GQA with head dim 12 (not a power of two), one memory layer."""
    base = dict(
        vocab_size=128,
        hidden_size=96,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=64,
        last_context_length=32,
        mem_layers=(1,),
        mem_dtype="float32",
    )
    base.update(changes)
    return LlamaConfig(**base)


def random_model(config: LlamaConfig, seed: int = 0) -> LlamaForCausalLM:
    """A model with N(0, 0.02) matrices and 1 + N(0, 0.1) norm weights (built without running initialisers)."""
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params_dict(abstract_model(config)))
    model = model_from_params(config, zeros)
    randomize(model, seed)
    return model


@nnx.jit
def _logits(model: LlamaForCausalLM, ids: jax.Array, mask: jax.Array, positions: jax.Array) -> jax.Array:
    return model(ids, attention_mask=mask, positions=positions).logits


def our_logits(model: LlamaForCausalLM, ids: np.ndarray, mask=None, positions=None) -> np.ndarray:
    """float32 logits `[batch, seq, vocab]` of our model."""
    b, t = ids.shape
    mask = np.ones((b, t), np.int32) if mask is None else mask
    positions = np.broadcast_to(np.arange(t), (b, t)) if positions is None else positions
    return np.asarray(_logits(model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(positions)))


def torch_logits(hf: transformers.PreTrainedModel, ids: np.ndarray, mask=None, positions=None) -> np.ndarray:
    """float32 logits `[batch, seq, vocab]` of a transformers model."""
    kwargs = {"input_ids": torch.tensor(ids)}
    if mask is not None:
        kwargs["attention_mask"] = torch.tensor(mask)
    if positions is not None:
        kwargs["position_ids"] = torch.tensor(positions)
    with torch.no_grad():
        return hf(**kwargs).logits.float().numpy()


def torch_model(config: LlamaConfig, model: LlamaForCausalLM) -> transformers.LlamaForCausalLM:
    """A transformers model (eager attention, float32) loaded in memory with our model's weights."""
    hf_config = transformers.LlamaConfig.from_dict(hf_config_dict(config, format="llama"))
    hf_config._attn_implementation = "eager"
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    state = {name: torch.tensor(np.array(value)) for name, value in hf_state_dict(model, config).items()}
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf.load_state_dict(state, strict=True)
    return hf


def random_ids(config: LlamaConfig, batch: int, seq: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, config.vocab_size, (batch, seq))


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    assert np.abs(b).max() > 0.05  # not a comparison between two near-zero tensors
    return float(np.abs(a - b).max())
