"""Stage 1b of passkey tuning: a second round of configs/passkey_copy.py's copy drills (1000 more steps with a fresh
warmup and cosine decay) from runs/passkey_copy. Copying left its plateau only around step 800 of the first round,
when the learning rate had mostly decayed (loss on the repeated line of held-out drills 7.50 nats at step 400,
6.96 at step 800, against 7.73 on the first line). Stage 2 is configs/passkey_fot.py.

    python train.py --config configs/passkey_copy_more.py
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "passkey_copy.py"))["get_config"]()
    config.workdir, config.init_from = "runs/passkey_copy_more", "runs/passkey_copy"
    return config
