"""The pure, jitted pieces of training: masked next-token loss, the train step (with gradient accumulation and
CrossBatch memory in memory layers), and the eval step.

The loss is ordinary next-token cross-entropy; the FoT "contrastive" part is only in what memory layers see
(`CrossBatch`: earlier rows of the same document as positives, rows of other documents as negatives).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from focused.memory.crossbatch import CrossBatch
from focused.model.llama import LlamaForCausalLM

Batch = dict[str, jax.Array]


def token_loss(
    model: LlamaForCausalLM, batch: Batch, cross_batch: CrossBatch | None = None
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """(sum of masked cross-entropies, (counted tokens, correct argmax predictions)) for `[rows, window]` arrays
    `inputs`, `targets`, `loss_mask` and, where batches hold padding between documents, `attention_mask` (0 on
    padding: it is then no key of local attention nor of CrossBatch memory).

    With `loss_positions` `[rows, n]` (`loss_positions` below; -1 = padding) only those positions get logits, and
    the last layer runs only there: the same loss and gradients, for a fraction of the last layer's work. With
    `[rows / s, n]` they are positions of rows s-1, 2s-1, … only (`loss_rows`: no other row has a loss)."""
    where = batch.get("loss_positions")
    targets, mask = batch["targets"], batch["loss_mask"].astype(jnp.float32)
    stride = 1
    if where is not None:
        stride = targets.shape[0] // where.shape[0]
        targets, mask = targets[stride - 1 :: stride], mask[stride - 1 :: stride]
        at = jnp.maximum(where, 0)
        targets = jnp.take_along_axis(targets, at, axis=1)
        mask = jnp.take_along_axis(mask, at, axis=1) * (where >= 0)
        where = at
    logits = model(
        batch["inputs"],
        attention_mask=batch.get("attention_mask"),
        memory=cross_batch,
        output_positions=where,
        output_stride=stride,
    ).logits
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    # the target is the argmax when its logit is the row's maximum (a tie counts as correct): a max-reduction and
    # a gather, where XLA:CPU's argmax (a variadic reduction) cost ~5% of a small model's train step
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    correct = ((target_logit >= logits.max(-1)) * mask).sum()
    return (ce * mask).sum(), (mask.sum(), correct)


def loss_positions(loss_mask: np.ndarray, most: int | None = None, max_fraction: float = 0.5) -> np.ndarray | None:
    """`[rows, n]` int32 from loss_mask `[rows, window]`: each row's positions with a nonzero loss weight, in
    order, padded with -1. n is the power of two ≥ `most` (default: the largest count of a row here; processes
    of a multi-host job pass the largest over all of them), so a few shapes serve every batch. None when n
    exceeds `max_fraction` of the window: computing every position is then about as cheap."""
    if most is None:
        most = int((loss_mask != 0).sum(axis=1).max(initial=0))
    n = 1 << max(most - 1, 0).bit_length()
    if n > max_fraction * loss_mask.shape[1]:
        return None
    rank = np.cumsum(loss_mask != 0, axis=1) - 1  # the slot of each counted position in its row
    out = np.full((loss_mask.shape[0], n), -1, np.int32)
    rows, cols = np.nonzero(loss_mask)
    out[rows, rank[rows, cols]] = cols
    return out


def loss_rows(loss_mask: np.ndarray, group: int) -> int:
    """The stride s of the rows with a loss: `group` when only the last row of each group of `group` rows (a
    k-group: one document's windows) has one (dictionary lookup: its queries row), else 1."""
    if group < 2 or loss_mask.shape[0] % group:
        return 1
    counted = (loss_mask != 0).any(axis=1).reshape(-1, group)
    return group if not counted[:, :-1].any() else 1


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    accum_steps: int,
    cross_batch: CrossBatch | None = None,
):
    """A jitted `step(params, opt_state, batch) -> (params, opt_state, metrics)`.

    The batch's rows are split into `accum_steps` contiguous micro-batches (a k-group of rows is contiguous, so it
    stays whole when rows per micro-batch is a multiple of k) and scanned; CrossBatch then works inside each
    micro-batch. Gradients are averaged per counted token over the whole batch.
    """

    def loss_fn(params: nnx.State, micro: Batch) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        return token_loss(nnx.merge(graphdef, params), micro, cross_batch)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params: nnx.State, opt_state: Any, batch: Batch):
        if accum_steps == 1:
            (loss_sum, (count, correct)), grads = grad_fn(params, batch)
        else:
            micro = jax.tree.map(lambda x: x.reshape(accum_steps, -1, *x.shape[1:]), batch)

            def body(carry, mb):
                grads, loss_sum, count, correct = carry
                (loss, (n, c)), g = grad_fn(params, mb)
                return (jax.tree.map(jnp.add, grads, g), loss_sum + loss, count + n, correct + c), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            (grads, loss_sum, count, correct), _ = jax.lax.scan(body, (zeros, 0.0, 0.0, 0.0), micro)
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {
            "loss": loss_sum / denom,
            "accuracy": correct / denom,
            "grad_norm": optax.tree.norm(grads),
            "tokens": count,
        }
        return params, opt_state, metrics

    return step


def make_eval_step(graphdef: nnx.GraphDef, cross_batch: CrossBatch | None = None):
    """A jitted `eval_step(params, batch) -> (loss sum, counted tokens, correct)`."""

    @jax.jit
    def eval_step(params: nnx.State, batch: Batch):
        loss, (count, correct) = token_loss(nnx.merge(graphdef, params), batch, cross_batch)
        return loss, count, correct

    return eval_step
