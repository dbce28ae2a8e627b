"""Exact top-k memory attention on device: equals dense when k covers the memory, and a numpy brute force."""

import jax.numpy as jnp
import numpy as np

from focused.memory.core import MemoryBlock, RetrievedMemory, causal_mask, memory_attention
from focused.memory.dense import forward_long
from tests.memory.test_dense import build, tiny_config
from tests.reference import softmax


def random_inputs(seed, b=2, t=5, h=4, kvh=2, d=8, m=23):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, t, h, d)).astype(np.float32)
    k = rng.normal(size=(b, t, kvh, d)).astype(np.float32)
    v = rng.normal(size=(b, t, kvh, d)).astype(np.float32)
    mk = rng.normal(size=(b, m, kvh, d)).astype(np.float32)
    mv = rng.normal(size=(b, m, kvh, d)).astype(np.float32)
    mmask = rng.random((b, m)) > 0.2
    return q, k, v, mk, mv, mmask


def brute_force_topk(q, k, v, mk, mv, mmask, top_k):
    b, t, h, d = q.shape
    g = h // k.shape[2]
    out = np.zeros_like(q, dtype=np.float64)
    causal = np.tril(np.ones((t, t), bool))
    for bi in range(b):
        for hi in range(h):
            kv = hi // g
            for ti in range(t):
                s_mem = mk[bi, :, kv] @ q[bi, ti, hi] / np.sqrt(d)
                s_mem = np.where(mmask[bi], s_mem, -1e30)
                best = np.argsort(-s_mem, kind="stable")[:top_k]
                s_loc = np.where(causal[ti], k[bi, :, kv] @ q[bi, ti, hi] / np.sqrt(d), -1e30)
                w = softmax(np.concatenate([s_mem[best], s_loc]))
                out[bi, ti, hi] = w[:top_k] @ mv[bi, best, kv] + w[top_k:] @ v[bi, :, kv]
    return out


def test_topk_equals_numpy_brute_force():
    q, k, v, mk, mv, mmask = random_inputs(41)
    mask = causal_mask(jnp.ones(q.shape[:2], bool))
    got = memory_attention(q, k, v, mask, MemoryBlock(mk, mv, mmask), top_k=4)
    np.testing.assert_allclose(np.asarray(got), brute_force_topk(q, k, v, mk, mv, mmask, 4), atol=1e-5)


def test_retrieved_memory_equals_topk_when_given_the_same_neighbours():
    """The FAISS path hands the core per-query neighbours; given the exact top-k it must equal `topk`."""
    q, k, v, mk, mv, mmask = random_inputs(42)
    b, t, h, _ = q.shape
    g = h // k.shape[2]
    scores = np.einsum("bthd,bmhd->bthm", q, np.repeat(mk, g, axis=2))
    scores = np.where(mmask[:, None, None], scores, -np.inf)
    idx = np.argsort(-scores, axis=-1, kind="stable")[..., :4]  # [b, t, h, 4]
    kv_of_head = np.arange(h) // g
    rows = np.arange(b)[:, None, None, None]
    keys = mk[rows, idx, kv_of_head[None, None, :, None]]
    values = mv[rows, idx, kv_of_head[None, None, :, None]]
    valid = mmask[rows, idx]
    mask = causal_mask(jnp.ones((b, t), bool))
    got = memory_attention(q, k, v, mask, RetrievedMemory(keys, values, valid))
    want = memory_attention(q, k, v, mask, MemoryBlock(mk, mv, mmask), top_k=4)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_topk_with_k_at_least_memory_size_equals_dense_logits():
    config = tiny_config()
    model = build(config, seed=43)
    ids = np.random.default_rng(44).integers(0, config.vocab_size, size=(2, 64))
    dense, _ = forward_long(model, ids)
    topk, _ = forward_long(model, ids, top_k=64)
    np.testing.assert_allclose(np.asarray(topk), np.asarray(dense), atol=2e-5)
    small, _ = forward_long(model, ids, top_k=2)
    assert np.abs(np.asarray(small) - np.asarray(dense)).max() > 1e-4  # k < memory really drops entries
