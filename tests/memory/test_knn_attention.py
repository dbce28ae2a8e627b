"""The FAISS backend inside the model: flat kNN with k >= memory equals dense; adds happen once, in order."""

import numpy as np

from focused.memory.dense import forward_long
from focused.memory.index_config import KnnIndexConfig
from focused.memory.knn import forward_long_knn, new_store
from tests.memory.test_dense import build, tiny_config


def test_faiss_flat_with_k_covering_memory_equals_dense():
    config = tiny_config(mem_layers=(0, 2))
    model = build(config, seed=61)
    ids = np.random.default_rng(62).integers(0, config.vocab_size, size=(2, 64))
    valid = np.ones((2, 64), np.int32)
    valid[1, :5] = 0  # remembered padding must never be retrieved
    dense, _ = forward_long(model, ids, valid)
    store = new_store(model, batch=2, config=KnnIndexConfig(index_type="flat", capacity=64))
    knn = forward_long_knn(model, ids, store, k=64, attention_mask=valid)
    ok = valid.astype(bool)
    np.testing.assert_allclose(knn[ok], np.asarray(dense)[ok], atol=2e-5)
    # one search per memory layer per window, under jit, never repeated
    assert store.search_calls == 2 * 4
    assert store.size == 64


def test_faiss_with_small_k_equals_on_device_topk():
    config = tiny_config(mem_layers=(1,))
    model = build(config, seed=63)
    ids = np.random.default_rng(64).integers(0, config.vocab_size, size=(1, 64))
    topk, _ = forward_long(model, ids, top_k=3)
    store = new_store(model, batch=1, config=KnnIndexConfig(index_type="flat", capacity=64))
    knn = forward_long_knn(model, ids, store, k=3)
    np.testing.assert_allclose(knn, np.asarray(topk), atol=2e-5)


def test_ivf_backend_runs_and_stays_close_on_long_memory():
    config = tiny_config(mem_layers=(1,))
    model = build(config, seed=65)
    ids = np.random.default_rng(66).integers(0, config.vocab_size, size=(1, 160))
    store = new_store(
        model, batch=1, config=KnnIndexConfig(index_type="ivf_flat", nlist=4, nprobe=4, train_size=64, capacity=160)
    )
    knn = forward_long_knn(model, ids, store, k=8)
    topk, _ = forward_long(model, ids, top_k=8)
    np.testing.assert_allclose(knn, np.asarray(topk), atol=2e-5)  # nprobe = nlist: IVF search is exact
