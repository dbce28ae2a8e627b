"""Stage 2 of passkey tuning for the PI baseline: the same copy-trained weights as FoT (runs/passkey_copy_digits,
stage 1c) extended 4x with linear position interpolation (configs/lm_pi.py's settings: a 1024-token context, RoPE
positions scaled by 1/4, no memory), then tuned on configs/passkey_fot.py's data with its budget: 20000 prompts of
48-512 tokens and 5000 copy drills mixed into the text, each document starting its own window; 600 steps of 4096
tokens (4 rows of 1024), peak LR 2e-3. The two models differ only in how they reach past 256 tokens.

    python train.py --config configs/passkey_pi.py
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "lm_pi.py"))["get_config"]()
    tuning = runpy.run_path(os.path.join(os.path.dirname(__file__), "passkey_fot.py"))["passkey_tuning"]
    config = tuning(config, "runs/passkey_pi", "runs/passkey_copy_digits")
    config.data.batch_size = 4
    return config
