"""configs/lm_base.py continued as a context-extension baseline (DESIGN §5): YaRN (per-frequency interpolation
ramp + attention temperature), no memory layers, a 4x longer local context (1024 tokens), 2 rows of 1024 = the
same 2048 tokens per step and the same budget as configs/lm_fot.py.

    python train.py --config configs/lm_yarn.py --config.init_from=runs/lm_base
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "lm_pi.py"))["get_config"]()
    config.workdir = "runs/lm_yarn"
    config.model.rope_scaling = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256}
    return config
