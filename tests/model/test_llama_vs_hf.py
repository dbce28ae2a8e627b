"""Our LLaMA decoder against `transformers.LlamaForCausalLM` (eager attention) on the same random weights.

The torch state dict is built from our parameters with `focused.convert.hf_state_dict`, so a wrong name or a
missing transpose shows up here as a logits mismatch.
"""

import numpy as np
import pytest
import transformers

from focused.convert import hf_config_dict
from focused.model.rope import rope_frequencies
from tests.convert.helpers import max_abs, our_logits, random_ids, random_model, tiny_config, torch_logits, torch_model

TOLERANCE = 1e-5

CASES = {
    # hidden 96 / 8 heads: head dim 12, 2 kv heads; a memory layer without memory is plain attention
    "gqa_head_dim_12": (tiny_config(), 0),
    "mha_tied_theta_5e5": (
        tiny_config(
            hidden_size=64, num_attention_heads=4, num_key_value_heads=None, tie_word_embeddings=True, rope_theta=5e5
        ),
        0,
    ),
    "explicit_head_dim_10": (tiny_config(hidden_size=48, num_attention_heads=4, head_dim=10), 0),
    "linear_pi_factor_4": (tiny_config(rope_scaling={"rope_type": "linear", "factor": 4.0}), 40),
    "yarn_factor_4": (
        tiny_config(
            max_position_embeddings=1024,
            rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256},
        ),
        300,  # positions beyond the original context
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name: str):
    config, start = CASES[name]
    model = random_model(config, seed=1)
    ids = random_ids(config, 2, 12)
    positions = np.broadcast_to(np.arange(start, start + 12), (2, 12))
    ours = our_logits(model, ids, positions=positions)
    theirs = torch_logits(torch_model(config, model), ids, positions=positions)
    assert max_abs(ours, theirs) < TOLERANCE


def test_left_padding_matches_on_real_tokens():
    config = tiny_config()
    model = random_model(config, seed=2)
    mask = np.ones((3, 12), np.int64)
    mask[0, :4] = 0
    mask[1, :1] = 0
    ids = random_ids(config, 3, 12, seed=2)
    ours = our_logits(model, ids, mask=mask)
    theirs = torch_logits(torch_model(config, model), ids, mask=mask)
    valid = mask.astype(bool)  # outputs at padding positions are not defined the same way; compare real tokens
    assert max_abs(ours[valid], theirs[valid]) < TOLERANCE


def test_yarn_frequencies_match_transformers():
    """The YaRN inverse frequencies and attention factor equal transformers' for a ramp that is not trivial."""
    config = CASES["yarn_factor_4"][0]
    ours, factor = rope_frequencies(config.head_size, config.rope_theta, config.rope_scaling, 1024)
    hf_config = transformers.LlamaConfig.from_dict(hf_config_dict(config, format="llama"))
    rotary = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(hf_config)
    base = 1.0 / 10000.0 ** (np.arange(0, 12, 2) / 12)
    assert 0 < np.sum(np.isclose(ours, base)) < len(base)  # some frequencies kept, some interpolated
    np.testing.assert_allclose(ours, rotary.inv_freq.numpy(), rtol=1e-6)
    assert factor == pytest.approx(rotary.attention_scaling, rel=1e-7)
