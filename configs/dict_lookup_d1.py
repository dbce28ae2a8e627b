"""The paper's distraction ablation for dictionary lookup: the FoT model of configs/dict_lookup_fot.py trained with
d = 1 only (r = 1: a memory layer sees its own document's definitions and never a distractor), so it is not taught
to ignore unrelated keys. Expected: it degrades as memory fills with other keys (the "distraction issue").

    python train.py --config configs/dict_lookup_d1.py
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "dict_lookup_fot.py"))["get_config"]()
    config.workdir = "runs/dict_lookup_d1"
    config.fot.cross_batch_range = 1
    config.fot.initial_range = -1
    config.fot.switch_accuracy = -1.0
    config.fot.eval_range = -1
    return config
