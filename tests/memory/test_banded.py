"""CrossBatch memory read by blocks of rows (`focused.memory.banded`): outputs and gradients equal the reference
path of `memory_attention` over the materialised memory block, for any block and chunk split, every visibility
pattern of `CrossBatch`, padding, and queries at a subset of positions (the sparse-loss path)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from focused.memory.banded import _banded, block_rows, chunk_rows
from focused.memory.core import BANDED_MIN_RANGE, RolledMemory, causal_mask, memory_attention
from focused.memory.crossbatch import CrossBatch
from tests.memory.test_dense import build, tiny_config
from tests.memory.test_flash import grads_of

CASES = [  # cross, rows, block, chunk, positions (None = every position), query stride
    (CrossBatch(5, group=2), 8, 2, 3, None, 1),  # chunks overlap block edges; band longer than the batch start
    (CrossBatch(4, group=4, stepping=True), 8, 4, 2, None, 1),  # LongLLaMA's stepped contexts
    (CrossBatch(3, group=2, distractors=False), 6, 3, 4, None, 1),  # d = 1: only the row's own document
    (CrossBatch(6, group=2), 12, 1, 5, (1, 4, 6), 1),  # queries at three positions only, one row per block
    (CrossBatch(7, group=2), 12, 6, 1, (0, 6), 1),  # one memory row per step
    (CrossBatch(5, group=2), 12, 3, 4, (2, 5), 2),  # queries only in the odd rows (dictionary lookup's queries)
    (CrossBatch(6, group=3), 12, 2, 3, None, 3),  # every third row, blocks of two query rows
    (CrossBatch(5, group=2, distractor_weight=3.0), 12, 3, 4, (2, 5), 2),  # weighted distractors, query rows
    (CrossBatch(6, group=3, distractor_weight=0.5), 12, 2, 3, None, 1),  # down-weighted distractors
]


@pytest.mark.parametrize(("cross", "rows", "block", "chunk", "positions", "stride"), CASES)
def test_banded_read_equals_the_reference_over_the_materialised_block(cross, rows, block, chunk, positions, stride):
    seq, heads, kvh, d = 7, 4, 2, 8
    rng = np.random.default_rng(cross.range * 10 + block)
    where = np.arange(seq) if positions is None else np.asarray(positions)
    t, n = len(where), rows // stride  # queries a row, query rows (rows stride-1, 2·stride-1, …)
    q = jnp.asarray(rng.normal(size=(n, t, heads, d)), jnp.float32)
    mk, mv = (jnp.asarray(rng.normal(size=(rows, seq, kvh, d)), jnp.float32) for _ in range(2))
    lk, lv = (jnp.asarray(rng.normal(size=(n, seq, kvh, d)), jnp.float32) for _ in range(2))
    key_valid = np.ones((rows, seq), bool)
    key_valid[stride * 2 - 1, :2] = False  # left padding of a query row: no memory key, no local key
    key_valid[4, 3:] = False
    local = causal_mask(jnp.asarray(key_valid))[stride - 1 :: stride][:, where]
    local = local | (jnp.arange(seq) == seq - 1)  # every query has a key of its own
    visible = jnp.asarray(cross.visible(rows))
    bias = None if cross.bias(rows) is None else jnp.asarray(cross.bias(rows))
    cot = jnp.asarray(rng.normal(size=(n, t, heads, d)), jnp.float32)

    def banded(q, mk, mv, lk, lv):
        qg = q.reshape(n, t, kvh, heads // kvh, d)
        mine = (visible[stride - 1 :: stride], None if bias is None else bias[stride - 1 :: stride])
        out = _banded(qg, mk, mv, jnp.asarray(key_valid), mine, (lk, lv, local), block, chunk, stride)
        return out.reshape(n, t, heads, d)

    def reference(q, mk, mv, lk, lv):
        full = RolledMemory(mk, mv, jnp.asarray(key_valid), visible, bias).materialize()
        rows_q = slice(stride - 1, None, stride)
        weights = None if bias is None else full.bias[rows_q]
        block_ = type(full)(full.keys[rows_q], full.values[rows_q], full.mask[rows_q], bias=weights)
        return memory_attention(q, lk, lv, local, block_, impl="reference")

    args = (q, mk, mv, lk, lv)
    want = reference(*args)
    np.testing.assert_allclose(np.asarray(banded(*args)), np.asarray(want), atol=1e-5, rtol=0)
    for got, ref in zip(grads_of(banded, args, cot), grads_of(reference, args, cot), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=0)
    plain = memory_attention(q, lk, lv, local, None, impl="reference")
    assert float(jnp.abs(plain - want).max()) > 1e-2  # the memory matters


def test_block_and_chunk_sizes():
    assert block_rows(1024, 16, 511) == 64 and block_rows(1024, 64, 511) == 16
    assert block_rows(96, 16, 40) == 8 and block_rows(30, 16, 100) == 15  # a divisor of the batch
    assert block_rows(8, 64, 3) == 1
    assert chunk_rows(64) == 16 and chunk_rows(4096) == 1


def test_model_with_a_long_range_reads_by_blocks_and_matches_the_reference():
    """A model at range ≥ BANDED_MIN_RANGE (flash memory read): the same loss and gradients as the reference."""
    from flax import nnx

    rows = BANDED_MIN_RANGE + 8
    config = tiny_config(mem_layers=(1,), num_hidden_layers=2, max_position_embeddings=8, last_context_length=4)
    plain = build(config.replace(memory_read_impl="reference"), seed=5)
    fast = nnx.merge(nnx.graphdef(build(config.replace(memory_read_impl="flash"))), nnx.state(plain))
    ids = jnp.asarray(np.random.default_rng(6).integers(0, 97, size=(rows, 8)))
    cross = CrossBatch(range=BANDED_MIN_RANGE + 3, group=2)

    def loss(model):
        return model(ids, memory=cross).logits.std()

    np.testing.assert_allclose(float(loss(fast)), float(loss(plain)), rtol=1e-5)
    g_ref, g_fast = nnx.jit(nnx.grad(loss))(plain), nnx.jit(nnx.grad(loss))(fast)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
