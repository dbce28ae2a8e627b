"""A ~5M-parameter LLaMA that trains on 2 CPU cores in minutes on the shipped demo data (Moby Dick + SOTU).

python train.py --config configs/tiny.py
python train.py --config configs/tiny.py --config.train.steps=50 --config.workdir=runs/quick
"""

import ml_collections

from focused.config import model_section
from focused.model.config import LlamaConfig


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.workdir = "runs/tiny"
    config.seed = 0
    config.init_from = ""  # a Hugging Face folder or a focused checkpoint to start from
    config.export_dir = ""  # when set, export a Hugging Face folder here at the end
    config.model = model_section(
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
    config.data.source = ml_collections.ConfigDict(
        dict(
            path="focused:demo",
            name="",
            split="train",
            data_files=ml_collections.config_dict.placeholder(str),
            text_field="text",
            text_granularity="document",
            streaming=False,
        )
    )
    config.data.batch_size = 8
    config.data.k = 1
    config.data.seed = 0
    config.train = ml_collections.ConfigDict(
        dict(
            steps=300,
            learning_rate=2e-3,
            warmup_steps=30,
            schedule="cosine",
            min_lr_ratio=0.1,
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            weight_decay=0.1,
            decay_norms_and_embeddings=False,
            grad_clip=1.0,
            accum_steps=1,
            log_every=10,
            save_every=100,
            eval_every=0,
            eval_batches=4,
            keep_checkpoints=3,
            async_checkpointing=True,
        )
    )
    return config
