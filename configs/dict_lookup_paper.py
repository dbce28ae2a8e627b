"""Dictionary lookup at the paper's scale, for an accelerator (DESIGN §6): a 37M-parameter FoT model (12 layers,
d 512, 8 heads of 64, FF 2048), local context 256, the paper's layout `<k> k1 k2 k3 k4 <v> v1 v2 v3 v4` (64 key
letters, 64 value letters), 512-token documents (one page of definitions, one of queries), batch 32K tokens
(128 rows of 256), 5k steps, the d curriculum d = 1 until 98% train accuracy, then d = 63 (every earlier row).

    python train.py --config configs/dict_lookup_paper.py
    python eval.py --config configs/eval_dictionary.py --config.checkpoints="('runs/dict_lookup_paper',)"

Unlike the paper, key and value letters have separate ids (vocabulary 135) so a value is never a key letter.
"""

import os
import runpy

import ml_collections

from focused.config import section
from focused.data.synthetic import DictionaryTaskConfig


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "dict_lookup_fot.py"))["get_config"]()
    task = DictionaryTaskConfig(
        key_letters=64, key_len=4, value_letters=64, value_len=4, value_marker=True, page_len=256
    )
    config.workdir = "runs/dict_lookup_paper"
    config.data.synthetic = section(task)
    config.model.vocab_size = task.offset + task.vocab_size
    config.model.hidden_size = 512
    config.model.intermediate_size = 2048
    config.model.num_hidden_layers = 12
    config.model.num_attention_heads = 8
    config.model.num_key_value_heads = 8
    config.model.head_dim = None  # hidden / heads = 64
    config.model.max_position_embeddings = 256
    config.model.last_context_length = 128
    config.model.mem_layers = (8,)
    config.data.batch_size = 128
    config.train.steps = 5000
    config.train.learning_rate = 2e-2
    config.train.warmup_steps = 500
    config.train.schedule = "cosine"
    config.fot.cross_batch_range = 63
    config.fot.switch_accuracy = 0.98
    return config
