"""configs/lm_fot.py tuned on the passkey task, stage 2 (from configs/passkey_fot_short.py): the demo text's
train split mixed with 20000 generated passkey prompts of 64-512 tokens (<= 2 windows, so the key is often in an
earlier window than the question: in memory) in the published format, each followed by its answer (about 6 of every
7 tokens; focused.data.passkey). FoT CrossBatch as in lm_fot (k = 4, r = 3, stepping), 400 steps of 2048 tokens.
This is tuned on the task: the paper's LongLLaMA-3B passkey result is zero-shot.

Measured without stage 1 (from lm_fot): with 2000 prompts and 600 steps the model had learnt that a number follows
the question, but not which one (0% even at 100 tokens, the same answer to every prompt); with 20000 prompts it
still answered every prompt alike after 400 steps. Stage 1's short prompts (the key in the local window) are where
copying the key is learnt.

    python train.py --config configs/passkey_fot_short.py
    python train.py --config configs/passkey_fot.py
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "lm_fot.py"))["get_config"]()
    config.workdir = "runs/passkey_fot"
    config.init_from = "runs/passkey_fot_short"
    config.data.passkey.documents = 20000
    config.data.passkey.min_tokens = 64
    config.data.passkey.max_tokens = 512
    config.data.passkey.seed = 0
    config.train.steps = 400
    config.train.eval_every = 0
    return config
