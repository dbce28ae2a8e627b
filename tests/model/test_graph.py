"""`StaticGraph`: a model graph passed to jitted steps as a static argument, hashed once."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from focused import LlamaConfig, LlamaForCausalLM
from focused.model.graph import StaticGraph, merge, split_static


def tiny(seed: int, layers: int = 2) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=layers, num_attention_heads=2,
        max_position_embeddings=8, last_context_length=4, mem_layers=(1,),
    )  # fmt: skip
    return LlamaForCausalLM(config, rngs=nnx.Rngs(seed))


def test_splits_of_equal_models_share_one_compiled_step_and_merge_back_exactly():
    traces = []

    def logits(graph: StaticGraph, params, ids):
        traces.append(1)
        return merge(graph, params)(ids).logits

    ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, size=(2, 8)), jnp.int32)
    jitted = jax.jit(logits, static_argnums=0)
    model_a, model_b = tiny(0), tiny(1)
    graph_a, params_a = split_static(model_a)
    graph_b, params_b = split_static(model_b)
    assert graph_a == graph_b and hash(graph_a) == hash(graph_b) and graph_a is not graph_b
    out_a = jitted(graph_a, params_a, ids)
    out_b = jitted(graph_b, params_b, ids)  # same graph, other weights: no new trace
    assert len(traces) == 1
    np.testing.assert_allclose(np.asarray(out_a), np.asarray(model_a(ids).logits), atol=1e-6)
    np.testing.assert_allclose(np.asarray(out_b), np.asarray(model_b(ids).logits), atol=1e-6)
    assert float(jnp.abs(out_a - out_b).max()) > 1e-3


def test_graphs_of_different_models_differ():
    assert split_static(tiny(0))[0] != split_static(tiny(0, layers=3))[0]
    assert split_static(tiny(0))[0] != "not a graph"
