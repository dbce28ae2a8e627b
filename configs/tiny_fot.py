"""The tiny model trained with FoT CrossBatch, the LongLLaMA-3B recipe in miniature (CPU, minutes):
k = 4 consecutive windows of a document per group of rows, r = 3 earlier rows visible to the memory layer, with
stepping, so each group sees (positives, negatives) = (0,0), (1,1), (2,1), (3,0).

    python train.py --config configs/tiny_fot.py
    python train.py --config configs/tiny_fot.py --config.init_from=runs/tiny   # continue from configs/tiny.py
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "tiny.py"))["get_config"]()
    config.workdir = "runs/tiny_fot"
    config.data.k = 4
    config.fot.cross_batch_range = 3
    config.fot.cross_batch_stepping = True
    return config
