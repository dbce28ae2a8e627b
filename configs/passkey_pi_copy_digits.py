"""Stage 1c of the PI baseline's passkey tuning: configs/passkey_copy_digits.py's drills with a number among the words
(400 steps) from runs/passkey_pi_copy_more, at its 1024-token context. Stage 2 is configs/passkey_pi.py.

    python train.py --config configs/passkey_pi_copy_digits.py
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "passkey_pi_copy_more.py"))["get_config"]()
    stage = runpy.run_path(os.path.join(os.path.dirname(__file__), "passkey_copy_digits.py"))["with_numbers"]
    return stage(config, "runs/passkey_pi_copy_digits", "runs/passkey_pi_copy_more")
