"""The Hugging Face side of a checkpoint: tensor names and layouts, `config.json` fields, and atomic folder writes.

One `TensorSpec` per parameter ties our path (`("model", "layers", 0, "self_attn", "q_proj", "kernel")`) to its
torch name (`model.layers.0.self_attn.q_proj.weight`) and torch shape. Projection kernels are `[in, out]` here and
`[out, in]` in torch (`Linear.weight`), so they are transposed on the way across; embeddings and norm weights are
not. `export.py` and `load.py` both go through these specs, so the two directions cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from focused.model.config import LlamaConfig
from focused.model.rope import export_rope_fields

ParamPath = tuple[str | int, ...]  # a parameter's path in the nested params dict

FORMATS = ("longllama", "llama")
LONGLLAMA_FIELDS = ("mem_layers", "mem_dtype", "mem_positionals", "last_context_length", "mem_attention_grouping")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
SUPPORTED_ROPE_TYPES = ("default", "linear", "yarn")
# HF yarn options our RoPE does not implement (it always truncates and derives the attention factor from `factor`)
_UNSUPPORTED_YARN_KEYS = ("mscale", "mscale_all_dim")
# the rope_scaling keys focused.model.rope reads; transformers would act on any other key, so export refuses them
_ROPE_KEYS = {
    "rope_type",
    "type",
    "factor",
    "original_max_position_embeddings",
    "beta_fast",
    "beta_slow",
    "attention_factor",
}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One parameter: our path, its torch name, its torch shape, and whether the layouts differ by a transpose."""

    path: ParamPath
    hf_name: str
    hf_shape: tuple[int, ...]
    transpose: bool

    @property
    def shape(self) -> tuple[int, ...]:
        """Our shape (the torch shape reversed for transposed kernels)."""
        return self.hf_shape[::-1] if self.transpose else self.hf_shape


def tensor_specs(config: LlamaConfig) -> list[TensorSpec]:
    """Every parameter of `LlamaForCausalLM(config)`, in Hugging Face state-dict order."""
    e, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    q, kv = config.num_attention_heads * config.head_size, config.kv_heads * config.head_size

    def linear(path: ParamPath, d_in: int, d_out: int) -> TensorSpec:
        name = ".".join(str(p) for p in path) + ".weight"
        return TensorSpec((*path, "kernel"), name, (d_out, d_in), True)

    def vector(path: ParamPath, size: int) -> TensorSpec:
        return TensorSpec((*path, "weight"), ".".join(str(p) for p in path) + ".weight", (size,), False)

    specs = [TensorSpec(("model", "embed_tokens", "embedding"), "model.embed_tokens.weight", (v, e), False)]
    for i in range(config.num_hidden_layers):
        layer: ParamPath = ("model", "layers", i)
        specs += [
            vector((*layer, "input_layernorm"), e),
            linear((*layer, "self_attn", "q_proj"), e, q),
            linear((*layer, "self_attn", "k_proj"), e, kv),
            linear((*layer, "self_attn", "v_proj"), e, kv),
            linear((*layer, "self_attn", "o_proj"), q, e),
            vector((*layer, "post_attention_layernorm"), e),
            linear((*layer, "mlp", "gate_proj"), e, f),
            linear((*layer, "mlp", "up_proj"), e, f),
            linear((*layer, "mlp", "down_proj"), f, e),
        ]
    specs.append(vector(("model", "norm"), e))
    if not config.tie_word_embeddings:
        specs.append(linear(("lm_head",), e, v))
    return specs


def flatten_params(params: Mapping[Any, Any], prefix: ParamPath = ()) -> dict[ParamPath, Any]:
    """Nested params dict (as `checkpoint.params_dict` returns) → `{path: array}`."""
    flat: dict[ParamPath, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def unflatten_params(flat: Mapping[ParamPath, Any]) -> dict[Any, Any]:
    """`{path: array}` → nested params dict (the inverse of `flatten_params`)."""
    nested: dict[Any, Any] = {}
    for path, value in flat.items():
        node = nested
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return nested


def _list_names(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_names(found: set[str], expected: set[str], where: str) -> None:
    """Raises a one-line ValueError naming missing and unexpected entries."""
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    problems = []
    if missing:
        problems.append(f"missing {_list_names(missing)}")
    if unexpected:
        problems.append(f"unexpected {_list_names(unexpected)}")
    if problems:
        raise ValueError(f"{where} does not match the config: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------------------------
# config.json


def hf_config_dict(config: LlamaConfig, *, format: str = "longllama", torch_dtype: str = "float32") -> dict[str, Any]:
    """The `config.json` of a Hugging Face export: plain `LlamaForCausalLM` or `LongLlamaForCausalLM` fields."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}: use one of {FORMATS}")
    ignored = sorted(set(config.rope_scaling or {}) - _ROPE_KEYS)
    if ignored:
        raise ValueError(f"rope_scaling keys {ignored} are ignored by focused but would be used by transformers")
    out: dict[str, Any] = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.initializer_range,
        "rms_norm_eps": config.rms_norm_eps,
        **export_rope_fields(config.rope_theta, config.rope_scaling, config.head_size),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "torch_dtype": torch_dtype,
        "use_cache": True,
    }
    if format == "llama":
        if config.mem_key_norm and config.mem_layers:
            raise ValueError(
                "mem_key_norm changes the memory layers' keys, which a plain LlamaForCausalLM cannot do: export "
                "with format='longllama'"
            )
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **out}
    longllama = config.to_dict()
    out.update({name: longllama[name] for name in LONGLLAMA_FIELDS})
    if config.mem_key_norm:  # ours only: written when set, so other exports keep LongLLaMA's exact fields
        out["mem_key_norm"] = True
    out.update({"torch_attention": False, "gradient_checkpoint_every_ith": 1})
    return {"architectures": ["LongLlamaForCausalLM"], "model_type": "longllama", **out}


def _rope_from_hf(hf: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, our rope_scaling) from legacy `rope_theta`/`rope_scaling` or transformers-5 `rope_parameters`."""
    # transformers gives a non-empty legacy `rope_scaling` priority over `rope_parameters`; so do we
    params = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
    theta = float(params.pop("rope_theta", None) or hf.get("rope_theta") or 10000.0)
    rope_type = params.pop("rope_type", params.pop("type", "default"))
    if float(params.pop("partial_rotary_factor", None) or hf.get("partial_rotary_factor") or 1.0) != 1.0:
        raise ValueError("partial_rotary_factor != 1 (RoPE on part of each head) is not supported")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"RoPE type {rope_type!r} is not supported: use one of {SUPPORTED_ROPE_TYPES}")
    if rope_type == "default":
        return theta, None
    if params.get("factor") is None:
        raise ValueError(f"RoPE type {rope_type!r} needs a 'factor'")
    if rope_type == "yarn":
        unsupported = [k for k in _UNSUPPORTED_YARN_KEYS if params.get(k)]
        if params.get("truncate", True) is False:
            unsupported.append("truncate=false")
        if unsupported:
            raise ValueError(f"YaRN options {unsupported} are not supported by focused's RoPE")
        params.pop("truncate", None)
    kept = {k: v for k, v in params.items() if k in _ROPE_KEYS and v is not None}  # transformers ignores the rest
    return theta, {"rope_type": rope_type, **kept}


def config_from_hf(hf: Mapping[str, Any], *, param_dtype: str = "float32", dtype: str = "float32") -> LlamaConfig:
    """`LlamaConfig` from a Hugging Face `config.json` of model_type llama (OpenLLaMA, Llama) or longllama.

    HF-only fields (use_cache, torch_dtype, ...) are ignored; fields that would change the computation into one
    this model does not implement (another activation, biases, unsupported RoPE scaling) are errors.
    """
    model_type = hf.get("model_type")
    if model_type not in FORMATS:
        raise ValueError(f"config.json has model_type {model_type!r}: only 'llama' and 'longllama' can be imported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {hf['hidden_act']!r} is not supported: the LLaMA MLP uses silu")
    for name in ("attention_bias", "mlp_bias"):
        if hf.get(name):
            raise ValueError(f"{name}=true is not supported: the LLaMA projections have no bias")
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in required if hf.get(k) is None]
    if missing:
        raise ValueError(f"config.json lacks {missing}")
    heads = int(hf["num_attention_heads"])
    kv_heads = hf.get("num_key_value_heads")
    head_dim = hf.get("head_dim")
    theta, scaling = _rope_from_hf(hf)
    defaults = LlamaConfig.__dataclass_fields__
    max_positions = int(hf.get("max_position_embeddings") or 2048)

    def token(value: Any, name: str) -> int:
        value = value[0] if isinstance(value, list) and value else value
        return defaults[name].default if value is None else int(value)

    values: dict[str, Any] = {
        "vocab_size": int(hf["vocab_size"]),
        "hidden_size": int(hf["hidden_size"]),
        "intermediate_size": int(hf["intermediate_size"]),
        "num_hidden_layers": int(hf["num_hidden_layers"]),
        "num_attention_heads": heads,
        # the defaults stay None so that an exported and re-imported config compares equal to the original
        "num_key_value_heads": None if kv_heads in (None, heads) else int(kv_heads),
        "head_dim": None if head_dim in (None, int(hf["hidden_size"]) // heads) else int(head_dim),
        "max_position_embeddings": max_positions,
        "rope_theta": theta,
        "rope_scaling": scaling,
        "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "initializer_range": float(hf.get("initializer_range", 0.02)),
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "bos_token_id": token(hf.get("bos_token_id"), "bos_token_id"),
        "eos_token_id": token(hf.get("eos_token_id"), "eos_token_id"),  # Llama-3 lists several: first
        "pad_token_id": token(hf.get("pad_token_id"), "pad_token_id"),
        "last_context_length": min(defaults["last_context_length"].default, max_positions),
        "param_dtype": param_dtype,
        "dtype": dtype,
    }
    if model_type == "longllama":
        values.update({name: hf[name] for name in LONGLLAMA_FIELDS if hf.get(name) is not None})
        values["mem_key_norm"] = bool(hf.get("mem_key_norm", False))
    return LlamaConfig(**values)


# ---------------------------------------------------------------------------------------------------------------
# folders


def parse_size(size: int | str) -> int:
    """Bytes from `2GB` (10^9, as Hugging Face counts), `512MiB` (2^20), `10KB` or a plain integer."""
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"size {size} must be positive")
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", size, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot read size {size!r}: write e.g. 2GB, 500MB, 512MiB or a number of bytes")
    unit = (match.group(2) or "B").upper()
    powers = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    powers.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})
    number = int(float(match.group(1)) * powers[unit])
    if number <= 0:
        raise ValueError(f"size {size!r} must be positive")
    return number


def current_umask() -> int:
    """The process umask, read from /proc where possible (setting it to read it back races with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_like_new_files(root: Path) -> None:
    """chmod `root` and everything below it to 0777 (folders) / 0666 (files) minus the umask."""
    mask = current_umask()
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~mask)


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _make_parents(path: Path) -> list[Path]:
    """mkdir -p that returns the directories it created (deepest last), so a failed write can remove them."""
    created = []
    for parent in [*reversed(path.parents), path]:
        if not parent.exists():
            parent.mkdir()
            created.append(parent)
    return created


@dataclasses.dataclass
class StagedDir:
    """A temporary directory beside `target` that becomes `target` in one rename (`publish`)."""

    target: Path
    path: Path
    created_parents: list[Path]

    def publish(self) -> Path:
        """Moves the staged directory onto `target`; an existing target is set aside and deleted afterwards.

        The staged tree gets the permissions a plain `mkdir` / file write would give (0777 / 0666 minus the umask):
        the temporary directory is created 0700 and some writers use 0600, which would make the result private.
        """
        share_like_new_files(self.path)
        if not self.target.exists() or is_empty_dir(self.target):
            os.replace(self.path, self.target)  # rename(2) also replaces an empty directory
            return self.target
        old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self.target.parent))
        os.replace(self.target, old / self.target.name)
        os.replace(self.path, self.target)
        shutil.rmtree(old)
        return self.target

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        for parent in reversed(self.created_parents):
            if is_empty_dir(parent):
                parent.rmdir()


@dataclasses.dataclass
class _Staging:
    target: Path

    def __enter__(self) -> StagedDir:
        if self.target.exists() and not self.target.is_dir():
            raise FileExistsError(f"{self.target} exists and is not a directory")
        created = _make_parents(self.target.parent)
        path = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-", dir=self.target.parent))
        self.staged = StagedDir(self.target, path, created)
        return self.staged

    def __exit__(self, *exc: object) -> None:
        if self.staged.path.exists():  # published renames it away; anything left over is discarded
            self.staged.discard()


def staging(target: str | Path) -> _Staging:
    """`with staging(out) as staged:` write into `staged.path`, then `staged.publish()`; on any exception (or
    without publish) the staged files, and parent directories this created, are removed."""
    return _Staging(Path(target).absolute())


def iter_files(directory: Path) -> Iterator[Path]:
    """Files of a directory, sorted by name (not recursive)."""
    yield from sorted(p for p in directory.iterdir() if p.is_file())
