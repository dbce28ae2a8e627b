"""Stage 3 of the PI baseline's passkey tuning: configs/passkey_fot_long.py's prompts of 256-2048 tokens (seed 1), 600
steps from runs/passkey_pi, at its 1024-token context.

    python train.py --config configs/passkey_pi_long.py
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "passkey_pi.py"))["get_config"]()
    stage = runpy.run_path(os.path.join(os.path.dirname(__file__), "passkey_fot_long.py"))["longer_prompts"]
    return stage(config, "runs/passkey_pi_long", "runs/passkey_pi")
