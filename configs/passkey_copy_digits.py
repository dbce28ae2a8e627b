"""Stage 1c of passkey tuning: copy drills with a number among the words (`data.passkey.drill_numbers=1`), 400
steps from runs/passkey_copy_more. After stages 1a-1b the model copied a line of words (0.05 nats on the repeated
line of held-out drills) but not a key's digits: stage 2 from there left the key's digits at chance (2.31 nats
after 400 steps; a uniform digit is 2.30). Digits are rare in the demo text, so their tokens are barely told apart.
Stage 2 is configs/passkey_fot.py.

    python train.py --config configs/passkey_copy_digits.py
"""

import os
import runpy

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "passkey_copy_more.py"))["get_config"]()
    config.workdir, config.init_from = "runs/passkey_copy_digits", "runs/passkey_copy_more"
    config.data.passkey.drill_numbers = 1
    config.train.steps = 400
    return config
