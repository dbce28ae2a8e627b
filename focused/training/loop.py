"""The training loop: data → jitted step (loss, grads, AdamW) → metrics, progress bar and orbax checkpoints.

`train(config)` is what `train.py` calls. One step:

    batch = next(packer)                       inputs/targets/loss_mask `[batch, window]` (focused.data)
    params, opt_state, metrics = step(...)     focused.training.step: CrossBatch memory in memory layers,
                                               micro-batches scanned for gradient accumulation
    metrics → TensorBoard + metrics.jsonl, progress bar (loss, tokens/s, ETA)
    every `save_every` steps → checkpoints/<step>/ (params, opt_state, data-iterator state)

Re-running the same command resumes from the newest checkpoint that restores. What keeps a run safe:

* one training per run directory (`RunDirectory`: an flock held for the whole run; a second one is refused);
* a resume whose model config differs from the run's `model_config.json` is refused before anything is written;
* no checkpoint with NaN/inf state is ever written, and a failed write keeps the previous ones (`TrainCheckpoints`);
* SIGINT / SIGTERM save a checkpoint at the current step and exit 130 / 143 (`StopSignals`).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from focused.data.packing import merge_states
from focused.data.synthetic import TASK_FILE, DictionaryBatches, save_task
from focused.model.config import LlamaConfig
from focused.model.llama import LlamaForCausalLM
from focused.training import peers, sharding
from focused.training.checkpoint import TrainCheckpoints, find_tokenizer_dir
from focused.training.dry_run import dry_run
from focused.training.errors import TrainingError, TrainingInterrupted, describe, disk_problem
from focused.training.fot import FotConfig, RangeSchedule
from focused.training.metrics import MetricsWriter, last_logged
from focused.training.optimizer import TrainConfig, make_optimizer
from focused.training.progress import Progress, summary
from focused.training.run_dir import RunDirectory
from focused.training.setup import build_data, build_model, model_config, validate
from focused.training.signals import StopSignals, interrupted, stop_agreed
from focused.training.step import loss_positions, loss_rows, make_eval_step, make_train_step

__all__ = ["TrainingError", "TrainingInterrupted", "make_train_step", "train"]


def train(config: ml_collections.ConfigDict) -> dict[str, float]:
    """Runs (or resumes) training as configured; returns the last logged metrics.

    Raises TrainingError (one line) when the run cannot start or go on, and TrainingInterrupted after SIGINT /
    SIGTERM once a checkpoint at the current step is saved.
    """
    began = time.perf_counter()
    cfg = TrainConfig.from_dict(config.train.to_dict())
    fot = FotConfig.from_dict(config.fot.to_dict() if "fot" in config else {})
    if config.get("dry_run"):  # plan only: abstract model, memory estimate, sharding plan; no weights or data
        mesh_cfg, rules = sharding.from_config(config.get("sharding"))
        return dry_run(
            model_config(config),
            mesh_cfg,
            rules,
            config.data.batch_size,
            config.model.max_position_embeddings,
            config.get("dry_run_devices") or None,
            cross_batch_range=fot.cross_batch_range,
            accum_steps=cfg.accum_steps,
        )
    validate(config, cfg, fot)
    model_cfg = model_config(config)
    for line in cfg.warnings():
        print(f"warning: {line}", file=sys.stderr)
    # before anything touches a device (jax.process_index included)
    watchdog = peers.start_watchdog() if sharding.maybe_initialize_distributed() else None
    try:
        with RunDirectory(config.workdir, primary=jax.process_index() == 0) as run:
            run.check_model_config(model_cfg)  # before anything in the run directory is touched
            result = _train(config, cfg, fot, model_cfg, run, began)
    except TrainingInterrupted:  # every process got the signal and saved together
        if watchdog is not None:
            watchdog.finish()
        raise
    except BaseException as error:
        if watchdog is None:
            raise
        peers.fail_job(watchdog, error)  # one line, then os._exit: peers cannot finish without this process
    if watchdog is not None:
        watchdog.finish()
    return result


def _tokenizer_file(packer: Any) -> Path | None:
    """The tokenizer file the packer reads with (None for synthetic data)."""
    source = getattr(getattr(packer, "tokenizer", None), "source", None)
    return Path(source) if source and Path(source).is_file() else None


def _train(
    config: ml_collections.ConfigDict,
    cfg: TrainConfig,
    fot: FotConfig,
    model_cfg: LlamaConfig,
    run: RunDirectory,
    began: float,
) -> dict[str, float]:
    mesh_cfg, rules = sharding.from_config(config.get("sharding"))
    mesh = sharding.make_mesh(mesh_cfg)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if config.data.batch_size % shards:
        raise ValueError(
            f"config.data.batch_size={config.data.batch_size} is not divisible by the data x fsdp mesh size {shards} "
            f"(mesh {dict(mesh.shape)}): change the batch size or config.sharding.mesh"
        )
    batch_sh = sharding.batch_sharding(mesh, rules)
    # the rows of each global batch that this process's devices hold: it reads (and generates) only those
    row0, row_end = sharding.process_rows(batch_sh, config.data.batch_size)
    rows = row_end - row0
    if jax.process_count() > 1:
        print(
            f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} of "
            f"{jax.device_count()} devices, batch rows {row0}..{row_end - 1} of {config.data.batch_size}"
        )
    packer = build_data(config, rows=(row0, row_end))
    tokenizer_file = _tokenizer_file(packer)
    run.check_tokenizer(tokenizer_file, str(config.data.get("tokenizer", "")))
    if config.init_from:
        model = build_model(config)
    else:  # created directly sharded: a big model is never materialised on one device
        model = sharding.init_sharded(lambda: LlamaForCausalLM(model_cfg, rngs=nnx.Rngs(config.seed)), rules, mesh)
    graphdef, params = nnx.split(model)
    param_sh = sharding.param_shardings(params, rules, mesh)
    params = sharding.shard_params(params, param_sh)
    tx = make_optimizer(cfg)
    opt_state, opt_sh = sharding.init_opt_state(tx, params, param_sh)

    masked = bool(config.data.get("align_documents", False))

    def feed(batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of the global batch, placed as `[batch, seq]` sharded over (data, fsdp)."""
        local = {k: local_rows(batch[k], row0, rows) for k in ("inputs", "targets", "loss_mask")}
        if masked:  # aligned documents leave padding inside batches: keep it out of attention and memory
            local["attention_mask"] = (local_rows(batch["doc_ids"], row0, rows) >= 0).astype(np.int32)
        if cfg.sparse_logits:  # few loss positions a row: logits and the last layer only there
            most = int((local["loss_mask"] != 0).sum(axis=1).max(initial=0))
            stride = loss_rows(local["loss_mask"], config.data.k)
            if jax.process_count() > 1:  # every process must build the same shape
                seen = sharding.allgather_json([most, stride])
                most, stride = max(m for m, _ in seen), min(s for _, s in seen)
            where = loss_positions(local["loss_mask"], most)
            if where is not None and (config.data.batch_size // stride) % shards:
                stride = 1  # the query rows would not split evenly over the batch shards
            if where is not None:  # and only in the rows with a loss when those are the last of each k-group
                rows_with_loss = {"loss_positions": where[stride - 1 :: stride]}
                return {
                    **sharding.global_batch(local, batch_sh, config.data.batch_size),
                    **sharding.global_batch(rows_with_loss, batch_sh, config.data.batch_size // stride),
                }
        return sharding.global_batch(local, batch_sh, config.data.batch_size)

    schedule = RangeSchedule(fot, config.data.k)
    ckpts = TrainCheckpoints(run.path, cfg.keep_checkpoints, cfg.async_checkpointing)
    try:
        start, opt_state = _resume(ckpts, params, opt_state, packer, schedule, run)
    except BaseException:
        with contextlib.suppress(Exception):
            ckpts.finish()
        raise
    run.record(model_cfg, tokenizer_file)  # the run is known to be consistent now
    if isinstance(packer, DictionaryBatches) and run.primary:
        save_task(packer.task, run.path)  # evals and exports read the task layout from the run directory

    steps: dict[int, Any] = {}  # one compiled step per CrossBatch range

    def step_for_range() -> Any:
        if schedule.range not in steps:
            step = make_train_step(graphdef, tx, cfg.accum_steps, schedule.train_spec())
            steps[schedule.range] = sharding.make_sharded_step(step, param_sh, opt_sh, batch_sh)
        return steps[schedule.range]

    def save(step: int) -> None:
        extra = {"data": data_state(packer), "step": step, "range_switched": schedule.switched}
        ckpts.save(step, nnx.to_pure_dict(params), opt_state, extra)

    eval_step = make_eval_step(graphdef, schedule.eval_spec())
    eval_batches = []
    if cfg.eval_every:
        eval_packer = build_data(config, config.data.eval_source, rows=(row0, row_end))
        eval_batches = [feed(next(eval_packer)) for _ in range(cfg.eval_batches)]
    tokens_per_step = config.data.batch_size * config.model.max_position_embeddings
    print(f"model: {count_parameters(params) / 1e6:.2f}M parameters; {tokens_per_step} tokens per step")
    last: dict[str, float] = {}
    done = start
    progress = Progress(start, cfg.steps)
    writer = None
    failing = True
    t0, window_tokens = time.perf_counter(), 0
    try:
        writer = MetricsWriter(run.path) if run.primary else None  # process 0 writes the job's metrics
        with StopSignals() as stop:
            for step in range(start, cfg.steps):
                if stop_agreed(stop):
                    break
                params, opt_state, metrics = step_for_range()(params, opt_state, feed(next(packer)))
                window_tokens += tokens_per_step
                done = step + 1
                logged = None
                if done % cfg.log_every == 0 or done == cfg.steps:
                    last = {k: float(v) for k, v in metrics.items()}
                    if not math.isfinite(last["loss"]):
                        raise TrainingError(
                            f"non-finite loss {last['loss']} at step {done}, so training stopped; {ckpts.last_good()}: "
                            "lower config.train.learning_rate (or check the data) before resuming"
                        )
                    last["tokens_per_s"] = window_tokens / max(time.perf_counter() - t0, 1e-9)
                    last["cross_batch_range"] = schedule.range
                    t0, window_tokens = time.perf_counter(), 0
                    if writer is not None:
                        writer.write(done, last)
                    logged = last
                    if schedule.observe(done, last["accuracy"]):
                        progress.message(f"step {done}: CrossBatch range -> {schedule.range}")
                elif schedule.observe(done, None):
                    progress.message(f"step {done}: CrossBatch range -> {schedule.range}")
                progress.advance(done, logged)
                if cfg.eval_every and done % cfg.eval_every == 0:
                    scores = evaluate(eval_step, params, eval_batches)
                    if writer is not None:
                        writer.write(done, scores, prefix="eval")
                if cfg.save_every and done % cfg.save_every == 0 and done != cfg.steps:
                    save(done)
            if stop.received and done < cfg.steps:
                progress.close()
                raise interrupted(stop, done, start, save, ckpts)
            if start < cfg.steps:
                save(cfg.steps)
            ckpts.finish()
        failing = False
    except OSError as error:  # metrics / TensorBoard writes: a full disk, a directory made read-only meanwhile
        reason = disk_problem(error) or describe(error)
        raise TrainingError(f"cannot write to the run directory {run.path}: {reason}; {ckpts.last_good()}") from None
    finally:
        progress.close()
        if writer is not None:
            writer.close()
        if failing:  # an error is on its way out already: finishing must not replace it
            with contextlib.suppress(TrainingError):
                ckpts.finish()
    if not last:
        last = last_logged(run.path / "metrics.jsonl")
    checkpoint = ckpts.path(ckpts.last_saved) if ckpts.last_saved is not None else None
    source = str(config.data.source.path)
    print(
        summary(
            step=max(done, start),
            total=cfg.steps,
            seconds=time.perf_counter() - began,
            metrics=last,
            workdir=str(config.workdir),
            checkpoint=str(checkpoint) if checkpoint else None,
            trained=start < cfg.steps,
            eval_config="configs/eval_dictionary.py" if "dictionary" in source else "configs/eval_perplexity.py",
        )
    )
    if config.get("export_dir"):
        from focused.convert import export_hf

        if jax.process_count() > 1:  # every process takes part in gathering; process 0 writes the folder
            from jax.experimental import multihost_utils

            params = jax.tree.map(np.asarray, multihost_utils.process_allgather(params, tiled=True))
            if not run.primary:
                return last
        model = nnx.merge(graphdef, params)
        task = [run.path / TASK_FILE] if isinstance(packer, DictionaryBatches) else []
        export_hf(model, model.config, config.export_dir, tokenizer_dir=find_tokenizer_dir(run.path), extra_files=task)
    return last


def _resume(
    ckpts: TrainCheckpoints, params: nnx.State, opt_state: Any, packer: Any, schedule: RangeSchedule, run: RunDirectory
) -> tuple[int, Any]:
    """Restores the newest readable checkpoint into `params` (in place), the packer and the CrossBatch schedule.
    Returns (step to continue from, optimizer state); (0, `opt_state`) for a fresh run."""
    restored = ckpts.restore(sharding.sharded_abstract(nnx.to_pure_dict(params)), sharding.sharded_abstract(opt_state))
    for line in ckpts.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if restored is None:
        return 0, opt_state
    start, state = restored
    nnx.replace_by_pure_dict(params, state["params"])
    try:
        packer.set_state(state["extra"]["data"])
    except (KeyError, ValueError) as error:
        raise TrainingError(
            f"cannot resume {run.path} at step {start}: the data settings differ from the run's ({error}); use "
            "the run's config.data values, or pick another config.workdir"
        ) from None
    schedule.switched = state["extra"].get("range_switched", schedule.switched)
    print(f"resumed from {ckpts.path(start)}")
    return start, state["opt_state"]


def data_state(packer: Any) -> dict[str, Any]:
    """The data-iterator state to checkpoint: with per-process document packers (`lane_streams`) the states of all
    processes are gathered and merged into the state of the whole batch (every process calls this together)."""
    state = packer.get_state()
    lane_range = getattr(packer, "lane_range", None)
    if lane_range is None or lane_range == (0, packer.config.num_lanes):
        return state
    return merge_states(sharding.allgather_json(state))


def local_rows(array: np.ndarray, row0: int, rows: int) -> np.ndarray:
    """This process's `rows` rows from `row0` of a global-batch array; an array of `rows` rows already holds only
    them (a per-process iterator) and is returned as it is."""
    return array if len(array) == rows else array[row0 : row0 + rows]


def evaluate(eval_step: Any, params: nnx.State, batches: list[dict[str, jax.Array]]) -> dict[str, float]:
    """Mean loss, perplexity and accuracy over fixed held-out batches."""
    loss = count = correct = 0.0
    for batch in batches:
        l_sum, n, c = eval_step(params, batch)
        loss, count, correct = loss + float(l_sum), count + float(n), correct + float(c)
    mean = loss / max(count, 1.0)
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "accuracy": correct / max(count, 1.0)}


def count_parameters(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
