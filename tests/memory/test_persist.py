"""Memory save → load: identical logits when continuing; mismatched models and existing files are refused."""

import numpy as np
import pytest

from focused.memory.dense import forward_long
from focused.memory.persist import load_memory, save_memory
from tests.memory.test_dense import build, tiny_config


@pytest.mark.parametrize("mem_dtype", ["float32", "bfloat16"])
def test_save_load_continues_identically(tmp_path, mem_dtype):
    config = tiny_config(mem_dtype=mem_dtype)
    model = build(config, seed=51)
    ids = np.random.default_rng(52).integers(0, config.vocab_size, size=(2, 64))
    _, memory = forward_long(model, ids[:, :48], capacity=64)
    save_memory(memory, config, tmp_path / "mem")
    loaded = load_memory(tmp_path / "mem", config)
    for a, b in zip(memory, loaded, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # donation consumed nothing we still need: run both copies forward on the same continuation
    again = load_memory(tmp_path / "mem", config)
    first, _ = forward_long(model, ids[:, 48:], memory=loaded)
    second, _ = forward_long(model, ids[:, 48:], memory=again)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
    full, _ = forward_long(model, ids, capacity=64)
    np.testing.assert_allclose(np.asarray(first), np.asarray(full[:, 48:]), atol=1e-5)


def test_memory_from_a_different_model_is_refused(tmp_path):
    config = tiny_config()
    model = build(config, seed=53)
    _, memory = forward_long(model, np.ones((1, 16), np.int32))
    save_memory(memory, config, tmp_path / "mem")
    with pytest.raises(ValueError, match="mem_layers=\\[1\\], this model has \\[0, 2\\]"):
        load_memory(tmp_path / "mem", config.replace(mem_layers=(0, 2)))
    with pytest.raises(FileExistsError, match="already holds a saved memory"):
        save_memory(memory, config, tmp_path / "mem")
    with pytest.raises(FileNotFoundError, match="holds no saved memory"):
        load_memory(tmp_path / "nothing", config)
