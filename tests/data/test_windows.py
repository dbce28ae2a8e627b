"""Tests for focused.data.windows: micro-batches of whole k-groups, eval windows of one long sequence."""

from __future__ import annotations

import numpy as np
import pytest

from focused.data import eval_windows, split_microbatches

PAD = 0


def grouped_batch(rows: int, window: int, k: int, seed: int) -> dict[str, np.ndarray]:
    """Rows g*k .. g*k+k-1 are k consecutive windows of one random stream per group, like the packer's batches."""
    rng = np.random.default_rng(seed)
    streams = rng.integers(3, 999, size=(rows // k, k * window + 1))
    starts = np.arange(k)[:, None] * window + np.arange(window)[None, :]
    inputs = streams[:, starts].reshape(rows, window).astype(np.int32)
    targets = streams[:, starts + 1].reshape(rows, window).astype(np.int32)
    doc_ids = np.repeat(np.arange(rows // k), k)[:, None].repeat(window, 1).astype(np.int32)
    return {"inputs": inputs, "targets": targets, "loss_mask": np.ones((rows, window), np.float32), "doc_ids": doc_ids}


def test_split_microbatches_keeps_groups_whole() -> None:
    batch = grouped_batch(16, 8, 4, seed=6)
    micro = split_microbatches(batch, accum_steps=2, k=4)
    assert micro["inputs"].shape == (2, 8, 8) and micro["loss_mask"].shape == (2, 8, 8)
    for m in range(2):
        for g in range(2):
            rows = micro["targets"][m, g * 4 : g * 4 + 3, -1], micro["inputs"][m, g * 4 + 1 : g * 4 + 4, 0]
            np.testing.assert_array_equal(*rows)  # each group's windows stay consecutive and together
            assert len(np.unique(micro["doc_ids"][m, g * 4 : g * 4 + 4])) == 1
    for key in batch:
        np.testing.assert_array_equal(micro[key].reshape(batch[key].shape), batch[key])
    assert split_microbatches(batch, accum_steps=4, k=4)["inputs"].shape == (4, 4, 8)
    with pytest.raises(ValueError, match="whole k=4 groups"):
        split_microbatches(batch, accum_steps=8, k=4)
    with pytest.raises(ValueError, match="whole k=4 groups"):
        split_microbatches(batch, accum_steps=3, k=4)
    with pytest.raises(ValueError, match="disagree"):
        split_microbatches({"a": np.zeros((4, 2)), "b": np.zeros((2, 2))}, accum_steps=2, k=1)
    with pytest.raises(ValueError, match="must be positive"):
        split_microbatches(batch, accum_steps=0, k=4)


def test_eval_windows() -> None:
    rng = np.random.default_rng(7)
    for length, window in [(100, 7), (29, 4), (2, 5), (65, 8)]:
        tokens = rng.integers(3, 999, size=length)
        out = eval_windows(tokens, window, pad_id=PAD)
        n = -(-(length - 1) // window)
        assert out["inputs"].shape == out["targets"].shape == out["loss_mask"].shape == (n, window)
        mask = out["loss_mask"].reshape(-1).astype(bool)
        assert mask.sum() == length - 1 and mask[: length - 1].all()
        np.testing.assert_array_equal(out["inputs"].reshape(-1)[:length], np.resize(tokens, n * window)[:length])
        np.testing.assert_array_equal(out["targets"].reshape(-1)[mask], tokens[1:])
        assert (out["inputs"].reshape(-1)[length:] == PAD).all()
    with pytest.raises(ValueError, match="at least 2 tokens"):
        eval_windows([5], 4)
    with pytest.raises(ValueError, match="window must be positive"):
        eval_windows([5, 6, 7], 0)
