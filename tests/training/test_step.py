"""The train step's loss: padding inside batches (`config.data.align_documents`), a direct recount, and the
sparse-loss path (logits and the last layer only at loss positions) against the full one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from focused.memory.crossbatch import CrossBatch
from focused.training.step import loss_positions, loss_rows, token_loss
from tests.memory.test_dense import build, tiny_config


def aligned_batch(seed: int, pad_tokens: np.ndarray) -> dict[str, jnp.ndarray]:
    """Two rows of one k = 2 group: row 0 = a short document and then padding (`pad_tokens` in its slots, which
    the packer fills with pad_id), row 1 = the next document."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(3, 97, size=(2, 16)).astype(np.int32)
    inputs[0, 10:] = pad_tokens
    targets = np.roll(inputs, -1, axis=1)
    loss_mask = np.ones((2, 16), np.float32)
    loss_mask[0, 9:] = 0  # no target at or after the padding
    attention_mask = np.ones((2, 16), np.int32)
    attention_mask[0, 10:] = 0
    return {
        "inputs": jnp.asarray(inputs),
        "targets": jnp.asarray(targets),
        "loss_mask": jnp.asarray(loss_mask),
        "attention_mask": jnp.asarray(attention_mask),
    }


def test_padding_is_no_key_of_local_attention_or_crossbatch_memory():
    model = build(tiny_config(), seed=3)
    spec = CrossBatch(range=1, group=2)
    zeros, noise = np.zeros(6, np.int32), np.random.default_rng(9).integers(3, 97, size=6).astype(np.int32)
    with_zeros, with_noise = aligned_batch(0, zeros), aligned_batch(0, noise)
    loss_a, (count_a, _) = token_loss(model, with_zeros, spec)
    loss_b, (count_b, _) = token_loss(model, with_noise, spec)
    assert float(count_a) == float(count_b) == 9 + 16
    np.testing.assert_allclose(float(loss_a), float(loss_b), rtol=1e-6)  # what sits in padding slots is unseen
    # the check can fail: without the attention mask row 1 reads the padding slots of row 0 from memory
    unmasked_a = {k: v for k, v in with_zeros.items() if k != "attention_mask"}
    unmasked_b = {k: v for k, v in with_noise.items() if k != "attention_mask"}
    assert abs(float(token_loss(model, unmasked_a, spec)[0]) - float(token_loss(model, unmasked_b, spec)[0])) > 1e-3


def test_loss_and_correct_count_equal_a_direct_recount():
    """token_loss's sum of cross-entropies and its count of correct predictions equal a numpy recount with argmax,
    on a random model and random targets where about half the predictions are made right on purpose."""
    config = tiny_config(mem_layers=(1,))
    model = build(config, seed=41)
    rng = np.random.default_rng(42)
    inputs = jnp.asarray(rng.integers(0, 97, size=(3, 16)).astype(np.int32))
    logits = np.asarray(model(inputs).logits, np.float64)
    targets = rng.integers(0, 97, size=(3, 16))
    hit = rng.random((3, 16)) < 0.5
    targets[hit] = logits.argmax(-1)[hit]
    mask = (rng.random((3, 16)) < 0.8).astype(np.float32)
    batch = {"inputs": inputs, "targets": jnp.asarray(targets, jnp.int32), "loss_mask": jnp.asarray(mask)}
    loss, (count, correct) = token_loss(model, batch)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    ce = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    assert float(count) == mask.sum()
    assert int(correct) == int(((logits.argmax(-1) == targets) * mask).sum()) > 0
    np.testing.assert_allclose(float(loss), (ce * mask).sum(), rtol=1e-5)


def test_loss_positions_lists_each_rows_counted_positions_padded_to_a_power_of_two():
    rng = np.random.default_rng(5)
    mask = (rng.random((6, 32)) < 0.15).astype(np.float32) * rng.uniform(0.5, 2.0, (6, 32))
    mask[2] = 0  # a row without any loss position (a definitions row of dictionary lookup)
    got = loss_positions(mask)
    most = int((mask != 0).sum(1).max())
    assert got.shape == (6, 1 << (most - 1).bit_length()) and got.dtype == np.int32
    for row in range(6):
        want = np.flatnonzero(mask[row])
        np.testing.assert_array_equal(got[row, : len(want)], want)
        assert (got[row, len(want) :] == -1).all()
    assert loss_positions(mask, most=9).shape == (6, 16)  # a multi-host job's agreed width
    assert loss_positions(np.ones((2, 32))) is None  # a language-model loss: every position counts
    assert loss_positions(mask, most=17) is None  # over half the window


def sparse_batch(seed: int, rows: int = 4, seq: int = 16) -> dict[str, jnp.ndarray]:
    """Random tokens and targets; about a fifth of the positions counted, one row with none and one fully padded
    tail (attention_mask 0 in the last quarter of row 2)."""
    rng = np.random.default_rng(seed)
    mask = (rng.random((rows, seq)) < 0.2).astype(np.float32)
    mask[1] = 0
    mask[0, [3, 7]] = 1.0
    attention = np.ones((rows, seq), np.int32)
    attention[2, seq * 3 // 4 :] = 0
    mask[2, seq * 3 // 4 - 1 :] = 0
    return {
        "inputs": jnp.asarray(rng.integers(0, 97, (rows, seq)), jnp.int32),
        "targets": jnp.asarray(rng.integers(0, 97, (rows, seq)), jnp.int32),
        "loss_mask": jnp.asarray(mask),
        "attention_mask": jnp.asarray(attention),
    }


def assert_same_loss_and_gradients(loss, params, batch: dict, sparse: dict) -> None:
    """`loss(params, batch)` -> (loss, (count, correct)): the sparse batch gives the full batch's loss, counts and
    gradients (one jitted value-and-gradient function for both)."""
    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (full, (count, correct)), grads = step(params, batch)
    (cut, (count_s, correct_s)), grads_s = step(params, sparse)
    assert float(count_s) == float(count) == float(batch["loss_mask"].sum())
    assert int(correct_s) == int(correct)
    np.testing.assert_allclose(float(cut), float(full), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_s), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6 * float(jnp.abs(a).max()))


@pytest.mark.parametrize(
    ("mem_layers", "impl", "spec"),
    [
        ((2,), "flash", CrossBatch(range=3, group=2)),  # the memory layer is the last layer (dictionary lookup)
        ((2,), "reference", CrossBatch(range=3, group=2)),
        ((0,), "flash", CrossBatch(range=2, group=2)),  # memory earlier: only the plain last layer is cut
        ((), "flash", None),
    ],
)
def test_sparse_loss_equals_the_full_loss_and_gradients(mem_layers, impl, spec):
    config = tiny_config(mem_layers=mem_layers, attention_impl=impl, memory_read_impl=impl)
    graphdef, params = nnx.split(build(config, seed=7))
    batch = sparse_batch(11)
    sparse = dict(batch, loss_positions=jnp.asarray(loss_positions(np.asarray(batch["loss_mask"]))))
    assert sparse["loss_positions"].shape[1] < batch["inputs"].shape[1]

    def loss(params, batch):
        return token_loss(nnx.merge(graphdef, params), batch, spec)

    assert_same_loss_and_gradients(loss, params, batch, sparse)


def test_output_positions_give_the_full_models_states_at_those_positions():
    """Per-row positions (repeats allowed): the logits equal the full forward's at those positions, with CrossBatch
    memory in the last layer; asking for both position arguments is refused."""
    model = build(tiny_config(mem_layers=(2,)), seed=3)
    inputs = jnp.asarray(np.random.default_rng(4).integers(0, 97, (4, 16)), jnp.int32)
    where = jnp.asarray([[0, 5, 15], [2, 2, 9], [14, 1, 3], [7, 8, 0]], jnp.int32)
    spec = CrossBatch(range=2, group=2)
    full = model(inputs, memory=spec).logits
    cut = model(inputs, memory=spec, output_positions=where).logits
    assert cut.shape == (4, 3, 97)
    np.testing.assert_allclose(cut, jnp.take_along_axis(full, where[..., None], axis=1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        model(inputs, logit_positions=jnp.zeros(1, jnp.int32), output_positions=where)


def test_loss_rows_finds_a_loss_on_the_last_row_of_each_group_only():
    mask = np.zeros((6, 8))
    mask[[1, 5], 2] = 1
    assert loss_rows(mask, 2) == 2  # rows 1 and 5 (row 3 has none)
    assert loss_rows(mask, 3) == 1  # row 1 is not the last of its group of three
    mask[2, 0] = 1
    assert loss_rows(mask, 2) == 1 and loss_rows(mask, 1) == 1
    assert loss_rows(np.zeros((5, 8)), 2) == 1  # rows not in whole groups


@pytest.mark.parametrize(("rows", "r", "impl"), [(8, 3, "reference"), (12, 5, "flash")])
def test_a_loss_on_query_rows_only_skips_the_other_rows_exactly(rows, r, impl, monkeypatch):
    """Dictionary lookup's layout: k = 2, a loss only in the second row of each group. The last (memory) layer
    then runs for those rows only (materialised or banded CrossBatch read): the same loss and gradients. The banded
    read is taken from range 4 here (BANDED_MIN_RANGE lowered), so the case stays small."""
    from focused.memory import banded, core

    calls = []
    read = banded.banded_crossbatch_attention
    monkeypatch.setattr(core, "BANDED_MIN_RANGE", 4)
    monkeypatch.setattr(banded, "banded_crossbatch_attention", lambda *a: calls.append(a[6]) or read(*a))
    config = tiny_config(mem_layers=(1,), num_hidden_layers=2, attention_impl=impl, memory_read_impl=impl)
    graphdef, params = nnx.split(build(config, seed=8))
    batch = sparse_batch(12, rows=rows)
    mask = np.asarray(batch["loss_mask"]).copy()
    mask[0::2] = 0
    mask[1::2, 5] = 1.0
    batch["loss_mask"] = jnp.asarray(mask)
    assert loss_rows(mask, 2) == 2
    sparse = dict(batch, loss_positions=jnp.asarray(loss_positions(mask)[1::2]))
    spec = CrossBatch(range=r, group=2)

    def loss(params, batch):
        return token_loss(nnx.merge(graphdef, params), batch, spec)

    assert_same_loss_and_gradients(loss, params, batch, sparse)
    assert calls == ([1, 2] if impl == "flash" else [])  # banded: the full pass, then the query rows (stride 2)


def test_query_rows_are_refused_at_inference():
    model = build(tiny_config(mem_layers=(2,)), seed=1)
    inputs = jnp.zeros((4, 16), jnp.int32)
    with pytest.raises(ValueError, match="needs output_positions"):
        model(inputs, output_stride=2)
    layer = model.model.layers[2].self_attn
    x = jnp.zeros((4, 16, 48))
    from focused.memory.core import MemoryBlock

    memory = MemoryBlock(jnp.zeros((4, 3, 2, 12)), jnp.zeros((4, 3, 2, 12)), jnp.ones((4, 3), bool))
    _, rope, _ = model.model._local_attention((4, 16), None, None, None)
    with pytest.raises(ValueError, match="not for inference"):
        where = jnp.zeros((2, 1), jnp.int32)
        layer(x, rope, jnp.ones((4, 16, 16), bool), memory, query_positions=where, query_stride=2)
