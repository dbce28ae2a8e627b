"""A ~5M-parameter LLaMA that trains on 2 CPU cores in minutes on the shipped demo data (Moby Dick + SOTU).

    python train.py --config configs/tiny.py
    python train.py --config configs/tiny.py --config.train.steps=50 --config.workdir=runs/quick

Plain next-token training (the memory layer sees no memory); configs/tiny_fot.py adds CrossBatch.
"""

import ml_collections

from focused.config import section
from focused.data import DataSourceConfig
from focused.data.passkey import PasskeyMixConfig
from focused.model.config import LlamaConfig
from focused.training.fot import FotConfig
from focused.training.optimizer import TrainConfig
from focused.training.sharding import MeshConfig, sharding_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.workdir = "runs/tiny"
    config.seed = 0
    config.init_from = ""  # a Hugging Face folder or a focused checkpoint to start from
    config.export_dir = ""  # when set, export a Hugging Face folder (longllama format) here at the end
    config.dry_run = False  # True: build the model abstractly, print parameters, memory per device, sharding plan
    config.dry_run_devices = 0  # plan for this many devices (0 = this machine's)
    config.model = section(
        LlamaConfig(
            vocab_size=4096,  # the shipped byte-level BPE tokenizer
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            rope_theta=10000.0,
            rms_norm_eps=1e-6,
            mem_layers=(2,),
            mem_dtype="float32",
            last_context_length=128,
        )
    )
    config.data = ml_collections.ConfigDict()
    config.data.tokenizer = "focused"  # or a folder with tokenizer.json / tokenizer.model
    config.data.source = section(DataSourceConfig(path="focused:demo"))
    config.data.eval_source = section(DataSourceConfig(path="focused:demo"))
    config.data.eval_source.path = ""  # held-out documents for config.train.eval_every
    config.data.batch_size = 8
    config.data.k = 1
    config.data.seed = 0
    config.data.passkey = section(PasskeyMixConfig())  # documents > 0: passkey prompts mixed into the text
    config.data.lane_streams = False  # True: each lane reads its own documents (a process packs only its rows)
    config.data.align_documents = False  # True: each document starts a group of k windows (padding before it)
    config.train = section(TrainConfig(steps=300, learning_rate=2e-3, warmup_steps=30, save_every=100))
    config.fot = section(FotConfig(cross_batch_range=0))
    config.sharding = sharding_config(MeshConfig(data=-1))  # mesh axes (data, fsdp, tensor), -1 = fill; logical rules
    return config
