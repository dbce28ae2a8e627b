"""configs/lm_pi.py tuned on the passkey task with the data and budget of configs/passkey_fot.py (20000 prompts of
48-512 tokens mixed into the text, each document starting its own window; 600 steps of 4096 tokens, peak LR 2e-3),
at its 4x longer local context: 4 rows of 1024 tokens (linear position interpolation, no memory).

    python train.py --config configs/passkey_pi.py --config.init_from=runs/lm_pi
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "lm_pi.py"))["get_config"]()
    tuning = runpy.run_path(os.path.join(os.path.dirname(__file__), "passkey_fot.py"))["passkey_tuning"]
    config = tuning(config, "runs/passkey_pi", "runs/lm_pi")
    config.data.batch_size = 4
    return config
