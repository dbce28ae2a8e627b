"""The training loop: data → jitted step (loss, grads, AdamW) → metrics, progress bar and orbax checkpoints.

`train(config)` is what `train.py` calls. One step:

    batch = next(packer)                       inputs/targets/loss_mask `[batch, window]` (focused.data)
    params, opt_state, metrics = step(...)     jitted; micro-batches scanned for gradient accumulation
    metrics → TensorBoard + metrics.jsonl, progress bar (loss, tokens/s, ETA)
    every `save_every` steps → checkpoints/<step>/ (params, opt_state, data-iterator state)

Re-running the same command resumes from the latest finished checkpoint.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from focused.data import DataSourceConfig, DocumentPacker, PackingConfig, load_documents, load_tokenizer
from focused.model.config import LlamaConfig
from focused.model.llama import LlamaForCausalLM
from focused.training.checkpoint import write_model_config
from focused.training.metrics import MetricsWriter
from focused.training.optimizer import TrainConfig, make_optimizer


class TrainingError(RuntimeError):
    """The run cannot go on (for example a non-finite loss); the last good checkpoint is kept."""


def token_loss(model: LlamaForCausalLM, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(sum of masked next-token cross-entropies, number of counted tokens) for one batch `[rows, window]`."""
    logits = model(batch["inputs"]).logits
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    mask = batch["loss_mask"].astype(jnp.float32)
    return (ce * mask).sum(), mask.sum()


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, accum_steps: int):
    """A jitted `step(params, opt_state, batch) -> (params, opt_state, metrics)`.

    The batch's rows are split into `accum_steps` contiguous micro-batches (so a k-group of rows, which is
    contiguous, stays whole when rows-per-micro-batch is a multiple of k), scanned, and gradients averaged per
    counted token over the whole batch.
    """

    def loss_fn(params: nnx.State, micro: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        return token_loss(nnx.merge(graphdef, params), micro)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params: nnx.State, opt_state: Any, batch: dict[str, jax.Array]):
        micro = jax.tree.map(lambda x: x.reshape(accum_steps, -1, *x.shape[1:]), batch)

        def body(carry, mb):
            grads, loss_sum, count = carry
            (loss, n), g = grad_fn(params, mb)
            return (jax.tree.map(jnp.add, grads, g), loss_sum + loss, count + n), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        (grads, loss_sum, count), _ = jax.lax.scan(body, (zeros, 0.0, 0.0), micro)
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": loss_sum / denom, "grad_norm": optax.tree.norm(grads), "tokens": count}
        return params, opt_state, metrics

    return step


def build_model(config: ml_collections.ConfigDict) -> LlamaForCausalLM:
    """A freshly initialised model, or the one `config.init_from` names (HF folder or focused checkpoint)."""
    model_cfg = LlamaConfig.from_dict(config.model.to_dict())
    init_from = config.get("init_from")
    if not init_from:
        return LlamaForCausalLM(model_cfg, rngs=nnx.Rngs(config.seed))
    path = Path(init_from)
    if not path.exists():
        raise FileNotFoundError(f"config.init_from={init_from} does not exist: point it at a HF or focused checkpoint")
    if (path / "config.json").is_file():
        from focused.convert import import_hf

        model = import_hf(path)
    else:
        from focused.training.checkpoint import load_model

        model = load_model(path)
    # keep the FoT fields and numerics of this config on top of the imported weights
    merged = model.config.replace(
        mem_layers=model_cfg.mem_layers,
        mem_positionals=model_cfg.mem_positionals,
        mem_dtype=model_cfg.mem_dtype,
        last_context_length=model_cfg.last_context_length,
        param_dtype=model_cfg.param_dtype,
        dtype=model_cfg.dtype,
        remat=model_cfg.remat,
    )
    fresh = LlamaForCausalLM(merged, rngs=nnx.Rngs(config.seed))
    nnx.update(fresh, nnx.state(model, nnx.Param))
    return fresh


def build_data(config: ml_collections.ConfigDict) -> DocumentPacker:
    data = config.data
    tokenizer = load_tokenizer(data.tokenizer)
    documents = load_documents(DataSourceConfig.from_dict(data.source.to_dict()))
    packing = PackingConfig(
        batch_size=data.batch_size,
        window=config.model.max_position_embeddings,
        k=data.k,
        seed=data.seed,
    )
    if tokenizer.vocab_size > config.model.vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.vocab_size} tokens but config.model.vocab_size={config.model.vocab_size}"
        )
    return DocumentPacker(documents, tokenizer, packing)


def checkpoint_manager(workdir: Path, cfg: TrainConfig) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep_checkpoints, enable_async_checkpointing=cfg.async_checkpointing, create=True
    )
    return ocp.CheckpointManager(workdir / "checkpoints", options=options)


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def train(config: ml_collections.ConfigDict) -> dict[str, float]:
    """Runs (or resumes) training as configured; returns the last logged metrics."""
    cfg = TrainConfig.from_dict(config.train.to_dict())
    if config.data.batch_size % (cfg.accum_steps * config.data.k):
        raise ValueError(
            f"config.data.batch_size={config.data.batch_size} must be divisible by accum_steps*k "
            f"({cfg.accum_steps}*{config.data.k}) so micro-batches hold whole groups of k rows"
        )
    workdir = Path(config.workdir).absolute()
    packer = build_data(config)
    model = build_model(config)
    write_model_config(model.config, workdir)
    graphdef, params = nnx.split(model)
    tx = make_optimizer(cfg)
    opt_state = tx.init(params)
    pure = nnx.to_pure_dict(params)
    mngr = checkpoint_manager(workdir, cfg)
    start = 0
    if mngr.latest_step() is not None:
        start = mngr.latest_step()
        restored = mngr.restore(
            start,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(_abstract(pure)),
                opt_state=ocp.args.StandardRestore(_abstract(opt_state)),
                extra=ocp.args.JsonRestore(),
            ),
        )
        nnx.replace_by_pure_dict(params, restored["params"])
        opt_state = restored["opt_state"]
        packer.set_state(restored["extra"]["data"])
        print(f"resumed from {workdir / 'checkpoints' / str(start)}")

    def save(step: int) -> None:
        mngr.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(nnx.to_pure_dict(params)),
                opt_state=ocp.args.StandardSave(opt_state),
                extra=ocp.args.JsonSave({"data": packer.get_state(), "step": step}),
            ),
        )

    step_fn = make_train_step(graphdef, tx, cfg.accum_steps)
    writer = MetricsWriter(workdir)
    tokens_per_step = config.data.batch_size * config.model.max_position_embeddings
    last: dict[str, float] = {}
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train", unit="step")
    t0, window_tokens = time.perf_counter(), 0
    try:
        for step in bar:
            batch = next(packer)
            feed = {k: jnp.asarray(batch[k]) for k in ("inputs", "targets", "loss_mask")}
            params, opt_state, metrics = step_fn(params, opt_state, feed)
            window_tokens += tokens_per_step
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                last = {k: float(v) for k, v in metrics.items()}
                if not math.isfinite(last["loss"]):
                    raise TrainingError(
                        f"non-finite loss {last['loss']} at step {step + 1}; the last good checkpoint is kept in "
                        f"{workdir / 'checkpoints'}"
                    )
                elapsed = time.perf_counter() - t0
                last["tokens_per_s"] = window_tokens / max(elapsed, 1e-9)
                t0, window_tokens = time.perf_counter(), 0
                writer.write(step + 1, last)
                bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{last['tokens_per_s']:.0f}")
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 != cfg.steps:
                save(step + 1)
        if start < cfg.steps:
            save(cfg.steps)
    finally:
        mngr.wait_until_finished()
        mngr.close()
        writer.close()
        bar.close()
    if config.get("export_dir"):
        from focused.convert import export_hf

        export_hf(nnx.merge(graphdef, params), out_dir=config.export_dir, overwrite=False)
    return last


def count_parameters(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
