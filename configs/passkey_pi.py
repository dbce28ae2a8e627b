"""configs/lm_pi.py tuned on the passkey task, stage 2 (from configs/passkey_pi_short.py), with the same data and
budget as configs/passkey_fot.py (the demo text's train split mixed with 20000 passkey prompts of 64-512 tokens, 400
steps of 2048 tokens), at its 4x longer local context (1024 tokens, linear position interpolation, no memory).

    python train.py --config configs/passkey_pi_short.py
    python train.py --config configs/passkey_pi.py
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "lm_pi.py"))["get_config"]()
    fot = runpy.run_path(os.path.join(os.path.dirname(__file__), "passkey_fot.py"))["get_config"]()
    config.workdir = "runs/passkey_pi"
    config.init_from = "runs/passkey_pi_short"
    config.data.passkey = fot.data.passkey
    config.train.steps = fot.train.steps
    config.train.eval_every = 0
    return config
