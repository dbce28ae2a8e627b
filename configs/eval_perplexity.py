"""Perplexity vs memory size (DESIGN §6) of one or more checkpoints, on long documents: each document alone
(single) and interleaved with other documents (distractors). See focused/evals/perplexity.py for the protocol.

    python eval.py --config configs/eval_perplexity.py \
        --config.checkpoints="('runs/tiny_fot','runs/tiny')" --config.out_dir=out/ppl
    python eval.py --config configs/eval_perplexity.py --config.source.path=pg19 --config.source.split=test \
        --config.checkpoints="('/path/long_llama_3b',)" --config.out_dir=out/ppl_pg19

The shipped demo data, held-out split (never trained on by the shipped configs): focused:demo split test is the end
of Moby Dick (chapters 116-135 and the epilogue, ~47K tokens) and the 5 State of the Union addresses of 1845-1849
(10-29K tokens each): enough long documents for the distractor setting with the tiny models' 256-token windows.
Another source needs its own split: a local file has only `train` (--config.source.split=train).
"""

import ml_collections

from focused.config import section
from focused.data import DataSourceConfig
from focused.evals.perplexity import PerplexityConfig
from focused.memory.backends import MemoryConfig


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.eval = "perplexity"
    config.checkpoints = ("runs/tiny_fot",)  # run dirs, step dirs, saved models or Hugging Face folders
    config.labels = ()  # names in the table and plot (default: folder names)
    config.tokenizer = "auto"  # the checkpoint folder's tokenizer if it has one, else the shipped one; or a path
    config.out_dir = "out/perplexity"
    config.overwrite = False
    config.progress = True
    # backend dense / topk / faiss; the capacity comes from memory_windows (leave it 0)
    config.memory = section(MemoryConfig())
    config.source = section(DataSourceConfig(path="focused:demo", split="test"))
    config.perplexity = section(
        PerplexityConfig(
            memory_windows=(0, 1, 2, 4, 8, 16, 32),
            score_windows=2,
            num_documents=4,
            settings=("single", "distractors"),
            distractors=3,
        )
    )
    return config
