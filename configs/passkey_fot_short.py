"""Passkey tuning of configs/lm_fot.py, stage 1: the demo text's train split mixed with 20000 short passkey prompts
(48-128 tokens, so the key is in the local window) in the published format with their answers, 500 steps of 2048
tokens at a peak LR of 2e-3: where the model learns to copy the key. Stage 2 is configs/passkey_fot.py.

    python train.py --config configs/passkey_fot_short.py --config.init_from=runs/lm_fot
"""

import os
import runpy

import ml_collections


def short_prompts(config: ml_collections.ConfigDict, workdir: str, init_from: str) -> ml_collections.ConfigDict:
    """A passkey stage-2 config turned into its stage 1: prompts of 48-128 tokens, 500 steps, peak LR 2e-3."""
    config.workdir, config.init_from = workdir, init_from
    config.data.passkey.min_tokens = 48
    config.data.passkey.max_tokens = 128
    config.train.steps = 500
    config.train.learning_rate = 2e-3
    config.train.save_every = 100
    return config


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "passkey_fot.py"))["get_config"]()
    return short_prompts(config, "runs/passkey_fot_short", "runs/lm_fot")
