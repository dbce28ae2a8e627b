"""The plain-transformer baseline of dictionary lookup: no memory layers, a window of two pages (128 tokens), so a
whole training document (definitions and queries) fits in one window. It can only answer queries whose
definitions are in its window: at chance beyond it (the paper: a plain transformer fails already at 16K).

    python train.py --config configs/dict_lookup_baseline.py

Same task, model size and optimiser as configs/dict_lookup_fot.py; 32 rows of 128 tokens = the same 32 documents
per step.
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "dict_lookup_fot.py"))["get_config"]()
    config.workdir = "runs/dict_lookup_baseline"
    page = config.data.synthetic.page_len
    config.model.max_position_embeddings = 2 * page
    config.model.last_context_length = page
    config.model.mem_layers = ()
    config.model.mem_key_norm = False  # no memory layers
    config.model.head_dim = None  # heads of 32: without memory, the width of a key changes nothing it can see
    config.model.num_key_value_heads = 2
    config.data.batch_size //= 2
    config.data.k = 1
    config.fot.cross_batch_range = 0
    config.fot.initial_range = -1
    config.fot.switch_accuracy = -1.0
    config.fot.eval_range = -1
    return config
