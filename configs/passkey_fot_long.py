"""Stage 3 of FoT passkey tuning: configs/passkey_fot.py's mixture with prompts of 256-2048 tokens (up to 8 windows:
the key is in memory for nearly all of them, behind up to 7 windows of filler), new prompts (seed 1), 600 steps from
runs/passkey_fot.

Why: after stage 2 (prompts of at most 2 windows) the model copied a key from one window of memory (100%
teacher-forced at 450 tokens) but lost the key's first token among more filler (first-token loss 1.55 nats at 1K
tokens, 4.89 at 4K; the later digits stay at 0.2): one window of memory never asked it to pick the key line out of
many filler sentences. Here every row of a group of k = 8 windows sees all earlier windows of its own prompt
(r = 7) and nothing of other prompts (`cross_batch_distractors=False`: another prompt's key line would contradict
its own, see configs/passkey_fot.py).

    python train.py --config configs/passkey_fot_long.py
"""

import os
import runpy

import ml_collections


def longer_prompts(config: ml_collections.ConfigDict, workdir: str, init_from: str) -> ml_collections.ConfigDict:
    """Stage 3 from a stage 2 config (shared with the PI baseline)."""
    config.workdir, config.init_from = workdir, init_from
    config.data.passkey.min_tokens = 256
    config.data.passkey.max_tokens = 2048
    config.data.passkey.seed = 1
    return config


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "passkey_fot.py"))["get_config"]()
    config = longer_prompts(config, "runs/passkey_fot_long", "runs/passkey_fot")
    config.data.k = 8  # 2 groups of 8 windows of 256 per step
    config.fot.cross_batch_range = 7
    config.fot.cross_batch_stepping = False
    config.fot.cross_batch_distractors = False
    return config
