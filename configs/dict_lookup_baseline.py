"""The plain-transformer baseline of the dictionary-lookup task: no memory layers, trained at 512 tokens, so a
whole training document (definitions and queries) fits in one window. The paper reports that it fails already
at 16K tokens of definitions; `focused.evals.dictionary` scores it on its last window (nothing carries across
windows without memory layers), or on a longer window with `config.dictionary.window`.

    python train.py --config configs/dict_lookup_baseline.py
    python eval.py --config configs/eval_dictionary.py --config.checkpoint=runs/dict_lookup_baseline

Same model size, data and optimiser as configs/dict_lookup_fot.py; 8 rows of 512 tokens = 4K tokens per step.
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "dict_lookup_fot.py"))["get_config"]()
    config.workdir = "runs/dict_lookup_baseline"
    config.model.max_position_embeddings = 512
    config.model.last_context_length = 256
    config.model.mem_layers = ()
    config.data.batch_size = 8
    config.data.k = 1
    config.fot.cross_batch_range = 0
    config.fot.initial_range = -1
    config.fot.switch_accuracy = -1.0
    return config
