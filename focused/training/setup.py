"""What a training run is built from: the model (fresh or `config.init_from`), the data iterator, and the config
checks that would otherwise fail late or silently. `focused.training.loop.train` calls these in this order:
`validate` → `model_config` → `build_model` → `build_data`."""

from __future__ import annotations

from pathlib import Path

import ml_collections
from flax import nnx

from focused.data import DataSourceConfig, DocumentPacker, PackingConfig, load_documents, load_tokenizer
from focused.data.passkey import mix_passkeys
from focused.data.synthetic import DictionaryBatches, synthetic_batches
from focused.model.config import LlamaConfig
from focused.model.llama import LlamaForCausalLM
from focused.training.fot import FotConfig
from focused.training.optimizer import TrainConfig

# fields that must be positive integers, by config section
POSITIVE_FIELDS = {
    "data": ("batch_size", "k"),
    "model": (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
    ),
}


def model_config(config: ml_collections.ConfigDict) -> LlamaConfig:
    """`config.model` as a LlamaConfig; its errors name the section (`config.model: ...`)."""
    try:
        return LlamaConfig.from_dict(config.model.to_dict())
    except (TypeError, ValueError) as error:
        message = " ".join(str(error).split())
        raise ValueError(message if "config.model" in message else f"config.model: {message}") from None


def build_model(config: ml_collections.ConfigDict) -> LlamaForCausalLM:
    """A freshly initialised model, or the one `config.init_from` names (HF folder or focused checkpoint)."""
    model_cfg = model_config(config)
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
    # the weights decide the shapes; this config decides everything else (memory layers, context, RoPE, numerics)
    shape_fields = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "kv_heads",
        "head_size",
        "tie_word_embeddings",
    )
    for name in shape_fields:
        if getattr(model.config, name) != getattr(model_cfg, name):
            raise ValueError(
                f"config.model.{name}={getattr(model_cfg, name)} but the checkpoint in config.init_from has "
                f"{getattr(model.config, name)}: set the config to match the checkpoint"
            )
    fresh = LlamaForCausalLM(model_cfg, rngs=nnx.Rngs(config.seed))
    nnx.update(fresh, nnx.state(model, nnx.Param))
    return fresh


def build_data(
    config: ml_collections.ConfigDict,
    source: ml_collections.ConfigDict | None = None,
    rows: tuple[int, int] | None = None,
) -> DocumentPacker | DictionaryBatches:
    """The document-aware packer for `config.data.source` (or another source section, e.g. the eval one).

    `rows=(start, stop)`: the rows of each batch this process needs. The synthetic task then generates only those
    (`batch["inputs"]` is `[stop - start, window]`), and so does the document packer with
    `config.data.lane_streams=True` (each lane reads its own documents) when the rows are whole k-groups; otherwise
    the packer packs whole batches (its lanes draw documents from one shared order) and the caller keeps its rows
    (`local_rows`).
    """
    data = config.data
    source = data.source if source is None else source
    if not source.path:
        raise ValueError("config.data.source.path is empty: name a hub dataset, local files, or focused:demo")
    if source.path.startswith("synthetic:"):  # generated task data (focused.data.synthetic), no tokenizer
        return synthetic_batches(config, source, rows)
    tokenizer = load_tokenizer(data.tokenizer or None)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.vocab_size} tokens but config.model.vocab_size={config.model.vocab_size}"
        )
    documents = load_documents(DataSourceConfig.from_dict(source.to_dict()))
    if source is data.source:  # passkey prompts go into the training documents only
        documents = mix_passkeys(documents, tokenizer, data.get("passkey", {}))
    packing = PackingConfig(
        batch_size=data.batch_size,
        window=config.model.max_position_embeddings,
        k=data.k,
        seed=data.seed,
        lane_streams=bool(data.get("lane_streams", False)),
        align_documents=bool(data.get("align_documents", False)),
    )
    lanes = None
    if packing.lane_streams and rows is not None and rows[0] % data.k == 0 and rows[1] % data.k == 0:
        lanes = (rows[0] // data.k, rows[1] // data.k)
    return DocumentPacker(documents, tokenizer, packing, lanes=lanes)


def validate(config: ml_collections.ConfigDict, cfg: TrainConfig, fot: FotConfig) -> None:
    """Config errors that would otherwise surface late (or as wrong results); each names the field as typed."""
    for section, names in POSITIVE_FIELDS.items():
        for name in names:
            value = config[section][name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"config.{section}.{name} must be a positive integer, got {value!r}")
    if config.init_from and not Path(config.init_from).exists():
        raise FileNotFoundError(
            f"config.init_from={config.init_from} does not exist: point it at a Hugging Face folder or a focused "
            "checkpoint (or set it to '' to start from random weights)"
        )
    if not config.data.source.path:
        raise ValueError("config.data.source.path is empty: name a hub dataset, local files, or focused:demo")
    batch, k = config.data.batch_size, config.data.k
    if batch % k:
        raise ValueError(f"config.data.batch_size={batch} is not divisible by config.data.k={k}")
    if batch % (cfg.accum_steps * k):
        raise ValueError(
            f"config.data.batch_size={batch} must be divisible by accum_steps*k ({cfg.accum_steps}*{k}) so "
            "micro-batches hold whole groups of k rows"
        )
    fot.check(bool(config.model.mem_layers))
    if cfg.eval_every and not config.data.get("eval_source", {}).get("path"):
        raise ValueError("config.train.eval_every > 0 needs config.data.eval_source.path (held-out documents)")
