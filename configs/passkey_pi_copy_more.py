"""Stage 1b of the PI baseline's passkey tuning: the second round of copy drills of configs/passkey_copy_more.py
(1000 more steps) from runs/passkey_pi_copy, at its 1024-token context. Stage 2 is configs/passkey_pi.py.

    python train.py --config configs/passkey_pi_copy_more.py
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "passkey_pi_copy.py"))["get_config"]()
    config.workdir, config.init_from = "runs/passkey_pi_copy_more", "runs/passkey_pi_copy"
    return config
