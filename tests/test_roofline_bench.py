"""bench/roofline.py counts the work of issue 9's workloads from model shapes; its counts must match the model
(parameters, XLA's own FLOP count of a forward pass) and the official long-input split, or its bounds mean nothing."""

import itertools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from longllama_ingest_decode import MODELS
from roofline import _windows, decode_cost, ingest_flops, shape_from, train_step_flops

from focused.model.config import LlamaConfig
from focused.model.llama import LlamaForCausalLM


def small_model(**changes):
    cfg = {**MODELS["small"], "mem_layers": (), **changes}
    return cfg, LlamaForCausalLM(LlamaConfig(**cfg), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_parameter_count_matches_the_model(kv_heads):
    cfg, model = small_model(num_key_value_heads=kv_heads)
    s = shape_from(cfg)
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    norms = (2 * s.layers + 1) * s.hidden
    assert params == s.layers * s.layer_params() + 2 * s.hidden * s.vocab + norms  # + embedding and lm_head


def test_forward_flops_match_xla_cost_analysis():
    """Projections, lm_head and attention (XLA computes all T x T pairs) are within 5% of XLA's count; the rest
    is elementwise work (norms, RoPE, softmax) that the roofline leaves out."""
    cfg, model = small_model()
    s = shape_from(cfg)
    graphdef, params = nnx.split(model)
    t = 48
    forward = jax.jit(lambda p, ids: nnx.merge(graphdef, p)(ids).logits)
    cost = forward.lower(params, jnp.zeros((2, t), jnp.int32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    counted = s.dense_flops(2 * t) + s.head_flops(2 * t) + s.attention_flops(2 * t * t, s.layers)
    assert counted == pytest.approx(cost["flops"], rel=0.05)
    assert train_step_flops(s, 2, t) > 3 * (s.dense_flops(2 * t) + s.head_flops(2 * t))  # forward + 2x backward


@pytest.mark.parametrize("n", [7, 40, 64, 65, 100, 8192])
def test_ingest_blocks_follow_the_official_split(n):
    s = shape_from(MODELS["small"])  # window 64, last_context_length 40
    blocks = _windows(s, n)
    assert sum(length for _, length in blocks) == n
    assert all(a + length == b for (a, length), (b, _) in itertools.pairwise(blocks))
    assert blocks[-1][1] == min(n, s.last_context)
    assert all(0 < length <= s.window for _, length in blocks)


def test_least_ingest_work_is_below_the_official_forward_and_decode_reads_every_weight():
    s = shape_from(MODELS["mid"])
    assert ingest_flops(s, 8192, minimal=True) < ingest_flops(s, 8192, minimal=False)
    flops, bytes_ = decode_cost(s, 4096, 2)  # one step
    weights = s.layers * s.layer_params() + s.hidden * s.vocab
    assert bytes_ > 4 * weights and flops > 2 * weights
