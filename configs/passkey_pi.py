"""Stage 2 of the PI baseline's passkey tuning (from configs/passkey_pi_copy.py) with the data and budget of
configs/passkey_fot.py (20000 prompts of 48-512 tokens and 5000 copy drills mixed into the text, each document
starting its own window; 600 steps of 4096 tokens, peak LR 2e-3), at its 4x longer local context: 4 rows of 1024
tokens (linear position interpolation, no memory).

    python train.py --config configs/passkey_pi_copy.py
    python train.py --config configs/passkey_pi.py
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "lm_pi.py"))["get_config"]()
    tuning = runpy.run_path(os.path.join(os.path.dirname(__file__), "passkey_fot.py"))["passkey_tuning"]
    config = tuning(config, "runs/passkey_pi", "runs/passkey_pi_copy_digits")
    config.data.batch_size = 4
    return config
