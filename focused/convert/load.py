"""Import a Hugging Face folder (LLaMA, OpenLLaMA, Llama-2/3 style, LongLLaMA) as a `LlamaForCausalLM`.

Weights come from `model.safetensors`, sharded safetensors (`model.safetensors.index.json`) or, when torch is
installed, `pytorch_model.bin` (sharded or not). Every tensor's name and shape is checked against what the config
implies before any weight is loaded; bf16 / fp16 tensors are read through safetensors' JAX backend, so no numpy
bfloat16 support is needed.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open

from focused.convert.hf import TensorSpec, check_names, config_from_hf, tensor_specs, unflatten_params
from focused.model.config import LlamaConfig, resolve_dtype
from focused.model.llama import LlamaForCausalLM
from focused.training.checkpoint import model_from_params

SAFE_WEIGHTS, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_WEIGHTS, TORCH_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "float64", "float32", "float16", "bfloat16")
# buffers older transformers versions saved next to the weights; recomputed from the config, never loaded
_BUFFERS = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


def read_hf_config(folder: str | Path) -> dict[str, Any]:
    """The parsed `config.json` of a Hugging Face folder (FileNotFoundError when the folder or file is absent)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Hugging Face folder {folder} does not exist")
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not a Hugging Face model folder")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def _indexed_files(folder: Path, index_name: str) -> list[Path]:
    index = json.loads((folder / index_name).read_text())
    files = [folder / name for name in sorted(set(index.get("weight_map", {}).values()))]
    absent = [p.name for p in files if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"{folder / index_name} names shard(s) that are missing: {', '.join(absent)}")
    return files


class _Tensors:
    """Header-level view of a folder's weights: `shapes[name]`, `dtypes[name]`, `files[name]`; `load` reads data."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        self.files: dict[str, Path] = {}
        if (folder / SAFE_INDEX).is_file():
            self.kind, files = "safetensors", _indexed_files(folder, SAFE_INDEX)
        elif (folder / SAFE_WEIGHTS).is_file():
            self.kind, files = "safetensors", [folder / SAFE_WEIGHTS]
        elif (folder / TORCH_INDEX).is_file() or (folder / TORCH_WEIGHTS).is_file():
            if importlib.util.find_spec("torch") is None:
                raise ValueError(
                    f"{folder} holds only pytorch_model.bin weights and torch is not installed: install torch "
                    "or convert the folder to safetensors"
                )
            self.kind = "torch"
            files = (
                _indexed_files(folder, TORCH_INDEX) if (folder / TORCH_INDEX).is_file() else [folder / TORCH_WEIGHTS]
            )
        else:
            raise FileNotFoundError(f"{folder} holds no {SAFE_WEIGHTS}, {SAFE_INDEX} or {TORCH_WEIGHTS}")
        self._torch: dict[str, Any] = {}
        for path in files:
            for name, shape, dtype in self._header(path):
                if name in self.files:
                    raise ValueError(f"tensor {name} is stored twice, in {self.files[name].name} and {path.name}")
                self.shapes[name], self.dtypes[name], self.files[name] = shape, dtype, path

    def _header(self, path: Path) -> Iterator[tuple[str, tuple[int, ...], str]]:
        if self.kind == "safetensors":
            try:
                with safe_open(str(path), framework="flax") as f:
                    entries = [(name, f.get_slice(name)) for name in f.keys()]  # noqa: SIM118 (not a dict)
                    for name, piece in entries:
                        yield name, tuple(piece.get_shape()), piece.get_dtype()
            except SafetensorError as error:
                raise _unreadable(path, error) from None
            return
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # torch raises RuntimeError / UnpicklingError / EOFError for damaged files
            raise _unreadable(path, error) from None
        for name, tensor in state.items():
            self._torch[name] = tensor
            yield name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch.")

    def load(self, names: list[str]) -> Iterator[tuple[str, jax.Array | np.ndarray]]:
        """Yields (name, array as stored) file by file."""
        if self.kind == "torch":
            import torch

            for name in names:
                tensor = self._torch[name]
                # bf16 → f32 is exact; the caller casts to the parameter dtype
                yield name, (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
            return
        for path in sorted({self.files[n] for n in names}):
            try:
                with safe_open(str(path), framework="flax") as f:
                    arrays = [(name, f.get_tensor(name)) for name in names if self.files[name] == path]
            except SafetensorError as error:
                raise _unreadable(path, error) from None
            yield from arrays


def _unreadable(path: Path, error: BaseException) -> ValueError:
    reason = " ".join(str(error).split()) or type(error).__name__
    return ValueError(
        f"{path} cannot be read ({reason}): the file is truncated or corrupt; download or export it again"
    )


def import_hf(folder: str | Path, *, param_dtype: str = "float32", dtype: str = "float32") -> LlamaForCausalLM:
    """Reads a Hugging Face folder (model_type llama or longllama) into a `LlamaForCausalLM`.

    param_dtype: dtype the parameters are kept in (stored tensors are cast to it); dtype: compute dtype.
    Raises FileNotFoundError for a missing folder / config / weights, ValueError (one line, naming the tensor and
    both shapes) when the weights do not match the config.
    """
    folder = Path(folder)
    config = config_from_hf(read_hf_config(folder), param_dtype=param_dtype, dtype=dtype)
    tensors = _Tensors(folder)
    specs = tensor_specs(config)
    ignored = {n for n in tensors.shapes if _BUFFERS.fullmatch(n)}
    if config.tie_word_embeddings:
        ignored.add("lm_head.weight")  # some exports store the tied head too; transformers ignores it as well
    check_names(set(tensors.shapes) - ignored, {s.hf_name for s in specs}, f"the weights in {folder}")
    for spec in specs:
        name, file = spec.hf_name, tensors.files[spec.hf_name].name
        if tensors.shapes[name] != spec.hf_shape:
            raise ValueError(
                f"tensor {name} in {file} has shape {tensors.shapes[name]} but config.json implies {spec.hf_shape}"
            )
        if tensors.dtypes[name] not in FLOAT_DTYPES:
            raise ValueError(f"tensor {name} in {file} has dtype {tensors.dtypes[name]}, not a float type")
    return _build(config, tensors, specs)


def _build(config: LlamaConfig, tensors: _Tensors, specs: list[TensorSpec]) -> LlamaForCausalLM:
    target = resolve_dtype(config.param_dtype)
    by_name = {spec.hf_name: spec for spec in specs}
    flat = {}
    for name, array in tensors.load(list(by_name)):
        spec = by_name[name]
        value = jnp.asarray(array)
        flat[spec.path] = (value.T if spec.transpose else value).astype(target)
    return model_from_params(config, unflatten_params(flat))
