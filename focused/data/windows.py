"""Batches as arrays of windows: a training batch split into micro-batches of whole k-groups, and one long token
sequence cut into consecutive windows for window-by-window evaluation. Pure numpy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Batch = dict[str, np.ndarray]


def split_microbatches(batch: Batch, accum_steps: int, k: int) -> Batch:
    """Split a batch along rows into ``accum_steps`` micro-batches without splitting a k-group.

    Args:
        batch: arrays ``[B, ...]``.
        accum_steps: number of micro-batches; ``B / accum_steps`` must be a multiple of ``k``.
        k: rows per document group.

    Returns:
        The same keys with arrays ``[accum_steps, B / accum_steps, ...]``; micro-batch ``m`` holds rows
        ``m*B/accum_steps … (m+1)*B/accum_steps - 1`` (whole groups, in order).
    """
    if accum_steps < 1 or k < 1:
        raise ValueError(f"accum_steps={accum_steps} and k={k} must be positive")
    rows = {len(v) for v in batch.values()}
    if len(rows) != 1:
        raise ValueError(f"batch arrays disagree on the number of rows: {sorted(rows)}")
    (b,) = rows
    if b % accum_steps or (b // accum_steps) % k:
        raise ValueError(
            f"cannot split {b} rows into {accum_steps} micro-batches of whole k={k} groups: "
            f"batch_size / accum_steps must be a multiple of k"
        )
    return {key: v.reshape(accum_steps, b // accum_steps, *v.shape[1:]) for key, v in batch.items()}


def eval_windows(tokens: Sequence[int] | np.ndarray, window: int, pad_id: int = 0) -> Batch:
    """Cut one long token sequence ``[L]`` into consecutive windows for window-by-window evaluation.

    Window ``j`` has inputs ``tokens[jW : (j+1)W]`` and targets ``tokens[jW+1 : (j+1)W+1]``; the last window is
    padded with ``pad_id``. There are ``N = ceil((L - 1) / W)`` windows, so each of the ``L - 1`` targets is
    counted once.

    Returns:
        ``inputs`` int32 ``[N, W]``, ``targets`` int32 ``[N, W]``, ``loss_mask`` float32 ``[N, W]``.
    """
    seq = np.asarray(tokens)
    if seq.ndim != 1 or len(seq) < 2:
        raise ValueError(f"eval_windows needs a 1-D sequence of at least 2 tokens, got shape {seq.shape}")
    if window < 1:
        raise ValueError(f"window must be positive, got {window}")
    n = -(-(len(seq) - 1) // window)
    padded = np.full((n * window + 1,), pad_id, np.int32)
    padded[: len(seq)] = seq
    valid = np.arange(n * window + 1) < len(seq)
    starts = np.arange(n)[:, None] * window + np.arange(window)[None, :]
    return {
        "inputs": padded[starts],
        "targets": padded[starts + 1],
        "loss_mask": valid[starts + 1].astype(np.float32),
    }
