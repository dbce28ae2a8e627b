"""Chunked flash attention with a hand-written VJP (`focused.memory.flash`): outputs and gradients equal the
reference path of `memory_attention` (materialised scores, autodiff) within 1e-5."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focused.memory.core import MemoryBlock, _attend_chunk, causal_mask, memory_attention
from focused.memory.crossbatch import CrossBatch
from focused.memory.flash import flash_attention, flash_attention_sets
from tests.memory.test_dense import build, tiny_config

SHAPES = [  # b, t, kv_heads, group, d, n keys, chunk
    (2, 5, 2, 2, 8, 13, 4),  # GQA, n not a multiple of the chunk
    (1, 7, 1, 4, 16, 7, 16),  # one chunk larger than n
    (3, 4, 3, 1, 4, 24, 8),  # no grouping, whole chunks
]


def grads_of(fn, args, cotangent):
    return jax.grad(lambda *a: jnp.sum(fn(*a) * cotangent), argnums=tuple(range(len(args))))(*args)


@pytest.mark.parametrize("shape", SHAPES)
def test_flash_core_equals_reference_outputs_and_gradients(shape):
    b, t, kvh, g, d, n, chunk = shape
    rng = np.random.default_rng(sum(shape))
    q = jnp.asarray(rng.normal(size=(b, t, kvh, g, d)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, n, kvh, d)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, n, kvh, d)), jnp.float32)
    mask = rng.random((b, t, n)) > 0.3
    mask[0, 0] = False  # a fully masked query row: uniform weights in both, no gradient through its scores
    mask = jnp.asarray(mask)
    cot = jnp.asarray(rng.normal(size=(b, t, kvh, g, d)), jnp.float32)

    def reference(q, k, v):
        return _attend_chunk(q, k, v, mask, None, d**-0.5)

    def flash(q, k, v):
        return flash_attention(q, k, v, mask, chunk)

    np.testing.assert_allclose(np.asarray(flash(q, k, v)), np.asarray(reference(q, k, v)), atol=1e-5, rtol=0)
    for got, want in zip(grads_of(flash, (q, k, v), cot), grads_of(reference, (q, k, v), cot), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


@pytest.mark.parametrize("limit", [0, 3, 8, 13, 16])
def test_a_fill_limit_reads_only_the_chunks_below_it(limit):
    """A memory set filled up to `limit` (keys from it on masked) gives the reference's outputs and gradients with
    the limit traced under jit (one program for every level); chunks wholly past it are never read: keys planted
    there unmasked change nothing."""
    b, t, kvh, g, d, n, chunk = 2, 5, 2, 2, 8, 16, 4
    rng = np.random.default_rng(100 + limit)
    q = jnp.asarray(rng.normal(size=(b, t, kvh, g, d)), jnp.float32)
    mk, mv = (jnp.asarray(rng.normal(size=(b, n, kvh, d)), jnp.float32) for _ in range(2))
    k, v = (jnp.asarray(rng.normal(size=(b, t, kvh, d)), jnp.float32) for _ in range(2))
    filled = rng.random((b, 1, n)) > 0.3
    filled[:, :, limit:] = False
    local = causal_mask(jnp.ones((b, t), bool))
    cot = jnp.asarray(rng.normal(size=(b, t, kvh, g, d)), jnp.float32)

    def reference(q, mk, mv, k, v):
        memory = MemoryBlock(mk, mv, jnp.asarray(filled[:, 0]))
        return _attend_chunk(q, k, v, local, memory, d**-0.5)

    @jax.jit
    def limited(q, mk, mv, k, v, level):
        sets = ((mk, mv, jnp.asarray(filled)), (k, v, local))
        return flash_attention_sets(q, sets, chunk, (level, None))

    level = jnp.int32(limit)
    want = reference(q, mk, mv, k, v)
    np.testing.assert_allclose(np.asarray(limited(q, mk, mv, k, v, level)), np.asarray(want), atol=1e-5, rtol=0)
    got_grads = grads_of(lambda *a: limited(*a, level), (q, mk, mv, k, v), cot)
    for got, ref in zip(got_grads, grads_of(reference, (q, mk, mv, k, v), cot), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=0)
    beyond = -(-limit // chunk) * chunk  # the first key of the first chunk the loop skips
    planted = filled.copy()
    planted[:, :, beyond:] = True
    sets = ((mk, mv, jnp.asarray(planted)), (k, v, local))
    skipped = flash_attention_sets(q, sets, chunk, (level, None))
    np.testing.assert_allclose(np.asarray(skipped), np.asarray(want), atol=1e-5, rtol=0)
    if beyond < n:  # without the limit the planted keys are read: the check above can fail
        assert float(jnp.abs(flash_attention_sets(q, sets, chunk) - want).max()) > 1e-3


@pytest.mark.parametrize("with_memory", [True, False])
def test_memory_attention_flash_equals_reference_with_memory_and_padding(with_memory):
    b, t, heads, kvh, d, m = 2, 6, 4, 2, 8, 11
    rng = np.random.default_rng(7)
    q = jnp.asarray(rng.normal(size=(b, t, heads, d)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, t, kvh, d)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, t, kvh, d)), jnp.float32)
    mk = jnp.asarray(rng.normal(size=(b, m, kvh, d)), jnp.float32)
    mv = jnp.asarray(rng.normal(size=(b, m, kvh, d)), jnp.float32)
    key_valid = np.ones((b, t), bool)
    key_valid[1, :2] = False  # left padding
    local = causal_mask(jnp.asarray(key_valid))
    mem_mask = jnp.asarray(rng.random((b, m)) > 0.4)
    cot = jnp.asarray(rng.normal(size=(b, t, heads, d)), jnp.float32)

    def run(impl):
        def fn(q, k, v, mk, mv):
            memory = MemoryBlock(mk, mv, mem_mask) if with_memory else None
            return memory_attention(q, k, v, local, memory, impl=impl, kv_chunk=4)

        return fn

    args = (q, k, v, mk, mv)
    np.testing.assert_allclose(np.asarray(run("flash")(*args)), np.asarray(run("reference")(*args)), atol=1e-5)
    for got, want in zip(grads_of(run("flash"), args, cot), grads_of(run("reference"), args, cot), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


@pytest.mark.parametrize("local_impl", ["flash", "reference"])
def test_model_crossbatch_gradients_with_flash_equal_reference(local_impl):
    """CrossBatch memory is read with `memory_read_impl` (flash: in place), local attention with `attention_impl`;
    either mix gives the all-reference model's loss and gradients."""
    from flax import nnx

    config = tiny_config(mem_layers=(1,))
    plain = build(config.replace(memory_read_impl="reference"), seed=27)
    fast = config.replace(attention_impl=local_impl, memory_read_impl="flash", attention_chunk=8)
    flash = nnx.merge(nnx.graphdef(build(fast)), nnx.state(plain))
    ids = jnp.asarray(np.random.default_rng(28).integers(0, 97, size=(4, 16)))
    cross = CrossBatch(range=2, group=2, stepping=False)

    def loss(model):
        return model(ids, memory=cross).logits.std()

    np.testing.assert_allclose(float(loss(flash)), float(loss(plain)), atol=1e-5)
    g_ref = nnx.jit(nnx.grad(loss))(plain)
    g_flash = nnx.jit(nnx.grad(loss))(flash)
    for a, b in zip(jax.tree.leaves(g_flash), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_reading_a_memory_store_gives_the_same_logits_and_tokens_with_either_kernel():
    """`memory_read_impl` (the kernel for reading a store's memory: forward_long, ingest, decoding) changes speed,
    not results: flash and reference agree on every logit of a long padded input at its real tokens, and on greedy
    tokens. (A padding position's query has every key masked; its output is never used, and the flash kernel, which
    skips empty memory chunks, spreads its uniform weights over fewer keys than the reference.)"""
    from flax import nnx

    from focused.generate import generate
    from focused.memory.dense import forward_long

    config = tiny_config(mem_layers=(0, 2))
    ref = build(config.replace(memory_read_impl="reference"), seed=31)
    flash = nnx.merge(nnx.graphdef(build(config.replace(memory_read_impl="flash", attention_chunk=8))), nnx.state(ref))
    rng = np.random.default_rng(32)
    ids = rng.integers(0, config.vocab_size, size=(2, 5 * 16 + 3))
    mask = np.ones_like(ids)
    mask[1, :7] = 0  # left padding in one row
    want, _ = forward_long(ref, ids, mask)
    got, _ = forward_long(flash, ids, mask)
    assert float(jnp.abs(want).max()) > 0.1  # the comparison is not between zeros
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=2e-5, rtol=0)
    tokens = [generate(m, ids, 12, attention_mask=mask, progress=False) for m in (ref, flash)]
    np.testing.assert_array_equal(tokens[0], tokens[1])


def test_memory_read_impl_is_validated():
    with pytest.raises(ValueError, match="memory_read_impl must be 'reference' or 'flash'"):
        tiny_config(memory_read_impl="fast")


def test_a_heads_major_memory_set_gives_the_token_major_outputs_and_gradients():
    """A memory store's heads-major set (keys `[b, kvh, n, d]`, values `[b, kvh, d, n]`, read in place) gives the
    same outputs as the token-major set, and gradients that are the token-major ones transposed."""
    b, t, kvh, g, d, n, chunk = 2, 6, 2, 2, 8, 13, 4
    rng = np.random.default_rng(55)
    q = jnp.asarray(rng.normal(size=(b, t, kvh, g, d)), jnp.float32)
    mk, mv = (jnp.asarray(rng.normal(size=(b, n, kvh, d)), jnp.float32) for _ in range(2))
    k, v = (jnp.asarray(rng.normal(size=(b, t, kvh, d)), jnp.float32) for _ in range(2))
    mem_mask = jnp.asarray(rng.random((b, 1, n)) > 0.3)
    local = causal_mask(jnp.ones((b, t), bool))
    cot = jnp.asarray(rng.normal(size=(b, t, kvh, g, d)), jnp.float32)

    def token_major(q, mk, mv):
        return flash_attention_sets(q, ((mk, mv, mem_mask), (k, v, local)), chunk)

    def heads_major(q, hk, hv):
        return flash_attention_sets(q, ((hk, hv, mem_mask), (k, v, local)), chunk, None, (True, False))

    hk, hv = jnp.moveaxis(mk, 1, 2), jnp.transpose(mv, (0, 2, 3, 1))
    want = token_major(q, mk, mv)
    np.testing.assert_allclose(np.asarray(heads_major(q, hk, hv)), np.asarray(want), atol=1e-5, rtol=0)
    dq, dk, dv = grads_of(heads_major, (q, hk, hv), cot)
    wq, wk, wv = grads_of(token_major, (q, mk, mv), cot)
    np.testing.assert_allclose(np.asarray(dq), np.asarray(wq), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(dk), np.asarray(jnp.moveaxis(wk, 1, 2)), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(dv), np.asarray(jnp.transpose(wv, (0, 2, 3, 1))), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "cross",
    [
        CrossBatch(3, group=2),
        CrossBatch(2, group=4, stepping=True),
        CrossBatch(0),
        CrossBatch(3, group=2, distractor_weight=3.0),  # ln 3 on other documents' rows, read in place too
    ],
)
def test_crossbatch_memory_read_in_place_equals_the_materialised_block(cross, monkeypatch):
    """The flash kernel reads CrossBatch memory one rolled window at a time (`RolledMemory`): outputs and gradients
    (through the keys/values, which are also the rows' local keys) equal the reference over the materialised
    `[batch, range * seq]` block, with padding."""
    from focused.memory.core import RolledMemory

    b, t, heads, kvh, d = 6, 5, 4, 2, 8
    rng = np.random.default_rng(66 + cross.range)
    q = jnp.asarray(rng.normal(size=(b, t, heads, d)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(b, t, kvh, d)), jnp.float32) for _ in range(2))
    key_valid = np.ones((b, t), bool)
    key_valid[2, :2] = False
    local = causal_mask(jnp.asarray(key_valid))
    cot = jnp.asarray(rng.normal(size=(b, t, heads, d)), jnp.float32)

    def run(impl):
        def fn(q, k, v):
            rolled = cross.rolled(k, v, local[:, -1, :])
            assert isinstance(rolled, RolledMemory)
            return memory_attention(q, k, v, local, rolled, impl=impl, kv_chunk=4)

        return fn

    if cross.distractor_weight != 1:  # the flash path reads the weighted memory in place, never materialising it
        calls = []
        monkeypatch.setattr(RolledMemory, "materialize", lambda self: calls.append(1) or None)
        jax.eval_shape(run("flash"), q, k, v)
        assert not calls
        monkeypatch.undo()

    want = run("reference")(q, k, v)
    np.testing.assert_allclose(np.asarray(run("flash")(q, k, v)), np.asarray(want), atol=1e-5, rtol=0)
    got_grads, want_grads = grads_of(run("flash"), (q, k, v), cot), grads_of(run("reference"), (q, k, v), cot)
    for got, ref in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=0)
    if cross.range:  # the memory matters: without it the outputs differ
        plain = memory_attention(q, k, v, local, None, impl="reference")
        assert float(jnp.abs(plain - want).max()) > 1e-2
