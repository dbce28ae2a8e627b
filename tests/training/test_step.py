"""The train step's loss with padding inside batches (`config.data.align_documents`)."""

import jax.numpy as jnp
import numpy as np

from focused.memory.crossbatch import CrossBatch
from focused.training.step import token_loss
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
