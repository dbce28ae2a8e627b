"""One interface test suite for every memory store (`focused.memory.store`): dense on device, top-k, host FAISS.

Each store is driven only through the protocol (append / reader / stored / capacity / policy / save / load) and
checked against a numpy attention over exactly the tokens it should hold.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focused.memory.backends import MemoryConfig
from focused.memory.core import Retriever, memory_attention
from focused.memory.store import MemoryStore, new_store
from tests.memory.test_dense import tiny_config
from tests.reference import softmax

CONFIG = tiny_config(mem_layers=(0, 2), max_position_embeddings=8)  # 4 heads over 2 kv heads, head_dim 12
LAYERS, BATCH, KVH, DIM, HEADS = 2, 2, CONFIG.kv_heads, CONFIG.head_size, CONFIG.num_attention_heads
BACKENDS = {
    "dense": MemoryConfig(backend="dense"),
    "topk": MemoryConfig(backend="topk", top_k=64),  # k covers the whole memory: equals dense
    "faiss": MemoryConfig(backend="faiss", top_k=64, index={"index_type": "flat"}),
}


def make(name: str, capacity: int = 32, policy: str = "error") -> MemoryStore:
    cfg = BACKENDS[name]
    cfg = MemoryConfig(backend=cfg.backend, top_k=cfg.top_k, policy=policy, index=cfg.index)
    return new_store(CONFIG, BATCH, cfg, capacity)


def window(rng, seq, pad=0.25):
    shape = (LAYERS, BATCH, seq, KVH, DIM)
    return (
        jnp.asarray(rng.normal(size=shape), jnp.float32),
        jnp.asarray(rng.normal(size=shape), jnp.float32),
        jnp.asarray(rng.random((BATCH, seq)) > pad),
    )


@jax.jit
def attend(reader, q, k, v):
    """Every memory layer's attention of queries `[batch, 1, heads, dim]` over [memory ; one local key]."""
    out = []
    for block in reader.blocks():
        memory = block.retrieve(q) if isinstance(block, Retriever) else block
        out.append(memory_attention(q, k, v, jnp.ones((q.shape[0], 1, 1), bool), memory))
    return jnp.stack(out)


def reference(windows, q, k, v, keep=None):
    """numpy: the same attention over the valid tokens of `windows` (only the last `keep` tokens if given)."""
    mk = np.concatenate([np.asarray(w[0]) for w in windows], axis=2)
    mv = np.concatenate([np.asarray(w[1]) for w in windows], axis=2)
    ok = np.concatenate([np.asarray(w[2]) for w in windows], axis=1)
    if keep is not None:
        mk, mv, ok = mk[:, :, -keep:], mv[:, :, -keep:], ok[:, -keep:]
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    out = np.zeros((LAYERS, *q.shape))
    group = HEADS // KVH
    for layer in range(LAYERS):
        for b in range(BATCH):
            for h in range(HEADS):
                kv = h // group
                keys = np.concatenate([mk[layer, b, ok[b], kv], k[b, :, kv]])
                values = np.concatenate([mv[layer, b, ok[b], kv], v[b, :, kv]])
                w = softmax(keys @ q[b, 0, h] / np.sqrt(DIM))
                out[layer, b, 0, h] = w @ values
    return out


def queries(rng):
    q = jnp.asarray(rng.normal(size=(BATCH, 1, HEADS, DIM)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(BATCH, 1, KVH, DIM)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(BATCH, 1, KVH, DIM)), jnp.float32)
    return q, k, v


@pytest.mark.parametrize("name", list(BACKENDS))
def test_append_then_attend_sees_exactly_the_appended_tokens(name):
    rng = np.random.default_rng(0)
    store = make(name)
    assert isinstance(store, MemoryStore)
    assert (store.stored, store.capacity, store.policy) == (0, 32, "error")
    q, k, v = queries(rng)
    windows = []
    for seq in (8, 8, 5):
        windows.append(window(rng, seq))
        store.append(*windows[-1])
        got = attend(store.reader(), q, k, v)
        np.testing.assert_allclose(np.asarray(got), reference(windows, q, k, v), atol=2e-5, rtol=0)
    assert store.stored == 21


@pytest.mark.parametrize("name", list(BACKENDS))
def test_capacity_error_and_drop_oldest(name):
    rng = np.random.default_rng(1)
    store = make(name, capacity=16)
    store.append(*window(rng, 8))
    store.append(*window(rng, 8))
    with pytest.raises(ValueError, match="memory capacity 16 tokens exceeded"):
        store.append(*window(rng, 8))
    assert store.stored == 16
    ring = make(name, capacity=16, policy="drop_oldest")
    q, k, v = queries(rng)
    windows = [window(rng, 8) for _ in range(3)]
    for w in windows:
        ring.append(*w)
    assert ring.stored == 24 and ring.policy == "drop_oldest"
    got = attend(ring.reader(), q, k, v)
    np.testing.assert_allclose(np.asarray(got), reference(windows, q, k, v, keep=16), atol=2e-5, rtol=0)


@pytest.mark.parametrize("name", list(BACKENDS))
def test_save_load_roundtrip(name, tmp_path):
    rng = np.random.default_rng(2)
    store = make(name)
    windows = [window(rng, 8), window(rng, 6)]
    for w in windows:
        store.append(*w)
    store.save(tmp_path / "memory")
    loaded = make(name)
    loaded.load(tmp_path / "memory")
    assert loaded.stored == 14 and loaded.capacity == 32
    q, k, v = queries(rng)
    np.testing.assert_allclose(
        np.asarray(attend(loaded.reader(), q, k, v)), np.asarray(attend(store.reader(), q, k, v)), atol=1e-6
    )
    more = window(rng, 8)  # the loaded store keeps going
    loaded.append(*more)
    got = attend(loaded.reader(), q, k, v)
    np.testing.assert_allclose(np.asarray(got), reference([*windows, more], q, k, v), atol=2e-5, rtol=0)


def test_a_faiss_reader_is_one_static_object():
    """The kNN reader carries no arrays and stays the same object, so a jitted step compiles once."""
    store = make("faiss")
    assert store.reader() is store.reader()
    assert jax.tree_util.tree_leaves(store.reader()) == []
