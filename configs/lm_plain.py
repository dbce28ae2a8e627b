"""Continued plain training of configs/lm_base.py at its own window (256 tokens), the control of the long-context
experiment: the same token budget as configs/lm_fot.py (800 steps x 8 x 256 tokens), no memory layers (the same
weights as the base model's, whose memory layer never saw memory).

    python train.py --config configs/lm_plain.py --config.init_from=runs/lm_base
"""

import os
import runpy

import ml_collections


def continuation(workdir: str) -> ml_collections.ConfigDict:
    """configs/lm_base.py continued: 800 steps of 2048 tokens from runs/lm_base, peak LR 1e-3, cosine."""
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "lm_base.py"))["get_config"]()
    config.workdir = workdir
    config.init_from = "runs/lm_base"
    config.train.steps = 800
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 40
    config.train.eval_every = 400
    return config


def get_config() -> ml_collections.ConfigDict:
    config = continuation("runs/lm_plain")
    config.model.mem_layers = ()  # a plain model: no layer reads memory, at training or evaluation
    return config
