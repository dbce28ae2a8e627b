"""The config-selected backends agree when k covers the memory; bad backend settings are clear errors."""

import numpy as np
import pytest

from focused.memory.backends import MemoryConfig, run_long
from tests.memory.test_dense import build, tiny_config


def test_three_backends_agree_when_k_covers_memory():
    config = tiny_config()
    model = build(config, seed=71)
    ids = np.random.default_rng(72).integers(0, config.vocab_size, size=(1, 48))
    dense = run_long(model, ids, None, MemoryConfig(backend="dense"))
    topk = run_long(model, ids, None, MemoryConfig(backend="topk", top_k=48))
    faiss = run_long(model, ids, None, MemoryConfig(backend="faiss", top_k=48, index={"index_type": "flat"}))
    np.testing.assert_allclose(topk, dense, atol=2e-5)
    np.testing.assert_allclose(faiss, dense, atol=2e-5)


def test_bad_memory_configs():
    with pytest.raises(ValueError, match="unknown memory backend 'annoy'"):
        MemoryConfig(backend="annoy")
    with pytest.raises(ValueError, match="unknown key"):
        MemoryConfig.from_dict({"backend": "dense", "k": 3})
    config = tiny_config()
    model = build(config, seed=73)
    with pytest.raises(ValueError, match="unknown index_type 'lsh'"):
        run_long(model, np.ones((1, 20), np.int32), None, MemoryConfig(backend="faiss", index={"index_type": "lsh"}))
    with pytest.raises(ValueError, match="memory capacity 16 tokens exceeded"):
        run_long(model, np.ones((1, 40), np.int32), None, MemoryConfig(capacity=16))
