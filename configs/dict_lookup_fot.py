"""FoT on dictionary lookup (DESIGN §6) at CPU scale: one NoPE memory layer, CrossBatch with the d curriculum.

    python train.py --config configs/dict_lookup_fot.py
    python eval.py --config configs/eval_dictionary.py --config.checkpoints="('runs/dict_lookup_fot',)"

Task (`focused.data.synthetic`, default layout): pages of 64 tokens, one page of 16 definitions `a b c v` (3-letter
keys over 256 letters, one value of 64 others) and one page of 16 queries drawn with replacement, so guessing
without keys scores 1/16. Training pages hold 2-16 definitions (`min_defs`) whose keys share letters
(`key_groups`), so that only a whole-key match answers every query.

Model: 2 layers, d 128, 4 query heads of 128 over ONE key/value head of 128 (head_dim set explicitly: q/o project
128 <-> 512, k/v 128 -> 128), FF 256, window 64 = one page; layer 1 is the memory layer without positional encodings
(mem_positionals=False, the paper's small-model variant), its keys RMS-normalised per head (mem_key_norm, ours: with
LongLLaMA's raw keys the longest memory keys outrank the right one at 1M+ tokens). With normalised keys, the keys
that still outrank the right one share no letter with it, so the width of a key is what separates them: on
validation documents at 16M tokens of memory heads of 32 scored 43.8%, 2 kv heads of 64 62.5%, one of 128 93.8%
(the same FAISS index size as 2 x 64). README "Results" has every variant: `--config.model.num_key_value_heads=2
--config.model.head_dim=64` trains the previous one, with `head_dim=32` (and `--config.model.mem_key_norm=False`)
the ones before. Batch 128 rows = 64 documents, k = 2 (row 2g holds the definitions, row 2g+1 the queries). The
paper's d curriculum: d = 1 (r = 1: the query row sees its own definitions row) until the logged train accuracy
reaches `switch_accuracy`, then r = 63 (its definitions plus 62 rows of other documents as distractors).

Run through the curriculum of experiments/dictionary_lookup.py (this layout from scratch sits at the key-free
level). Measured on 2 CPU cores (2026-12-01, DESIGN §6), 125 steps after the switch: r = 63 with 128 rows gave
100 / 84.4 / 59.4% at 1K / 16K / 64K tokens of memory, r = 15 with 64 rows 98.4 / 67.2 / 34.4%: the number of
distractors seen in training is what teaches the memory layer to ignore keys that resemble the query's.
"""

import ml_collections

from focused.config import section
from focused.data import DataSourceConfig
from focused.data.synthetic import DictionaryTaskConfig
from focused.model.config import LlamaConfig
from focused.training.fot import FotConfig
from focused.training.optimizer import TrainConfig
from focused.training.sharding import MeshConfig, sharding_config


def get_config() -> ml_collections.ConfigDict:
    task = DictionaryTaskConfig(min_defs=2, key_groups=4)
    config = ml_collections.ConfigDict()
    config.workdir = "runs/dict_lookup_fot"
    config.seed = 0
    config.init_from = ""
    config.export_dir = ""
    config.dry_run = False
    config.dry_run_devices = 0
    config.model = section(
        LlamaConfig(
            vocab_size=task.offset + task.vocab_size,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=128,
            max_position_embeddings=task.page_len,
            rope_theta=10000.0,
            rms_norm_eps=1e-6,
            mem_layers=(1,),
            mem_positionals=False,
            mem_key_norm=True,
            mem_dtype="float32",
            last_context_length=task.page_len // 2,
        )
    )
    config.data = ml_collections.ConfigDict()
    config.data.tokenizer = ""  # unused: the synthetic task makes token ids directly
    config.data.source = section(DataSourceConfig(path="synthetic:dictionary"))
    config.data.eval_source = section(DataSourceConfig(path="synthetic:dictionary", split="validation"))
    config.data.synthetic = section(task)
    config.data.batch_size = 128
    config.data.k = task.def_pages + task.query_pages  # one document per group of rows
    config.data.seed = 0
    config.train = section(
        TrainConfig(
            steps=1500,
            learning_rate=1e-3,
            warmup_steps=100,
            schedule="cosine",
            weight_decay=0.01,
            log_every=25,
            save_every=250,
        )
    )
    config.train.eval_every = 0
    config.fot = section(FotConfig(cross_batch_range=63, initial_range=1, switch_accuracy=0.9, eval_range=1))
    config.sharding = sharding_config(MeshConfig(data=-1))
    return config
