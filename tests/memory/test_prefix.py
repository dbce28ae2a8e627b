"""Reading a prompt's prefix many windows per call (`focused.memory.prefix`, `ingest(windows_per_call=...)`) gives
the same attention, memory and generation as reading it one window at a time."""

import jax.numpy as jnp
import numpy as np
import pytest

import focused.generate as generate_module
from focused.generate import generate, ingest
from focused.memory.backends import MemoryConfig
from focused.memory.core import MemoryBlock, causal_mask, heads_major, memory_attention
from focused.memory.prefix import PrefixMemory, default_windows_per_call, prefix_attention, query_windows
from tests.memory.test_dense import build, tiny_config


@pytest.mark.parametrize("windows, with_store", [(4, False), (6, True), (3, True)])
def test_prefix_attention_equals_one_window_at_a_time(windows, with_store):
    """Each window's output equals `memory_attention` over [store ; the earlier windows ; itself] built by hand,
    with grouped-query heads, left padding inside windows and a store of a few filled slots of a larger buffer."""
    docs, w, heads, kvh, d, store_slots = 2, 8, 4, 2, 8, 24
    rng = np.random.default_rng(windows + 10 * with_store)
    rows = docs * windows
    q = jnp.asarray(rng.normal(size=(rows, w, heads, d)), jnp.float32)
    k, v, raw_k, raw_v = (jnp.asarray(rng.normal(size=(rows, w, kvh, d)), jnp.float32) for _ in range(4))
    valid = np.ones((rows, w), bool)
    valid[0, :3] = False  # document 0 is left-padded
    valid[windows + 1, 5:] = False  # and a short window in document 1
    local = causal_mask(jnp.asarray(valid))
    store = None
    filled = 13
    if with_store:
        sk, sv = (rng.normal(size=(docs, store_slots, kvh, d)).astype(np.float32) for _ in range(2))
        smask = (np.arange(store_slots) < filled)[None].repeat(docs, 0)
        smask[1, 2] = False
        store = heads_major(MemoryBlock(jnp.asarray(sk), jnp.asarray(sv), jnp.asarray(smask)))
        store = MemoryBlock(store.keys, store.values, store.mask, None, True, filled=jnp.int32(filled))
    memory = PrefixMemory(windows, store).bind(raw_k, raw_v, jnp.asarray(valid), jnp.float32)
    got = np.asarray(prefix_attention(q, k, v, local, memory, kv_chunk=4))
    for b in range(docs):
        for i in range(windows):
            r = b * windows + i
            mem_k = [np.asarray(raw_k[b * windows + j]) for j in range(i)]
            mem_v = [np.asarray(raw_v[b * windows + j]) for j in range(i)]
            mem_ok = [valid[b * windows + j] for j in range(i)]
            if with_store:
                mem_k.insert(0, sk[b, :filled])
                mem_v.insert(0, sv[b, :filled])
                mem_ok.insert(0, smask[b, :filled])
            block = None
            if mem_k:
                block = MemoryBlock(
                    jnp.asarray(np.concatenate(mem_k))[None],
                    jnp.asarray(np.concatenate(mem_v))[None],
                    jnp.asarray(np.concatenate(mem_ok))[None],
                )
            want = memory_attention(q[r : r + 1], k[r : r + 1], v[r : r + 1], local[r : r + 1], block)
            rows_ok = valid[r]  # fully masked (padding) queries carry no meaning in either path
            np.testing.assert_allclose(got[r][rows_ok], np.asarray(want[0])[rows_ok], atol=2e-6, rtol=0)


def test_query_windows_divides_the_call_and_bounds_the_block():
    assert query_windows(128, 64) == 8  # 512 positions
    assert query_windows(16, 512) == 1
    assert query_windows(12, 64) == 6  # the largest divisor with at most 512 positions
    assert query_windows(7, 64) == 7
    assert query_windows(3, 1024) == 1


def test_default_windows_per_call_batches_short_windows_only():
    assert default_windows_per_call(64) == 32  # 2048 tokens a call
    assert default_windows_per_call(16) == 128
    assert default_windows_per_call(256) == 8
    assert default_windows_per_call(512) == 1  # large windows: one a call
    assert default_windows_per_call(2048) == 1


def test_bind_refuses_rows_that_are_not_whole_documents_and_top_k_memory():
    x = jnp.zeros((5, 4, 1, 2))
    with pytest.raises(ValueError, match="not whole documents of 2 windows"):
        PrefixMemory(2).bind(x, x, jnp.ones((5, 4), bool), jnp.float32)
    top_k = MemoryBlock(x[:1], x[:1], jnp.ones((1, 4), bool), top_k=2)
    with pytest.raises(ValueError, match="need a dense memory block"):
        PrefixMemory(5, top_k).bind(x, x, jnp.ones((5, 4), bool), jnp.float32)


def _prompt(config, rng, batch=2, n=75, pad=9):
    ids = rng.integers(3, config.vocab_size, size=(batch, n)).astype(np.int32)
    mask = np.ones((batch, n), np.int32)
    mask[1, :pad] = 0  # left padding
    return ids, mask


@pytest.mark.parametrize("per_call", [2, 3, None])
def test_ingest_many_windows_per_call_equals_one_window_per_call(per_call):
    """Prefix 67 tokens = 5 windows of 16 (the last short): calls of 2+2+1, 3+2 (padded to 2) or all at once;
    memory, next-token logits and the cache equal the one-window path, with a padded row and two memory layers."""
    config = tiny_config(max_position_embeddings=16, last_context_length=8, mem_layers=(0, 2))
    model = build(config, seed=51)
    ids, mask = _prompt(config, np.random.default_rng(52))
    one = ingest(model, ids, mask, progress=False, windows_per_call=1)
    many = ingest(model, ids, mask, progress=False, windows_per_call=per_call)
    assert many.memory.stored == one.memory.stored == 67
    np.testing.assert_allclose(np.asarray(many.logits), np.asarray(one.logits), atol=1e-5, rtol=0)
    got, want = many.memory.state, one.memory.state
    np.testing.assert_array_equal(np.asarray(got.mask), np.asarray(want.mask))
    real = np.asarray(want.mask)  # padding slots are masked: what a padding query computed there means nothing
    for a, b in zip(got.keys, want.keys, strict=True):  # [batch, kv_heads, slots, d]
        np.testing.assert_allclose(
            np.moveaxis(np.asarray(a), 2, 1)[real], np.moveaxis(np.asarray(b), 2, 1)[real], atol=1e-5
        )
    for a, b in zip(got.values, want.values, strict=True):  # [batch, kv_heads, d, slots]
        np.testing.assert_allclose(
            np.moveaxis(np.asarray(a), 3, 1)[real], np.moveaxis(np.asarray(b), 3, 1)[real], atol=1e-5
        )


def test_ingest_with_bfloat16_memory_generates_the_same_tokens():
    """The default mem_dtype (bfloat16): this call's earlier windows are read as the store would hold them."""
    config = tiny_config(max_position_embeddings=16, last_context_length=8, mem_layers=(1,), mem_dtype="bfloat16")
    model = build(config, seed=53)
    ids, mask = _prompt(config, np.random.default_rng(54), n=90)
    one = ingest(model, ids, mask, progress=False, windows_per_call=1)
    many = ingest(model, ids, mask, progress=False)
    np.testing.assert_allclose(np.asarray(many.logits), np.asarray(one.logits), atol=1e-3, rtol=0)
    k_one, k_many = (np.asarray(s.memory.state.keys[0], np.float32) for s in (one, many))
    assert np.mean(k_one == k_many) > 0.99  # the same bfloat16 values but for rare last-bit roundings
    a = generate(model, ids, 8, attention_mask=mask, progress=False, windows_per_call=1)
    b = generate(model, ids, 8, attention_mask=mask, progress=False)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "memory_cfg, capacity, used",
    [
        (MemoryConfig(), None, True),
        (MemoryConfig(backend="topk", top_k=4), None, False),  # top-k reads are not the full memory
        (MemoryConfig(backend="faiss", top_k=4, index={"index_type": "flat"}), None, False),
        (MemoryConfig(policy="drop_oldest"), 32, False),  # the prefix would overwrite what it still reads
    ],
)
def test_ingest_reads_windows_together_only_when_that_is_exact(monkeypatch, memory_cfg, capacity, used):
    config = tiny_config(max_position_embeddings=16, last_context_length=8)
    model = build(config, seed=55)
    ids, mask = _prompt(config, np.random.default_rng(56))
    calls = []
    real = generate_module._prefix_kv
    monkeypatch.setattr(generate_module, "_prefix_kv", lambda *a, **k: calls.append(1) or real(*a, **k))
    ingest(model, ids, mask, capacity=capacity, memory_cfg=memory_cfg, progress=False)
    assert bool(calls) == used


def test_ingest_refuses_a_window_count_below_one():
    config = tiny_config()
    model = build(config, seed=57)
    with pytest.raises(ValueError, match="windows_per_call must be >= 1"):
        ingest(model, np.ones((1, 40), np.int32), progress=False, windows_per_call=0)


@pytest.mark.parametrize("split, per_call", [("windows", None), ("longllama", 3), ("windows", 2)])
def test_forward_long_many_windows_per_call_equals_one_window_per_call(monkeypatch, split, per_call):
    """All logits and the memory equal the one-window path: whole windows go in power-of-two groups, a short
    final chunk alone; continuing from a memory that already holds a window."""
    import focused.memory.dense as dense
    from focused.memory.dense import forward_long

    groups = []
    real_step = dense.windows_step
    monkeypatch.setattr(dense, "windows_step", lambda *a, **k: groups.append(a[5]) or real_step(*a, **k))

    config = tiny_config(max_position_embeddings=16, last_context_length=8, mem_layers=(0, 2))
    model = build(config, seed=61)
    ids, mask = _prompt(config, np.random.default_rng(62), n=100)
    _, start = forward_long(model, ids[:, :16], mask[:, :16], capacity=128)
    one, mem_one = forward_long(model, ids[:, 16:], mask[:, 16:], memory=start, split=split, windows_per_call=1)
    _, start = forward_long(model, ids[:, :16], mask[:, :16], capacity=128)
    many, mem_many = forward_long(
        model, ids[:, 16:], mask[:, 16:], memory=start, split=split, windows_per_call=per_call
    )
    assert groups == {("windows", None): [4], ("longllama", 3): [2, 2], ("windows", 2): [2, 2]}[(split, per_call)]
    real = np.asarray(mask[:, 16:], bool)
    np.testing.assert_allclose(np.asarray(many)[real], np.asarray(one)[real], atol=1e-5, rtol=0)
    assert int(mem_many.length) == int(mem_one.length) == 100
    np.testing.assert_array_equal(np.asarray(mem_many.mask), np.asarray(mem_one.mask))
    _, mem_none = forward_long(model, ids, mask, capacity=128, logits=None, windows_per_call=per_call)
    _, mem_ref = forward_long(model, ids, mask, capacity=128, logits=None, windows_per_call=1)
    slots = np.asarray(mem_ref.mask)
    for a, b in zip(mem_none.keys, mem_ref.keys, strict=True):
        np.testing.assert_allclose(
            np.moveaxis(np.asarray(a), 2, 1)[slots], np.moveaxis(np.asarray(b), 2, 1)[slots], atol=1e-5
        )


def test_forward_long_refuses_a_window_count_below_one():
    from focused.memory.dense import forward_long

    model = build(tiny_config(), seed=63)
    with pytest.raises(ValueError, match="windows_per_call must be >= 1"):
        forward_long(model, np.ones((1, 40), np.int32), windows_per_call=0)
