"""CrossBatch: training attention equals the inference memory path; no leak; the stepping rule of DESIGN §4."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from focused.memory.crossbatch import CrossBatch, positives_negatives
from focused.memory.dense import forward_long
from tests.memory.test_dense import build, tiny_config
from tests.reference import forward_long_reference, params_numpy


@pytest.mark.parametrize(
    ("r", "k", "stepping", "distractors"),
    [(3, 1, False, True), (3, 4, True, True), (2, 2, False, True), (3, 4, False, False), (5, 4, True, False)],
)
def test_row_equals_dense_memory_over_the_rows_it_sees(r, k, stepping, distractors):
    """Row i under CrossBatch == the inference path (dense memory) run over rows i-c+1 … i as windows."""
    config = tiny_config(mem_layers=(1,))  # one memory layer: earlier rows' keys depend only on their own tokens
    model = build(config, seed=21)
    batch, window = 8, config.max_position_embeddings
    ids = np.random.default_rng(22).integers(0, config.vocab_size, size=(batch, window))
    cross = CrossBatch(range=r, group=k, stepping=stepping, distractors=distractors)
    logits = np.asarray(model(jnp.asarray(ids), memory=cross).logits)
    p = params_numpy(model)
    seen = 1 + cross.visible(batch).sum(axis=1)  # the visible rows are always the nearest ones
    if distractors:
        np.testing.assert_array_equal(seen, cross.contexts(batch))
    for i, c in enumerate(seen):
        rows = ids[i - c + 1 : i + 1].reshape(1, -1)  # the visible rows, oldest first, as consecutive windows
        inference, _ = forward_long(model, rows)
        np.testing.assert_allclose(logits[i], np.asarray(inference[0, -window:]), atol=2e-5, rtol=0)
        direct = forward_long_reference(config, p, rows[0])[-window:]
        np.testing.assert_allclose(logits[i], direct, atol=2e-5, rtol=0)


def test_no_leak_gradient_to_later_rows_is_exactly_zero():
    # two memory layers: row i also depends (through layer 0) on rows up to 2r back, never on rows after it
    config = tiny_config(mem_layers=(0, 2))
    model = build(config, seed=23)
    batch = 6
    ids = jnp.asarray(np.random.default_rng(24).integers(0, config.vocab_size, size=(batch, 16)))
    embeds = model.model.embed_tokens(ids)
    cross = CrossBatch(range=3, group=2, stepping=False)

    def row_losses(e):
        return model(ids, memory=cross, inputs_embeds=e).logits.sum(axis=(1, 2))  # [batch]

    jacobian = np.asarray(jax.jit(jax.jacrev(row_losses))(embeds))  # [batch (loss row), batch, seq, hidden]
    for i in range(batch):
        norms = np.abs(jacobian[i]).sum(axis=(1, 2))
        assert np.all(norms[i + 1 :] == 0.0), (i, norms)  # exactly zero: rows after i are never seen
        visible = range(max(0, i - 3), i + 1)
        assert all(norms[j] > 0 for j in visible), (i, norms)  # and the rows it sees do get gradient


def test_stepping_positives_and_negatives_for_longllama_3b():
    cross = CrossBatch(range=3, group=4, stepping=True)
    counts = positives_negatives(cross, 12)
    assert counts[:4] == [(0, 0), (1, 0), (2, 0), (3, 0)]  # the first group has no earlier rows to wrap into
    assert counts[4:8] == counts[8:12] == [(0, 0), (1, 1), (2, 1), (3, 0)]
    assert cross.contexts(12).max() == 4  # an 8k differentiable context at W = 2048


def test_without_distractors_a_row_sees_only_its_own_documents_earlier_windows():
    for r, k, stepping in [(7, 8, False), (3, 4, True), (5, 2, False), (2, 4, False)]:
        cross = CrossBatch(range=r, group=k, stepping=stepping, distractors=False)
        counts = positives_negatives(cross, 3 * k)
        with_distractors = positives_negatives(CrossBatch(range=r, group=k, stepping=stepping), 3 * k)
        assert counts == [(pos, 0) for pos, _ in with_distractors]  # the same positives, no negatives
    assert positives_negatives(CrossBatch(7, 8, distractors=False), 16)[8:] == [(j, 0) for j in range(8)]


def test_contexts_without_stepping_and_range_zero():
    assert list(CrossBatch(range=2).contexts(5)) == [1, 2, 3, 3, 3]
    config = tiny_config(mem_layers=(1,))
    model = build(config, seed=25)
    ids = jnp.asarray(np.random.default_rng(26).integers(0, 97, size=(3, 16)))
    none = model(ids).logits
    zero = model(ids, memory=CrossBatch(range=0)).logits
    np.testing.assert_allclose(np.asarray(none), np.asarray(zero), atol=1e-6)


def test_negative_range_is_an_error():
    with pytest.raises(ValueError, match="range >= 0"):
        CrossBatch(range=-1)


def test_remat_gives_the_same_crossbatch_gradients():
    config = tiny_config(mem_layers=(1,))
    plain = build(config, seed=27)
    remat = nnx.merge(nnx.graphdef(build(config.replace(remat=True), seed=0)), nnx.state(plain))
    ids = jnp.asarray(np.random.default_rng(28).integers(0, 97, size=(4, 16)))
    cross = CrossBatch(range=2, group=2, stepping=False)

    def loss(m):
        return m(ids, memory=cross).logits.mean()

    g1 = nnx.jit(nnx.grad(loss))(plain)
    g2 = nnx.jit(nnx.grad(loss))(remat)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_distractor_bias_is_ln_w_on_seen_rows_of_other_documents_only():
    cross = CrossBatch(3, group=2, distractor_weight=4.0)
    bias, visible = cross.bias(6), cross.visible(6)
    for i in range(6):
        for j in range(3):
            other = visible[i, j] and (i - 1 - j) // 2 != i // 2
            assert bias[i, j] == pytest.approx(np.log(4.0) if other else 0.0)
    assert CrossBatch(3, group=2).bias(6) is None
    with pytest.raises(ValueError, match="distractor_weight must be > 0"):
        CrossBatch(3, group=2, distractor_weight=0.0)


@pytest.mark.parametrize("path", ["reference", "flash", "banded"])
def test_a_distractor_weight_of_w_equals_w_copies_of_every_distractor(path, monkeypatch):
    """Weight w (ln w on the scores) is the same attention as a memory that holds each distractor row's keys and
    values w times over, built by hand here; for every read path (reference, the flash dispatch, the banded read)."""
    from focused.memory import core
    from focused.memory.core import MemoryBlock, causal_mask, memory_attention

    rows, seq, heads, kvh, d, w = 6, 5, 4, 2, 8, 3
    rng = np.random.default_rng(11)
    q, lk, lv = (jnp.asarray(rng.normal(size=(rows, seq, n, d)), jnp.float32) for n in (heads, kvh, kvh))
    mk, mv = (jnp.asarray(rng.normal(size=(rows, seq, kvh, d)), jnp.float32) for _ in range(2))
    valid = np.ones((rows, seq), bool)
    valid[2, :2] = False
    local = causal_mask(jnp.asarray(valid)) | (jnp.arange(seq) == seq - 1)
    cross = CrossBatch(3, group=2, distractor_weight=float(w))
    if path == "banded":
        monkeypatch.setattr(core, "BANDED_MIN_RANGE", 2)
    impl = "reference" if path == "reference" else "flash"
    got = memory_attention(q, lk, lv, local, cross.rolled(mk, mv, jnp.asarray(valid)), impl=impl)

    width = 3 * w * seq
    keys, values = np.zeros((rows, width, kvh, d), np.float32), np.zeros((rows, width, kvh, d), np.float32)
    mask = np.zeros((rows, width), bool)
    for i in range(rows):
        slots = [i - 1 - j for j in range(3) if cross.visible(rows)[i, j]]
        slots = [s for s in slots for _ in range(w if s // 2 != i // 2 else 1)]
        for n, s in enumerate(slots):
            keys[i, n * seq : (n + 1) * seq], values[i, n * seq : (n + 1) * seq] = mk[s], mv[s]
            mask[i, n * seq : (n + 1) * seq] = valid[s]
    copies = MemoryBlock(jnp.asarray(keys), jnp.asarray(values), jnp.asarray(mask))
    want = memory_attention(q, lk, lv, local, copies, impl="reference")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=0)
    plain = memory_attention(q, lk, lv, local, CrossBatch(3, group=2).memory(mk, mv, jnp.asarray(valid)))
    assert float(jnp.abs(plain - want).max()) > 1e-2  # the weight matters
