"""RoPE baseline for FoT (DESIGN §5): ABF: a larger RoPE base (theta 500k, as in Code Llama / LLaMA2-Long).

Same trainer and data as configs/tiny_fot.py, but no memory layers and a 4x longer local context (1024 instead
of 256) with scaled RoPE; the same tokens per step (2 x 1024 = 8 x 256). Start it from the tiny base model so the
comparison with FoT is like-for-like:

    python train.py --config configs/tiny.py
    python train.py --config configs/tiny_abf.py --config.init_from=runs/tiny
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "tiny.py"))["get_config"]()
    config.workdir = "runs/tiny_abf"
    config.model.mem_layers = ()
    config.model.max_position_embeddings = 1024
    config.model.rope_theta = 500_000.0
    config.data.batch_size = 2
    return config
