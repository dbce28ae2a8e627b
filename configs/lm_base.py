"""Base language model of the long-context experiment (experiments/long_context.py): a small LLaMA (2.4M
parameters: hidden 192, 4 layers, 4 heads of 48 over 2 kv heads, tied embeddings, window 256, the shipped
4096-token tokenizer; 4.8 MB in bfloat16, so that the six models of the experiment ship in the repository),
pre-trained from scratch on the demo text's train split (Moby Dick to chapter 115 + the State of the Union
addresses before 1845; the held-out test split is only evaluated on).

    python train.py --config configs/lm_base.py

The four continuations (configs/lm_fot.py, lm_plain.py, lm_pi.py, lm_yarn.py) start from it with the same token
budget. Plain next-token training: the memory layer (2) sees no memory here.
"""

import os
import runpy

import ml_collections

from focused.config import section
from focused.data import DataSourceConfig
from focused.training.optimizer import TrainConfig


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "tiny.py"))["get_config"]()
    config.workdir = "runs/lm_base"
    config.model.hidden_size = 192
    config.model.intermediate_size = 512
    config.model.tie_word_embeddings = True
    config.data.source = section(DataSourceConfig(path="focused:demo", split="train"))
    config.data.eval_source = section(DataSourceConfig(path="focused:demo", split="test"))
    config.train = section(
        TrainConfig(steps=1200, learning_rate=2e-3, warmup_steps=60, save_every=200, eval_every=300, eval_batches=8)
    )
    return config
