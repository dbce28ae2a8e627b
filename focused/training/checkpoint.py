"""Checkpoints with orbax: a run directory that training writes and that export, eval and resume read.

Layout of a run directory (`config.workdir`):

    model_config.json        the LlamaConfig (HF/LongLLaMA field names)
    checkpoints/<step>/      orbax CheckpointManager steps; items: `params` (float params), `opt_state`,
                             `extra` (JSON: data-iterator state, RNG, metrics)

`load_model(path)` accepts a run directory (latest step), one step directory, or a saved model directory
(`save_model`: `model_config.json` + `params/`). Orbax writes each step to a temporary name and renames it when
complete, so a save interrupted half way is never picked up as a step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from focused.model.config import LlamaConfig
from focused.model.llama import LlamaForCausalLM

CONFIG_NAME = "model_config.json"


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
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params_dict(abstract_model(config))
    )
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path, target)


def latest_step_dir(run_dir: Path) -> Path:
    steps = sorted((int(p.name), p) for p in (run_dir / "checkpoints").iterdir() if p.is_dir() and p.name.isdigit())
    if not steps:
        raise FileNotFoundError(f"{run_dir / 'checkpoints'} holds no finished checkpoint step")
    return steps[-1][1]


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
