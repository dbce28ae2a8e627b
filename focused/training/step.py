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
    padding: it is then no key of local attention nor of CrossBatch memory)."""
    logits = model(batch["inputs"], attention_mask=batch.get("attention_mask"), memory=cross_batch).logits
    targets = batch["targets"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    mask = batch["loss_mask"].astype(jnp.float32)
    # the target is the argmax when its logit is the row's maximum (a tie counts as correct): a max-reduction and
    # a gather, where XLA:CPU's argmax (a variadic reduction) cost ~5% of a small model's train step
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    correct = ((target_logit >= logits.max(-1)) * mask).sum()
    return (ce * mask).sum(), (mask.sum(), correct)


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
