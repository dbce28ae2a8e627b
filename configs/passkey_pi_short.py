"""Passkey tuning of configs/lm_pi.py, stage 1, with the same data and budget as configs/passkey_fot_short.py
(20000 short prompts of 48-128 tokens mixed into the text, 500 steps of 2048 tokens, peak LR 2e-3) at its 1024-token
local context. Stage 2 is configs/passkey_pi.py.

    python train.py --config configs/passkey_pi_short.py --config.init_from=runs/lm_pi
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "passkey_pi.py"))["get_config"]()
    stage1 = runpy.run_path(os.path.join(os.path.dirname(__file__), "passkey_fot_short.py"))["short_prompts"]
    return stage1(config, "runs/passkey_pi_short", "runs/lm_pi")
