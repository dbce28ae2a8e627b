"""Passkey retrieval (DESIGN §6) of one or more checkpoints: accuracy vs prompt length in tokens.

    python eval.py --config configs/eval_passkey.py \
        --config.checkpoints="('runs/tiny_fot','runs/tiny_pi')" --config.out_dir=out/passkey
    python eval.py --config configs/eval_passkey.py --config.checkpoints="('/path/long_llama_3b',)" \
        --config.passkey.lengths="(2048,4096,8192,16384,32768,65536,131072,262144)" --config.out_dir=out/ll3b

Writes results.json, results.md and plot.png into out_dir (refusing existing results unless overwrite=True).
"""

import ml_collections

from focused.config import section
from focused.evals.passkey import PasskeyConfig
from focused.memory.backends import MemoryConfig


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.eval = "passkey"
    config.checkpoints = ("runs/tiny_fot",)  # run dirs, step dirs, saved models or Hugging Face folders
    config.labels = ()  # names in the table and plot (default: folder names)
    config.tokenizer = "auto"  # the checkpoint folder's tokenizer if it has one, else the shipped one; or a path
    config.out_dir = "out/passkey"
    config.overwrite = False
    config.progress = True
    # dense memory; capacity 0 = as much as each prompt needs, else a prompt needing more is an error
    config.memory = section(MemoryConfig())
    config.passkey = section(PasskeyConfig(lengths=(512, 1024, 2048, 4096, 8192), trials=10, seed=0))
    return config
