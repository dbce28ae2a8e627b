"""configs/lm_fot.py tuned on the passkey task: the demo text's train split mixed with 20000 generated passkey
prompts of 64-512 tokens (<= 2 windows) in the published format, each followed by its answer (about 6 of every 7
tokens; focused.data.passkey). With 2000 prompts (about half of the tokens) the model had learnt after 600 steps
that a number follows the question, but not which: 0% at 512 tokens, the same answer to every prompt. FoT
CrossBatch as in lm_fot (k = 4, r = 3, stepping), 600 steps of 2048 tokens.
This is tuned on the task: the paper's LongLLaMA-3B passkey result is zero-shot.

    python train.py --config configs/passkey_fot.py --config.init_from=runs/lm_fot
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "lm_fot.py"))["get_config"]()
    config.workdir = "runs/passkey_fot"
    config.init_from = "runs/lm_fot"
    config.data.passkey.documents = 20000
    config.data.passkey.min_tokens = 64
    config.data.passkey.max_tokens = 512
    config.data.passkey.seed = 0
    config.train.steps = 600
    config.train.eval_every = 0
    return config
