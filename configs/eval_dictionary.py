"""Dictionary lookup vs memory size (DESIGN §6): 64 … 16M tokens of definitions, then a page of queries.

    python eval.py --config configs/eval_dictionary.py \
        --config.checkpoints="('models/dict_lookup_fot','models/dict_lookup_d1','models/dict_lookup_baseline')"
    python eval.py --config configs/eval_dictionary.py --config.dictionary.sizes="(1024,65536)" \
        --config.dictionary.trials=16 --config.checkpoints="('runs/dict_lookup_fot',)"

Each checkpoint is scored with the task layout it was trained on (`dictionary_task.json`, written by the trainer
and copied by export); a field set in `config.dictionary.task` (e.g. `--config.dictionary.task.queries=4`)
overrides that field for every checkpoint. Memory as in the paper: FAISS
with k = 32 neighbours per query. Sizes up to `dictionary.device_up_to` run as exact top-k on the device (the same
neighbours as a flat index). Above it the flat index keeps every key in RAM (16M tokens x 1 kv head x 128 dims of
float32 = 8 GiB for configs/dict_lookup_fot.py); the key/value copies it returns are float16 memmap files under
`index.values_path`, outside the process's anonymous memory. `index.index_type=ivf_fp16` halves the index
(approximate search). Evaluation documents are drawn from `dictionary.seed`, a stream no training run reads.
`dictionary.trial_tokens` (16M) caps the documents of a size at trial_tokens // N: 1 at 16M (minutes each).
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
    # every field unset (None): each checkpoint's own layout; a field set here overrides it for every checkpoint
    defaults = DictionaryTaskConfig()
    config.dictionary.task = ml_collections.ConfigDict(
        {
            f.name: ml_collections.config_dict.placeholder(type(getattr(defaults, f.name)))
            for f in dataclasses.fields(defaults)
        }
    )
    return config
