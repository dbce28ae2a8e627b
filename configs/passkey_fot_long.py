"""Stage 3 of FoT passkey tuning: configs/passkey_fot.py's data with prompts of 256-512 tokens only (two windows:
the key is in memory for about half of them), new prompts (seed 1), 600 steps from runs/passkey_fot. After stage 2
the model copied a key from its local window (85% at 200 tokens) but rarely from memory (15% at 400 tokens, 5% at
1K, seeds 5000..): only about a fifth of stage 2's prompts put the key in the window before the question.

    python train.py --config configs/passkey_fot_long.py
"""

import os
import runpy

import ml_collections


def longer_prompts(config: ml_collections.ConfigDict, workdir: str, init_from: str) -> ml_collections.ConfigDict:
    """Stage 3 from a stage 2 config (shared with the PI baseline)."""
    config.workdir, config.init_from = workdir, init_from
    config.data.passkey.min_tokens = 256
    config.data.passkey.seed = 1
    return config


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "passkey_fot.py"))["get_config"]()
    return longer_prompts(config, "runs/passkey_fot_long", "runs/passkey_fot")
