"""Dictionary lookup vs memory size (DESIGN §6): 1K … 16M tokens of definitions, then 256 tokens of queries.

    python eval.py --config configs/eval_dictionary.py \
        --config.checkpoints="('runs/dict_lookup_fot','runs/dict_lookup_baseline')" --config.out_dir=out/dictionary
    python eval.py --config configs/eval_dictionary.py --config.dictionary.sizes="(1024,16384)" \
        --config.dictionary.trials=8

Memory as in the paper: FAISS with k = 32 neighbours per query. Sizes up to `dictionary.device_up_to` run as exact
top-k on the device (the same neighbours as a flat index). Above it the flat index keeps every key in RAM (16M
tokens x 4 kv heads x 32 dims of float32 = 8 GiB for configs/dict_lookup_fot.py); the key/value copies it returns
are float16 memmap files under `index.values_path` (8 GiB of disk at 16M), outside the process's anonymous
memory. `index.index_type=ivf_fp16` halves the index (approximate search). `dictionary.task` must be the layout
the checkpoints were trained with (`config.data.synthetic` of the training config).
"""

import dataclasses

import ml_collections

from focused.config import section
from focused.data.synthetic import DictionaryTaskConfig
from focused.evals.dictionary import DictionaryEvalConfig
from focused.memory.backends import MemoryConfig


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.eval = "dictionary"
    config.checkpoints = ("runs/dict_lookup_fot",)  # run dirs, step dirs, saved models or Hugging Face folders
    config.labels = ()  # names in the table and plot (default: folder names)
    config.tokenizer = "auto"  # unused: the task makes token ids directly
    config.out_dir = "out/dictionary"
    config.overwrite = False
    config.progress = True
    config.memory = section(
        MemoryConfig(
            backend="faiss",
            top_k=32,
            index={"index_type": "flat", "payload_dtype": "float16", "values_path": "out/dictionary/memmap"},
        )
    )
    config.dictionary = section(DictionaryEvalConfig())
    config.dictionary.task = dataclasses.asdict(DictionaryTaskConfig())
    return config
