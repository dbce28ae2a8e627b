"""The held-out documents of the long-context experiment never reach its training batches: a whole epoch of
configs/lm_base.py's (and the passkey tuning's) data pipeline, checked span by span against the test split."""

from pathlib import Path

import numpy as np
import pytest

from focused.config import load_config
from focused.data import DataSourceConfig, load_documents, load_tokenizer
from focused.training.setup import build_data

ROOT = Path(__file__).resolve().parents[2]
SPAN = 24  # tokens: long enough that two different passages never share one by chance


def spans_of(tokens: np.ndarray) -> set[bytes]:
    """Every run of SPAN consecutive tokens `[n]` as bytes."""
    windows = np.lib.stride_tricks.sliding_window_view(tokens.astype(np.int32), SPAN)
    return {row.tobytes() for row in windows}


def sample_spans(texts, tok, rng, per_document: int) -> list[bytes]:
    out = []
    for text in texts:
        ids = np.asarray(tok.encode(text), np.int32)
        for start in rng.integers(0, len(ids) - SPAN, size=per_document):
            out.append(ids[start : start + SPAN].tobytes())
    return out


@pytest.mark.parametrize(
    "config_file, overrides",
    # the passkey tuning's mixture with 500 instead of 20000 prompts, so that 1300 batches make an epoch
    [("lm_base.py", []), ("passkey_fot.py", ["--config.data.passkey.documents=500"])],
)
def test_an_epoch_of_training_batches_holds_no_held_out_text(config_file, overrides):
    config = load_config(["train.py", "--config", str(ROOT / "configs" / config_file), *overrides])
    assert config.data.source.split == "train" and config.data.eval_source.split == "test"
    data = build_data(config)
    # 1300 batches of 8 x 256: each lane reads 333K tokens, so even the lane holding the book's training part
    # (311K tokens) gets through it, and every training document has been drawn at least once
    seen = set()
    for _ in range(1300):
        for row in next(data)["inputs"]:
            seen |= spans_of(row)
    tok = load_tokenizer(config.data.tokenizer)
    rng = np.random.default_rng(0)
    held = load_documents(DataSourceConfig(path="focused:demo", split="test"))
    train = load_documents(DataSourceConfig(path="focused:demo", split="train"))
    assert len(held) == 6 and data.epoch >= 1
    # a few passages are repeated word for word between addresses of different years (e.g. 1837 and 1846):
    # only spans that no training document contains are held-out text
    in_train = set().union(*(spans_of(np.asarray(tok.encode(text))) for text in train))
    own = [s for s in sample_spans(held, tok, rng, 300) if s not in in_train]
    assert len(own) > 1500 and not [s for s in own if s in seen]
    # the check can fail: spans of the training documents are found (those not cut by a window boundary)
    found = [s in seen for s in sample_spans(list(train)[:5], tok, rng, 40)]
    assert np.mean(found) > 0.8
