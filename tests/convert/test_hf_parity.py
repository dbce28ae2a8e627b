"""Exported folders load in transformers, and transformers' own folders import, with the same logits."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from focused.convert import export_hf, import_hf
from focused.training.checkpoint import params_dict
from tests.convert.helpers import max_abs, our_logits, random_ids, random_model, tiny_config, torch_logits

TOLERANCE = 1e-5


@pytest.mark.parametrize("max_shard_size", ["2GB", "40KB"])
def test_llama_export_loads_in_transformers(tmp_path, max_shard_size):
    config = tiny_config(rope_theta=5e5, rope_scaling={"rope_type": "linear", "factor": 2.0})
    model = random_model(config, seed=3)
    export_hf(model, config, tmp_path / "hf", format="llama", max_shard_size=max_shard_size)
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file() == (max_shard_size == "40KB")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    assert hf.config.num_key_value_heads == 2 and hf.config.head_dim == 12
    ids = random_ids(config, 2, 16, seed=3)
    assert max_abs(our_logits(model, ids), torch_logits(hf, ids)) < TOLERANCE


def transformers_model(tied: bool, seed: int) -> transformers.LlamaForCausalLM:
    """A transformers model at its own init scale (N(0, 0.02)), with norm weights 1 + N(0, 0.1)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=120,
        hidden_size=80,
        intermediate_size=144,
        num_hidden_layers=2,
        num_attention_heads=8,  # head dim 10
        num_key_value_heads=4,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 20000.0},
        tie_word_embeddings=tied,
        pad_token_id=0,
    )
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.1 * torch.randn_like(param))
    return model.eval()


@pytest.mark.parametrize("tied", [False, True])
def test_transformers_save_pretrained_imports(tmp_path, tied):
    hf = transformers_model(tied, seed=4)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    assert "rope_parameters" in json.loads((tmp_path / "hf" / "config.json").read_text())  # transformers-5 layout
    model = import_hf(tmp_path / "hf")
    assert model.config.rope_theta == 20000.0 and model.config.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert model.config.rms_norm_eps == 1e-5 and model.config.tie_word_embeddings == tied
    ids = random_ids(model.config, 2, 16, seed=4)
    assert max_abs(our_logits(model, ids), torch_logits(hf, ids)) < TOLERANCE


def test_pytorch_bin_imports_like_safetensors(tmp_path):
    hf = transformers_model(tied=False, seed=5)
    hf.save_pretrained(tmp_path / "safe", safe_serialization=True)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "safe" / "config.json").read_text())
    state = {k: v.to(torch.bfloat16) for k, v in hf.state_dict().items()}
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(5)  # a buffer old checkpoints carry
    torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
    from_bin = jax.tree.leaves(params_dict(import_hf(tmp_path / "bin")))
    from_safe = jax.tree.leaves(params_dict(import_hf(tmp_path / "safe")))
    assert len(from_bin) == len(from_safe) == 2 + 2 * 9 + 1
    for stored_bf16, full in zip(from_bin, from_safe, strict=True):
        expected = np.asarray(full).astype(ml_dtypes.bfloat16).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(stored_bf16), expected)
