"""Stage 2 of passkey tuning (from configs/passkey_copy.py, which starts from configs/lm_fot.py): the demo text's
train split mixed with 20000 generated passkey prompts of 48-512 tokens (<= 2 windows, so the key is often in the
window before the question: in memory) in the published format, each followed by its answer (focused.data.passkey),
and 5000 copy drills to keep copying; 600 steps of 4096 tokens, peak LR 2e-3. This is tuned on the task: the
paper's LongLLaMA-3B passkey result is zero-shot.

Every document starts a group of k = 2 windows (`data.align_documents`; padding before it is masked), and CrossBatch
runs with r = 1 and stepping: the second window of a group sees the first (its own prompt), the first sees nothing.
Why: all prompts look alike but for their keys, so a key line of another prompt in view makes the answer ambiguous.
With plain packing (several prompts per window; other lanes' prompts as CrossBatch negatives) the model learnt only
to answer with a blend of the keys in view: 0% at every length, even 100 tokens (runs of 400-600 steps, 2000 and
20000 prompts, with and without a short-prompt first stage). Aligned, but without the copy stage, 400 steps taught
it the key's first digit (the one " d" token after "key is"), never the rest (configs/passkey_copy.py says why).

The memory layer is 3 (lm_fot's is 2; memory attention adds no parameters, so any layer can read memory). With layer
2, this stage copied a key from the local window (85% exact at 200 tokens) but rarely from memory (15% at 400
tokens, 5% at 1K, 0% at 16K), and a further stage of longer prompts did not change that: the heads that copy after
the copy drills are in layer 3, which then saw only its own window. The same weights with layer 3 reading memory,
untrained for it, already answered every prompt of 450 tokens. Layers (1, 2, 3) did as well, but a memory layer below
the last one makes reading a long prompt quadratic (layer 3's keys then depend on layer 2's reads of all earlier
windows): 16K tokens took 13 s against 0.9 s with layer 3 alone (two trainings running beside), so 256K would take
about an hour a prompt here.

    python train.py --config configs/passkey_copy.py          # then passkey_copy_more.py, passkey_copy_digits.py
    python train.py --config configs/passkey_fot.py
"""

import os
import runpy

import ml_collections


def passkey_tuning(config: ml_collections.ConfigDict, workdir: str, init_from: str) -> ml_collections.ConfigDict:
    """The passkey data and budget shared with the PI baseline (configs/passkey_pi.py)."""
    config.data.passkey.documents = 20000
    config.data.passkey.min_tokens = 48
    config.data.passkey.max_tokens = 512
    config.data.passkey.seed = 0
    config.data.passkey.drills = 5000
    config.data.align_documents = True
    stage = runpy.run_path(os.path.join(os.path.dirname(__file__), "passkey_copy.py"))["stage"]
    return stage(config, workdir, init_from, 600)


def get_config() -> ml_collections.ConfigDict:
    config = runpy.run_path(os.path.join(os.path.dirname(__file__), "lm_fot.py"))["get_config"]()
    config = passkey_tuning(config, "runs/passkey_fot", "runs/passkey_copy_digits")
    config.data.batch_size = 16  # 8 groups of 2 windows of 256
    config.model.mem_layers = (3,)  # the copying (induction) heads sit in layer 3: see the docstring
    config.data.k = 2
    config.fot.cross_batch_range = 1
    config.fot.cross_batch_stepping = True
    return config
