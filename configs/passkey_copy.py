"""Stage 1 of passkey tuning (from configs/lm_fot.py): learn to copy from context on copy drills (random words written
twice on two lines, `data.passkey.drills`) mixed into the demo text's train split, plain packing, lm_fot's CrossBatch;
1000 steps of 4096 tokens at a peak LR of 2e-3. Stage 2 is configs/passkey_fot.py.

Why: the pre-trained tiny LM (configs/lm_base.py, 1200 steps) has no induction head: on a random token sequence
repeated, its loss on the repeat is no lower than on the first copy (11.9 against 11.8 nats), and passkey tuning
alone (600 steps) taught it to write the key's first digit, never the rest.

    python train.py --config configs/passkey_copy.py --config.init_from=runs/lm_fot
"""

import os
import runpy

import ml_collections


def stage(config: ml_collections.ConfigDict, workdir: str, init_from: str, steps: int) -> ml_collections.ConfigDict:
    """Where a passkey-tuning stage runs, what it starts from, and its schedule (peak LR 2e-3, warmup 30)."""
    config.workdir, config.init_from = workdir, init_from
    config.train.steps = steps
    config.train.learning_rate = 2e-3
    config.train.warmup_steps = 30
    config.train.save_every = 100
    config.train.eval_every = 0
    return config


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "lm_fot.py"))["get_config"]()
    config.data.passkey.drills = 50000
    config.data.batch_size = 16
    return stage(config, "runs/passkey_copy", "runs/lm_fot", 1000)
