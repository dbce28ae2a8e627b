"""configs/lm_base.py continued as a context-extension baseline (DESIGN §5): linear position interpolation (PI),
no memory layers, a 4x longer local context (1024 tokens, positions x 1/4), 2 rows of 1024 = the same 2048 tokens
per step and the same budget as configs/lm_fot.py.

    python train.py --config configs/lm_pi.py --config.init_from=runs/lm_base
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    continuation = runpy.run_path(os.path.join(os.path.dirname(__file__), "lm_plain.py"))["continuation"]
    config = continuation("runs/lm_pi")
    config.model.mem_layers = ()
    config.model.max_position_embeddings = 1024
    config.model.rope_scaling = {"rope_type": "linear", "factor": 4.0}
    config.data.batch_size = 2
    return config
