"""Searching the host kNN memory from jitted code: equal to the host search, one ordered callback per call."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focused.memory.faiss_index import KnnMemoryStore
from focused.memory.index_config import KnnIndexConfig
from focused.memory.knn import add_window, search_in_jit, search_result_shapes

LAYERS, BATCH, KV_HEADS, HEADS, DIM, K = 2, 3, 2, 4, 8, 6


def random_window(rng, seq, pad=0.3):
    shape = (LAYERS, BATCH, seq, KV_HEADS, DIM)
    keys = rng.standard_normal(shape).astype(np.float32)
    return keys, rng.standard_normal(shape).astype(np.float32), rng.random((BATCH, seq)) > pad


def random_queries(rng, seq=5):
    return rng.standard_normal((LAYERS, BATCH, seq, HEADS, DIM)).astype(np.float32)


def top_keys(windows, queries, k):
    """numpy reference: top-k keys `[L, B, S, H, k, D]` and mask by inner product over the valid keys so far."""
    keys = np.concatenate([w[0] for w in windows], axis=2)
    valid = np.concatenate([w[2] for w in windows], axis=1)
    out = np.zeros((*queries.shape[:4], k, DIM), np.float32)
    mask = np.zeros((*queries.shape[:4], k), bool)
    for l in range(LAYERS):
        for b in range(BATCH):
            kept = np.flatnonzero(valid[b])
            for h in range(HEADS):
                cand = keys[l, b, kept, h // (HEADS // KV_HEADS)]
                order = np.argsort(-(queries[l, b, :, h] @ cand.T), axis=1)[:, :k]
                out[l, b, :, h, : order.shape[1]] = cand[order]
                mask[l, b, :, h, : order.shape[1]] = True
    return out, mask


@pytest.mark.parametrize("payload_dtype", ["float32", "float16"])
def test_search_in_jit_equals_host_search(payload_dtype):
    rng = np.random.default_rng(0)
    store = KnnMemoryStore(LAYERS, BATCH, KV_HEADS, DIM, KnnIndexConfig(capacity=64, payload_dtype=payload_dtype))
    for _ in range(2):
        store.add(*random_window(rng, 12))
    queries = random_queries(rng)
    got = jax.jit(lambda q: search_in_jit(store, q, K))(jnp.asarray(queries, jnp.bfloat16))
    want = store.search(np.asarray(jnp.asarray(queries, jnp.bfloat16), np.float32), K)[:3]
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(np.asarray(g), w)
    assert got.keys.dtype == np.dtype(payload_dtype) and got.mask.shape == (LAYERS, BATCH, 5, HEADS, K)
    np.testing.assert_array_equal(np.asarray(got.layer(1).values), want[1][1])


def test_one_callback_per_jitted_call_sees_exactly_the_adds_so_far():
    rng = np.random.default_rng(1)
    store = KnnMemoryStore(LAYERS, BATCH, KV_HEADS, DIM, KnnIndexConfig(capacity=80))
    queries = random_queries(rng)

    @jax.jit
    def step(q, x):
        keys, _, mask = search_in_jit(store, q, K)
        score = jnp.einsum("lbshd,lbshkd->lbshk", q, keys.astype(q.dtype))
        return jnp.where(mask, score, 0).sum() + x, keys, mask

    windows = []
    _, keys, mask = step(queries, 0.0)  # empty memory: everything masked
    assert store.search_calls == 1 and not np.asarray(mask).any() and not np.asarray(keys).any()
    for i in range(4):
        window = random_window(rng, 16)
        windows.append(window)
        add_window(store, *(jnp.asarray(a) for a in window))
        _, keys, mask = step(queries, float(i))  # same shapes: no retrace, one callback each
        ref_keys, ref_mask = top_keys(windows, queries, K)
        np.testing.assert_array_equal(np.asarray(mask), ref_mask)
        np.testing.assert_array_equal(np.asarray(keys), ref_keys)
        assert store.search_calls == i + 2 and store.written == 16 * (i + 1)
    assert step._cache_size() == 1


def test_vmap_runs_the_callback_once_per_element():
    rng = np.random.default_rng(2)
    store = KnnMemoryStore(LAYERS, BATCH, KV_HEADS, DIM, KnnIndexConfig(capacity=32))
    store.add(*random_window(rng, 20))
    stacked = np.stack([random_queries(rng, 3) for _ in range(3)])
    keys, _, mask = jax.jit(jax.vmap(lambda q: search_in_jit(store, q, K)))(stacked)
    assert store.search_calls == 3
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(keys[i]), store.search(stacked[i], K)[0])
        np.testing.assert_array_equal(np.asarray(mask[i]), store.search(stacked[i], K)[2])


def test_gradient_flows_around_the_search():
    rng = np.random.default_rng(3)
    store = KnnMemoryStore(LAYERS, BATCH, KV_HEADS, DIM, KnnIndexConfig(capacity=32))
    store.add(*random_window(rng, 20))
    queries = jnp.asarray(random_queries(rng, 2))

    def loss(q):
        keys, _, mask = search_in_jit(store, q, K)
        return jnp.where(mask, jnp.einsum("lbshd,lbshkd->lbshk", q, keys), 0).sum()

    grad = jax.jit(jax.grad(loss))(queries)
    keys, _, mask, _ = store.search(np.asarray(queries), K)
    np.testing.assert_allclose(np.asarray(grad), (keys * mask[..., None]).sum(4), rtol=1e-5, atol=1e-5)


def test_bad_queries_and_adds_inside_jit_raise():
    store = KnnMemoryStore(LAYERS, BATCH, KV_HEADS, DIM, KnnIndexConfig(capacity=16))
    with pytest.raises(ValueError, match="queries have shape"):
        jax.jit(lambda q: search_in_jit(store, q, K))(jnp.zeros((LAYERS, 1, 2, HEADS, DIM)))
    with pytest.raises(ValueError, match="3 query heads cannot share 2"):
        search_result_shapes(store, (LAYERS, BATCH, 2, 3, DIM), K)
    with pytest.raises(ValueError, match="positive Python int"):
        search_result_shapes(store, (LAYERS, BATCH, 2, HEADS, DIM), 0)
    window = random_window(np.random.default_rng(4), 4)
    with pytest.raises(ValueError, match="inside a traced function"):
        jax.jit(lambda k, v, m: add_window(store, k, v, m))(*window)
    assert store.written == 0 and store.search_calls == 0


def test_compiled_steps_do_not_keep_a_dropped_store_alive():
    """A jitted step compiled with a retriever (a static argument, kept in the compile cache) holds its store only
    weakly: once nobody else references the store, its indexes and payload are freed."""
    import gc
    import weakref

    from focused.memory.knn import KnnRetriever

    @jax.jit
    def step(q, retriever):
        return retriever.retrieve(q).keys.sum()

    rng = np.random.default_rng(5)
    store = KnnMemoryStore(1, BATCH, KV_HEADS, DIM, KnnIndexConfig(capacity=64))
    keys, values, valid = random_window(rng, 16)
    store.add(keys[:1], values[:1], valid)
    retriever = KnnRetriever(store, 0, K)
    q = random_queries(rng)[0]
    assert np.isfinite(float(step(q, retriever)))
    alive = weakref.ref(store)
    del store
    gc.collect()
    assert alive() is None  # the compile cache still holds `retriever`, but not the store
    with pytest.raises(RuntimeError, match="garbage-collected"):
        retriever.retrieve(q)
