"""RoPE baseline for FoT (DESIGN §5): NTK-aware base scaling: theta x 4^(d/(d-2)).

Same trainer and data as configs/tiny_fot.py, but no memory layers and a 4x longer local context (1024 instead
of 256) with scaled RoPE; the same tokens per step (2 x 1024 = 8 x 256). Start it from the tiny base model so the
comparison with FoT is like-for-like:

    python train.py --config configs/tiny.py
    python train.py --config configs/tiny_ntk.py --config.init_from=runs/tiny
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "tiny.py"))["get_config"]()
    config.workdir = "runs/tiny_ntk"
    config.model.mem_layers = ()
    config.model.max_position_embeddings = 1024
    config.model.rope_scaling = {"rope_type": "ntk", "factor": 4.0}
    config.data.batch_size = 2
    return config
