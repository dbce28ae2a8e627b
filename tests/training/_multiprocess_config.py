"""A micro FoT config for the multi-process tests: CrossBatch (k = 2, r = 3, stepping) on the synthetic dictionary
task, 8 rows of 16 tokens, a 2-layer model of width 32. The mesh comes from the command line, e.g.

    python -m focused.launch -n 2 -d 4 -- train.py --config tests/training/_multiprocess_config.py \\
        --config.sharding.mesh.data=2 --config.sharding.mesh.fsdp=4 --config.workdir=/tmp/mp
"""

import ml_collections

from focused.config import section
from focused.data import DataSourceConfig
from focused.data.synthetic import DictionaryTaskConfig
from focused.model.config import LlamaConfig
from focused.training.fot import FotConfig
from focused.training.optimizer import TrainConfig
from focused.training.sharding import MeshConfig, sharding_config


def get_config() -> ml_collections.ConfigDict:
    task = DictionaryTaskConfig(key_letters=16, key_len=1, value_letters=16, page_len=16)
    config = ml_collections.ConfigDict()
    config.workdir = "/tmp/focused_multiprocess"
    config.seed = 0
    config.init_from = ""
    config.export_dir = ""
    config.dry_run = False
    config.dry_run_devices = 0
    config.model = section(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=task.page_len,
            mem_layers=(1,),
            mem_dtype="float32",
            last_context_length=task.page_len // 2,
        )
    )
    config.data = ml_collections.ConfigDict()
    config.data.tokenizer = ""
    config.data.source = section(DataSourceConfig(path="synthetic:dictionary"))
    config.data.eval_source = section(DataSourceConfig(path="synthetic:dictionary", split="validation"))
    config.data.eval_source.path = ""
    config.data.synthetic = section(task)
    config.data.batch_size = 8
    config.data.k = 2
    config.data.seed = 0
    config.train = section(
        TrainConfig(
            steps=3,
            learning_rate=1e-2,
            warmup_steps=0,
            schedule="constant",
            log_every=1,
            save_every=0,
            async_checkpointing=False,
        )
    )
    config.fot = section(FotConfig(cross_batch_range=3, cross_batch_stepping=True))
    config.sharding = sharding_config(MeshConfig(data=-1))
    return config
