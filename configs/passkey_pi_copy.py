"""Stage 1 of the PI baseline's passkey tuning (from configs/lm_pi.py): the copy drills and budget of
configs/passkey_copy.py (4096 tokens a step: 4 rows of 1024) at its 1024-token local context. Stage 2 is
configs/passkey_pi.py.

    python train.py --config configs/passkey_pi_copy.py --config.init_from=runs/lm_pi
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "lm_pi.py"))["get_config"]()
    copy_stage = runpy.run_path(os.path.join(os.path.dirname(__file__), "passkey_copy.py"))["copy_stage"]
    config = copy_stage(config, "runs/passkey_pi_copy", "runs/lm_pi")
    config.data.batch_size = 4
    return config
