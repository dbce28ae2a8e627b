"""Checkpoints with orbax: a run directory that training writes and that export, eval and resume read.

Layout of a run directory (`config.workdir`):

    model_config.json        the LlamaConfig (HF/LongLLaMA field names)
    checkpoints/<step>/      orbax CheckpointManager steps; items: `params` (float params), `opt_state`,
                             `extra` (JSON: data-iterator state, CrossBatch schedule)
    tokenizer/               the tokenizer files the run was trained with (export and eval use them)
    unreadable_checkpoints/  steps that failed to restore on resume, moved here (never deleted)
    train.lock               held (flock) by the training process writing the run; holds its PID

`load_model(path)` accepts a run directory (latest step), one step directory, or a saved model directory
(`save_model`: `model_config.json` + `params/`). Orbax writes each step to a temporary name and renames it when
complete, so a save interrupted half way is never picked up as a step. A step that cannot be read is a one-line
`CheckpointError` naming it and the older steps to use instead.

`TrainCheckpoints` is what the training loop saves and resumes through (see its docstring for the guarantees).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from focused.model.config import LlamaConfig
from focused.model.llama import LlamaForCausalLM
from focused.training.errors import CheckpointError, TrainingError, describe, disk_problem

CONFIG_NAME = "model_config.json"
TOKENIZER_DIR = "tokenizer"
UNREADABLE_DIR = "unreadable_checkpoints"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def write_model_config(config: LlamaConfig, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n")


def read_model_config(directory: Path) -> LlamaConfig:
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a run or model directory written by focused")
    return LlamaConfig.from_dict(json.loads(path.read_text()))


def params_dict(model: nnx.Module) -> dict[str, Any]:
    """The model's parameters as a nested pure dict (what checkpoints store)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def abstract_model(config: LlamaConfig) -> LlamaForCausalLM:
    """The model with shape-only parameters (nothing allocated)."""
    return nnx.eval_shape(lambda: LlamaForCausalLM(config, rngs=nnx.Rngs(0)))


def model_from_params(config: LlamaConfig, params: dict[str, Any]) -> LlamaForCausalLM:
    """Builds a model and sets its parameters from a nested pure dict."""
    model = abstract_model(config)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def save_model(model: LlamaForCausalLM, directory: str | Path, *, overwrite: bool = False) -> Path:
    """Writes `model_config.json` and `params/` (orbax) into `directory`."""
    directory = Path(directory).absolute()
    if (directory / "params").exists() and not overwrite:
        raise FileExistsError(f"{directory} already holds a saved model: pass overwrite=True to replace it")
    write_model_config(model.config, directory)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / "params", params_dict(model), force=overwrite)
    return directory


def _restore_params(path: Path, config: LlamaConfig) -> dict[str, Any]:
    """The params saved at `path` (`.../params`); a CheckpointError naming the step when they cannot be read.

    They are restored onto this process's first device, whatever mesh (or number of processes) wrote them."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), params_dict(abstract_model(config))
    )
    try:
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(path, target)
    except Exception as error:  # any failure to read means the files are missing, truncated or corrupt
        raise CheckpointError(
            f"checkpoint {path.parent} cannot be read ({describe(error, 160)}): it is incomplete or corrupt; "
            + _older_steps_hint(path.parent)
        ) from None


def step_dirs(run_dir: Path) -> list[Path]:
    """The finished step directories of a run, oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return [p for _, p in sorted((int(p.name), p) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())]


def latest_step_dir(run_dir: Path) -> Path:
    steps = step_dirs(run_dir)
    if not steps:
        raise FileNotFoundError(f"{run_dir / 'checkpoints'} holds no finished checkpoint step")
    return steps[-1]


def _older_steps_hint(step_dir: Path) -> str:
    if step_dir.parent.name != "checkpoints" or not step_dir.name.isdigit():
        return "save or export it again"
    older = [p for p in step_dirs(step_dir.parent.parent) if int(p.name) < int(step_dir.name)]
    if not older:
        return "the run has no older step to use instead"
    return f"use an older step instead: {', '.join(str(p) for p in reversed(older))}"


def find_tokenizer_dir(path: str | Path) -> Path | None:
    """The folder with the tokenizer of a checkpoint: a Hugging Face folder or saved model itself, `<run>/tokenizer`
    of a run directory, or that of the run a step directory belongs to; None when there is none."""
    path = Path(path)
    candidates = [path, path / TOKENIZER_DIR]
    if path.parent.name == "checkpoints":
        candidates.append(path.parent.parent / TOKENIZER_DIR)
    for folder in candidates:
        if any((folder / name).is_file() for name in TOKENIZER_FILES):
            return folder
    return None


def load_model(path: str | Path) -> LlamaForCausalLM:
    """Loads a model from a run directory (latest step), a step directory, or a `save_model` directory."""
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    if (path / "params").is_dir() and (path / CONFIG_NAME).is_file():  # save_model layout
        config = read_model_config(path)
        return model_from_params(config, _restore_params(path / "params", config))
    if (path / "checkpoints").is_dir():  # run directory
        path = latest_step_dir(path)
    if (path / "params").is_dir() and (path.parent.parent / CONFIG_NAME).is_file():  # step directory
        config = read_model_config(path.parent.parent)
        return model_from_params(config, _restore_params(path / "params", config))
    raise FileNotFoundError(
        f"{path} is not a focused checkpoint: expected a run directory (model_config.json + checkpoints/), "
        "a step directory (checkpoints/<step>/params) or a saved model (model_config.json + params/)"
    )


# ---------------------------------------------------------------------------------------------------------------
# checkpoints of a training run


def _all_finite(tree: Any) -> jax.Array:
    """True when every float leaf of `tree` is finite (no NaN / inf anywhere)."""
    checks = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack(checks).all() if checks else jnp.bool_(True)


def _nbytes(tree: Any) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _size(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


class TrainCheckpoints:
    """The orbax CheckpointManager of a run directory (`<run>/checkpoints/<step>/{params,opt_state,extra}`) with
    the guarantees a training run needs:

    * `restore` resumes from the newest step that can be read. Newer steps that fail to restore (deleted,
      truncated or corrupt files) are moved to `<run>/unreadable_checkpoints/` and reported in `warnings`; when no
      step restores, a TrainingError says so and nothing is moved.
    * `save` never writes non-finite state (a TrainingError names the last finite checkpoint, or says there is
      none), refuses up front when the disk lacks room for the state, and turns any write failure (full disk,
      read-only directory) into one TrainingError line. A failed write leaves only orbax's temporary folder,
      which is removed; the steps saved before stay as they were.
    """

    def __init__(self, run_dir: Path, keep: int, async_save: bool):
        self.run_dir = Path(run_dir)
        self.directory = self.run_dir / "checkpoints"
        self.keep, self.async_save = keep, async_save
        self.warnings: list[str] = []
        self.last_saved: int | None = None  # newest step known to be complete on disk
        self._pending: int | None = None  # step of an async save not yet confirmed
        self._finite = jax.jit(_all_finite)
        self._mngr = self._open()

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep,
            enable_async_checkpointing=self.async_save,
            create=True,
            cleanup_tmp_directories=True,  # leftovers of interrupted saves (the run is locked: nobody else writes)
        )
        return ocp.CheckpointManager(self.directory, options=options)

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    # ----------------------------------------------------------------------------------------------------------

    def restore(self, params_target: Any, opt_target: Any) -> tuple[int, dict[str, Any]] | None:
        """(step, {"params", "opt_state", "extra"}) of the newest readable step, or None for a fresh run.

        The targets are abstract trees (`jax.ShapeDtypeStruct`s with shardings) of the params and optimizer state.
        """
        failed: list[tuple[int, str]] = []
        for step in sorted(self._mngr.all_steps(), reverse=True):
            args = ocp.args.Composite(
                params=ocp.args.StandardRestore(params_target),
                opt_state=ocp.args.StandardRestore(opt_target),
                extra=ocp.args.JsonRestore(),
            )
            try:
                restored = self._mngr.restore(step, args=args)
            except Exception as error:  # any failure to read a step makes it unusable; try the one before
                failed.append((step, describe(error, 160)))
                continue
            if failed and jax.process_count() > 1:  # moving folders is not coordinated between processes
                s, why = failed[0]
                raise TrainingError(
                    f"checkpoint step {s} cannot be restored ({why}) but step {step} can: move {self.path(s)} out of "
                    f"{self.directory} and rerun to resume from step {step}"
                )
            if failed:
                self._set_aside(failed, step)
            self.last_saved = step
            return step, dict(restored)
        if failed:
            reasons = "; ".join(f"step {s}: {why}" for s, why in failed[:2])
            raise TrainingError(
                f"no checkpoint in {self.directory} can be restored ({reasons}): move the run directory away to "
                "start over, or pick another config.workdir"
            )
        return None

    def _set_aside(self, failed: list[tuple[int, str]], good: int) -> None:
        self._mngr.close()
        into = self.run_dir / UNREADABLE_DIR
        for step, why in failed:
            moved = _move_aside(self.path(step), into)
            self.warnings.append(
                f"checkpoint step {step} cannot be restored ({why}); resuming from step {good} instead "
                f"(step {step} moved to {moved})"
            )
        self._mngr = self._open()

    # ----------------------------------------------------------------------------------------------------------

    def save(self, step: int, params: Any, opt_state: Any, extra: dict[str, Any]) -> None:
        """Saves one step (asynchronously when configured); see the class docstring for what is refused."""
        self._confirm()
        if step == self.last_saved:
            return
        if not bool(self._finite((params, opt_state))):
            raise TrainingError(
                f"the parameters or optimizer state hold NaN/inf after step {step}, so it was not saved; "
                f"{self.last_good()}: lower config.train.learning_rate (or check the data) before resuming"
            )
        needed = _nbytes((params, opt_state))
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise TrainingError(
                f"not enough free space to save checkpoint step {step} in {self.directory}: it needs about "
                f"{_size(needed)} and {_size(free)} are free; {self._kept()}"
            )
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            extra=ocp.args.JsonSave(extra),
        )
        self._pending = step
        try:
            self._mngr.save(step, args=args)
        except Exception as error:
            raise self._failed(step, error) from None
        if not self.async_save:
            self._confirm()

    def _confirm(self) -> None:
        """Waits for a pending async save and records it, or reports its failure."""
        if self._pending is None:
            return
        step = self._pending
        try:
            self._mngr.wait_until_finished()
        except Exception as error:
            raise self._failed(step, error) from None
        self._pending = None
        if self.path(step).is_dir():
            self.last_saved = step

    def _failed(self, step: int, error: BaseException) -> TrainingError:
        self._pending = None
        with contextlib.suppress(Exception):  # other writers of the failed save may still run: let them stop first
            self._mngr.wait_until_finished()
        for _ in range(50):  # the half-written step, never used; retried while a late write recreates a part
            partials = list(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
            if not partials:
                break
            for partial in partials:
                shutil.rmtree(partial, ignore_errors=True)
            time.sleep(0.02)
        reason = disk_problem(error) or describe(error, 160)
        return TrainingError(f"could not save checkpoint step {step} in {self.directory}: {reason}; {self._kept()}")

    def _kept(self) -> str:
        if self.last_saved is None:
            return "no checkpoint of this run was saved before it"
        return (
            f"checkpoint step {self.last_saved} ({self.path(self.last_saved)}) is kept and usable: fix the problem "
            "and rerun the same command to resume from it"
        )

    def last_good(self) -> str:
        """Names the last finite checkpoint of the run (after confirming a pending save), or says there is none."""
        with contextlib.suppress(TrainingError):
            self._confirm()
        if self.last_saved is None:
            return "no finite checkpoint of this run was saved, so there is none to resume from"
        return f"the last finite checkpoint is step {self.last_saved} ({self.path(self.last_saved)})"

    def finish(self) -> None:
        """Waits for pending saves (reporting a failure) and closes the manager."""
        try:
            self._confirm()
        finally:
            with contextlib.suppress(Exception):  # a failed save was reported already; closing must not hide it
                self._mngr.close()


def _move_aside(step_dir: Path, into: Path) -> Path:
    """Moves `step_dir` into the folder `into`, never overwriting (`6`, `6.1`, `6.2`, ...); returns the new path."""
    into.mkdir(parents=True, exist_ok=True)
    target, n = into / step_dir.name, 0
    while target.exists():
        n += 1
        target = into / f"{step_dir.name}.{n}"
    os.replace(step_dir, target)
    return target
