"""LongLLaMA-3B: OpenLLaMA-3B continued-pretrained with FoT (DESIGN §2, §4).

Model numbers are exact (3.43B parameters, head dim 100, memory layers 6/12/18); the recipe is the paper's:
CrossBatch k = 4, r = 3 with stepping, W = 2048, 128 x 2048 tokens per step, constant LR 2e-5, weight decay 0.01,
AdamW (0.9, 0.95), clip 1.0, bf16 compute with fp32 parameters, remat; ~10B tokens. It needs the OpenLLaMA-3B
weights (a Hugging Face folder) and a corpus:

    python train.py --config configs/longllama_3b.py \
        --config.init_from=/path/to/open_llama_3b --config.data.tokenizer=/path/to/open_llama_3b \
        --config.data.source.path='/path/to/corpus/*.jsonl'
"""

import ml_collections

from focused.config import section
from focused.data import DataSourceConfig
from focused.model.config import LlamaConfig
from focused.training.fot import FotConfig
from focused.training.optimizer import TrainConfig
from focused.training.sharding import MeshConfig, sharding_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.workdir = "runs/longllama_3b"
    config.seed = 0
    config.init_from = "open_llama_3b"  # the OpenLLaMA-3B Hugging Face folder (download it there or override)
    config.export_dir = ""
    config.dry_run = False  # True: build the model abstractly, print parameters, memory per device, sharding plan
    config.dry_run_devices = 0  # plan for this many devices (0 = this machine's)
    config.model = section(
        LlamaConfig(
            vocab_size=32000,
            hidden_size=3200,
            intermediate_size=8640,
            num_hidden_layers=26,
            num_attention_heads=32,
            max_position_embeddings=2048,
            rope_theta=10000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            mem_layers=(6, 12, 18),
            mem_dtype="bfloat16",
            mem_positionals=True,
            last_context_length=1024,
            param_dtype="float32",
            dtype="bfloat16",
            remat=True,
        )
    )
    config.data = ml_collections.ConfigDict()
    config.data.tokenizer = "open_llama_3b"  # the OpenLLaMA tokenizer folder (tokenizer.model)
    config.data.source = section(DataSourceConfig(path="focused:demo", streaming=True))
    config.data.source.path = ""  # required: hub name or local files
    config.data.eval_source = section(DataSourceConfig(path="focused:demo"))
    config.data.eval_source.path = ""  # held-out documents for config.train.eval_every
    config.data.batch_size = 128  # 128 rows x 2048 tokens = 256K tokens per step
    config.data.k = 4  # doc_aware_k4: 4 consecutive windows of one document per group of rows
    config.data.seed = 0
    config.train = section(
        TrainConfig(
            steps=38_000,  # ~10B tokens at 256K tokens per step
            learning_rate=2e-5,
            warmup_steps=0,
            schedule="constant",
            min_lr_ratio=1.0,
            b1=0.9,
            b2=0.95,
            weight_decay=0.01,
            grad_clip=1.0,
            save_every=500,
        )
    )
    config.fot = section(FotConfig(cross_batch_range=3, cross_batch_stepping=True))
    config.sharding = sharding_config(
        MeshConfig(data=1, fsdp=-1, tensor=1)
    )  # mesh axes (data, fsdp, tensor), -1 = fill; logical rules
    return config
