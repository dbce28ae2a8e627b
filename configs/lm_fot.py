"""configs/lm_base.py continued with FoT: CrossBatch in the memory layer (2) with k = 4 consecutive windows of a
document per group of rows and r = 3 earlier rows with stepping (the LongLLaMA-3B recipe in miniature): each group
sees (positives, negatives) = (0,0), (1,1), (2,1), (3,0); the other lane's windows are the distractors. Same token
budget as configs/lm_plain.py.

    python train.py --config configs/lm_fot.py --config.init_from=runs/lm_base
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    continuation = runpy.run_path(os.path.join(os.path.dirname(__file__), "lm_plain.py"))["continuation"]
    config = continuation("runs/lm_fot")
    config.data.k = 4
    config.fot.cross_batch_range = 3
    config.fot.cross_batch_stepping = True
    return config
