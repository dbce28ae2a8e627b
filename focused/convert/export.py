"""Export to a Hugging Face folder (config.json + safetensors shards + generation config + tokenizer), without torch.

The folder is written into a temporary directory beside the target and renamed into place when complete, so a
target is never half written. A target that already holds a different checkpoint is left untouched unless
`overwrite=True`, which replaces the whole folder; re-exporting the identical checkpoint is a no-op.
"""

from __future__ import annotations

import filecmp
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from focused.convert.hf import (
    TOKENIZER_FILES,
    TensorSpec,
    check_names,
    flatten_params,
    hf_config_dict,
    is_empty_dir,
    iter_files,
    parse_size,
    staging,
    tensor_specs,
)
from focused.model.config import LlamaConfig, resolve_dtype
from focused.training.checkpoint import params_dict

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"


def _params(model_or_params: nnx.Module | Mapping[Any, Any], config: LlamaConfig) -> dict[tuple, Any]:
    """Flat `{path: array}` of a model or nested params dict, checked against the config's tensor specs."""
    params = params_dict(model_or_params) if isinstance(model_or_params, nnx.Module) else model_or_params
    flat = flatten_params(params)
    specs = tensor_specs(config)
    check_names({".".join(map(str, p)) for p in flat}, {".".join(map(str, s.path)) for s in specs}, "the params")
    for spec in specs:
        shape = tuple(flat[spec.path].shape)
        if shape != spec.shape:
            name = ".".join(map(str, spec.path))
            raise ValueError(f"parameter {name} has shape {shape} but the config expects {spec.shape}")
    return flat


def _torch_layout(value: Any, spec: TensorSpec, dtype: np.dtype | None) -> np.ndarray:
    """One parameter as a contiguous host array in torch layout (`[out, in]` for projections)."""
    array = np.asarray(value)
    if spec.transpose:
        array = array.T
    if dtype is not None:
        array = array.astype(dtype)
    return np.ascontiguousarray(array)


def hf_state_dict(
    model_or_params: nnx.Module | Mapping[Any, Any], config: LlamaConfig, *, dtype: str | None = None
) -> dict[str, np.ndarray]:
    """`{torch name: numpy array in torch layout}` in state-dict order (e.g. for `torch_model.load_state_dict`).

    dtype: cast every tensor to this ("float32", "bfloat16", "float16"); None keeps the parameters' dtypes.
    """
    flat = _params(model_or_params, config)
    target = resolve_dtype(dtype) if dtype is not None else None
    return {spec.hf_name: _torch_layout(flat[spec.path], spec, target) for spec in tensor_specs(config)}


def plan_shards(sizes: Mapping[str, int], limit: int) -> list[list[str]]:
    """Greedy split of named tensors (in order) into shards of at most `limit` bytes; a larger tensor gets a
    shard of its own."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > limit:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def _write_tensors(
    directory: Path, flat: Mapping[tuple, Any], specs: list[TensorSpec], dtype: np.dtype | None, limit: int
) -> None:
    """Writes `model.safetensors`, or `model-0000i-of-0000n.safetensors` + the index when above `limit`."""
    by_name = {spec.hf_name: spec for spec in specs}
    sizes = {}
    for spec in specs:
        itemsize = (dtype or np.dtype(flat[spec.path].dtype)).itemsize
        sizes[spec.hf_name] = int(np.prod(spec.hf_shape)) * itemsize
    shards = plan_shards(sizes, limit)
    names = (
        [SAFE_WEIGHTS]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for file_name, shard in zip(names, shards, strict=True):
        tensors = {n: _torch_layout(flat[by_name[n].path], by_name[n], dtype) for n in shard}
        save_file(tensors, str(directory / file_name), metadata={"format": "pt"})
        del tensors  # one shard in host memory at a time
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(sizes.values())},
            "weight_map": {n: f for f, shard in zip(names, shards, strict=True) for n in sorted(shard)},
        }
        _write_json(directory / SAFE_INDEX, index)


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def _tokenizer_files(tokenizer_dir: str | Path | None) -> list[Path]:
    if tokenizer_dir is None:
        return []
    directory = Path(tokenizer_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer directory {directory} does not exist")
    files = [directory / name for name in TOKENIZER_FILES if (directory / name).is_file()]
    if not files:
        raise FileNotFoundError(f"{directory} holds none of the tokenizer files {', '.join(TOKENIZER_FILES)}")
    return files


def _is_checkpoint_file(name: str) -> bool:
    return name in ("config.json", "generation_config.json", *TOKENIZER_FILES) or name.endswith(
        (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json")
    )


def _differences(new: Path, old: Path) -> list[str]:
    """Checkpoint files that differ between two folders (missing on either side or with other bytes)."""
    new_files = {p.name for p in iter_files(new)}
    old_files = {p.name for p in iter_files(old) if _is_checkpoint_file(p.name) or p.name in new_files}
    differ = sorted(new_files ^ old_files)
    differ += [n for n in sorted(new_files & old_files) if not filecmp.cmp(new / n, old / n, shallow=False)]
    return differ


def _refuse(target: Path, reason: str) -> FileExistsError:
    return FileExistsError(
        f"{target} already holds {reason}; pass overwrite=True (--overwrite) to replace the whole folder"
    )


def _check_target(target: Path, config_text: str, overwrite: bool) -> None:
    """Refuses early (before writing anything) when the target obviously holds something else."""
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory")
    if overwrite or not target.exists() or is_empty_dir(target):
        return
    config = target / "config.json"
    if not config.is_file():
        raise _refuse(target, "other files (" + ", ".join(p.name for p in iter_files(target)) + ")")
    if config.read_text() != config_text:
        raise _refuse(target, "a different checkpoint (config.json differs)")


def export_hf(
    model_or_params: nnx.Module | Mapping[Any, Any],
    config: LlamaConfig,
    out_dir: str | Path,
    *,
    format: str = "longllama",
    max_shard_size: int | str = "2GB",
    dtype: str | None = None,
    overwrite: bool = False,
    tokenizer_dir: str | Path | None = None,
    extra_files: Sequence[str | Path] = (),
) -> Path:
    """Writes a Hugging Face folder for `model_or_params` (a model, or a nested params dict) and returns its path.

    format: "longllama" (`LongLlamaForCausalLM` config with the FoT fields) or "llama" (plain `LlamaForCausalLM`).
    max_shard_size: shard above this many bytes (`"2GB"`, `"500MB"`, an int). dtype: storage dtype of the
    tensors ("float32", "bfloat16", "float16"; None keeps the parameters' dtype). tokenizer_dir: copy the
    tokenizer files found there. extra_files: more files copied in as they are (e.g. a task layout).
    """
    limit = parse_size(max_shard_size)
    target_dtype = resolve_dtype(dtype) if dtype is not None else None
    flat = _params(model_or_params, config)
    torch_dtype = dtype or np.dtype(flat[("model", "embed_tokens", "embedding")].dtype).name
    resolve_dtype(torch_dtype)  # float32 / bfloat16 / float16 only, as HF expects
    config_text = json.dumps(hf_config_dict(config, format=format, torch_dtype=torch_dtype), indent=2, sort_keys=True)
    config_text += "\n"
    tokenizer = _tokenizer_files(tokenizer_dir)
    target = Path(out_dir).absolute()
    _check_target(target, config_text, overwrite)
    generation = {
        "_from_model_config": True,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }
    with staging(target) as staged:
        (staged.path / "config.json").write_text(config_text)
        _write_json(staged.path / "generation_config.json", generation)
        _write_tensors(staged.path, flat, tensor_specs(config), target_dtype, limit)
        for path in [*tokenizer, *map(Path, extra_files)]:
            shutil.copyfile(path, staged.path / path.name)
        if not overwrite and target.exists() and not is_empty_dir(target):
            differ = _differences(staged.path, target)
            if differ:
                raise _refuse(target, f"a different checkpoint ({', '.join(differ[:4])} differ)")
            return target  # the identical export is already there; the staged copy is discarded
        staged.publish()
    return target
