"""Save a built memory to disk and load it back, so a long document is ingested once and queried many times.

A saved dense memory is a folder with `memory.npz` (keys, values, mask, length; bfloat16 stored bit-exactly as
uint16) and `memory.json` (the model fields that decide what the memory means). Loading into a model whose
fields differ is an error that names the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from focused.memory.dense import DenseMemoryState
from focused.model.config import LlamaConfig, resolve_dtype

# fields of the model config a memory depends on (shapes, and what the stored keys/values mean)
FINGERPRINT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "kv_heads",
    "head_size",
    "mem_layers",
    "mem_dtype",
    "mem_positionals",
    "rope_theta",
)


def fingerprint(config: LlamaConfig) -> dict[str, Any]:
    out = {name: getattr(config, name) for name in FINGERPRINT_FIELDS}
    out["mem_layers"] = list(config.mem_layers)
    if config.mem_key_norm:  # the stored keys are normalised (only then recorded: older files stay loadable)
        out["mem_key_norm"] = True
    return out


def _to_numpy(x: Any) -> tuple[np.ndarray, str]:
    array = np.asarray(x)
    name = str(array.dtype)
    if name == "bfloat16":
        return array.view(np.uint16), name
    return array, name


def _stacked(layers: tuple[Any, ...], memory: DenseMemoryState, config: LlamaConfig, axes: tuple) -> np.ndarray:
    """Per-layer heads-major buffers → one token-major `[layers, batch, capacity, kv_heads, head_dim]` array."""
    if layers:
        return np.stack([np.transpose(np.asarray(layer), axes) for layer in layers])
    return np.zeros((0, *memory.mask.shape, config.kv_heads, config.head_size), resolve_dtype(config.mem_dtype))


def save_memory(memory: DenseMemoryState, config: LlamaConfig, path: str | Path, *, overwrite: bool = False) -> Path:
    """Writes `path/memory.npz` and `path/memory.json`; refuses an existing memory unless overwrite."""
    path = Path(path)
    if (path / "memory.npz").exists() and not overwrite:
        raise FileExistsError(f"{path} already holds a saved memory: pass overwrite=True to replace it")
    path.mkdir(parents=True, exist_ok=True)
    # the file keeps the token-major [layers, batch, capacity, kv_heads, head_dim] format of earlier versions
    keys, key_dtype = _to_numpy(_stacked(memory.keys, memory, config, (0, 2, 1, 3)))
    values, _ = _to_numpy(_stacked(memory.values, memory, config, (0, 3, 1, 2)))
    tmp = path / "memory.tmp.npz"
    np.savez(tmp, keys=keys, values=values, mask=np.asarray(memory.mask), length=np.asarray(memory.length))
    header = {"format": 1, "backend": "dense", "dtype": key_dtype, "model": fingerprint(config)}
    (path / "memory.json").write_text(json.dumps(header, indent=2) + "\n")
    tmp.replace(path / "memory.npz")
    return path


def load_memory(path: str | Path, config: LlamaConfig) -> DenseMemoryState:
    """Loads a memory saved by `save_memory` for a model with the same fingerprint fields."""
    path = Path(path)
    if not (path / "memory.npz").is_file() or not (path / "memory.json").is_file():
        raise FileNotFoundError(f"{path} holds no saved memory (memory.npz + memory.json)")
    header = json.loads((path / "memory.json").read_text())
    saved, mine = header["model"], fingerprint(config)
    for name in FINGERPRINT_FIELDS:
        if saved.get(name) != mine[name]:
            raise ValueError(
                f"memory in {path} was built by a model with {name}={saved.get(name)}, this model has {mine[name]}"
            )
    with np.load(path / "memory.npz") as data:
        keys, values = data["keys"], data["values"]
        if header["dtype"] == "bfloat16":
            keys, values = keys.view(jnp.bfloat16), values.view(jnp.bfloat16)
        return DenseMemoryState(
            keys=tuple(jnp.asarray(np.transpose(layer, (0, 2, 1, 3))) for layer in keys),
            values=tuple(jnp.asarray(np.transpose(layer, (0, 2, 3, 1))) for layer in values),
            mask=jnp.asarray(data["mask"]),
            length=jnp.asarray(data["length"]),
        )
