"""CrossBatch: the memory a memory layer sees during FoT training (DESIGN §4).

With document-aware k-packing, batch rows g*k … g*k+k-1 hold k consecutive windows of one document. In a memory
layer, row i attends causally to its own window (with RoPE) and fully to the raw (un-rotated) keys/values of rows
i-1 … i-c+1, where c = `contexts(i)` ≤ 1 + r (r = `cross_batch_range`). Rows of the same document are positives
(its earlier windows); rows of other documents are negatives (distractors). A row never sees rows after it, and
there is no wrap-around into the first rows. The memory is built from the layer's own keys/values, so gradients
flow through the extra keys and values; then the same `memory_attention` core as inference runs.

Stepping (`stepping=True`, LongLLaMA-3B with k = 4, r = 3): row i uses
    c(i) = min((i mod k) * ceil((r + 1) / max(k - 1, 1)) + 1,  r + 1,  i + 1)
contexts, giving (positives, negatives) = (0,0), (1,1), (2,1), (3,0) per group of four rows.

Without distractors (`distractors=False`) a row sees only the visible rows of its own group: its document's
earlier windows, up to r of them (the paper's d = 1 at any range). For tasks whose documents look alike but for
what must be recalled (passkey prompts), another document's window is no distractor but a contradiction.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from focused.memory.core import MemoryBlock, RolledMemory


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class CrossBatch:
    """Static description of the CrossBatch memory for one batch shape.

    range: r, how many previous rows a row may see (d = 1 + r contexts in the paper's notation); 0 = none.
    group: k, consecutive rows holding consecutive windows of one document.
    stepping: use the stepped number of contexts per row (see module docstring) instead of min(r + 1, i + 1).
    distractors: False = rows of other groups (other documents) are never seen; only positives remain.
    distractor_weight: w, how many keys each key of another group's row counts as in the softmax: ln w is added to
        its scores, as if the batch held w copies of every distractor (a memory w times larger, at the cost of
        one). 1 = plain CrossBatch.
    """

    range: int
    group: int = 1
    stepping: bool = False
    distractors: bool = True
    distractor_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.range < 0 or self.group < 1:
            raise ValueError(f"CrossBatch needs range >= 0 and group >= 1, got range={self.range}, group={self.group}")
        if not self.distractor_weight > 0:
            raise ValueError(f"CrossBatch distractor_weight must be > 0, got {self.distractor_weight}")

    def contexts(self, batch: int) -> np.ndarray:
        """`[batch]` int: how many contexts (own window included) each row uses."""
        i = np.arange(batch)
        full = np.minimum(self.range + 1, i + 1)
        if not self.stepping:
            return full
        step = math.ceil((self.range + 1) / max(self.group - 1, 1))
        return np.minimum((i % self.group) * step + 1, full)

    def visible(self, batch: int) -> np.ndarray:
        """`[batch, range]` bool: entry (i, j) says whether row i sees row i-1-j."""
        offsets = np.arange(1, self.range + 1)
        seen = offsets[None, :] < self.contexts(batch)[:, None]
        if not self.distractors:
            rows = np.arange(batch)[:, None]
            seen &= (rows - offsets[None, :]) // self.group == rows // self.group
        return seen

    def bias(self, batch: int) -> np.ndarray | None:
        """`[batch, range]` float32: ln(distractor_weight) where row i sees row i-1-j of another group, else 0;
        None when the weight is 1."""
        if self.distractor_weight == 1:
            return None
        rows, offsets = np.arange(batch)[:, None], np.arange(1, self.range + 1)[None, :]
        other = (rows - offsets) // self.group != rows // self.group
        return np.where(self.visible(batch) & other, np.log(self.distractor_weight), 0.0).astype(np.float32)

    def rolled(self, keys: jax.Array, values: jax.Array, key_valid: jax.Array) -> RolledMemory:
        """Every row's memory, not yet laid out: keys, values `[batch, seq, kv_heads, head_dim]` raw (un-rotated),
        key_valid `[batch, seq]` bool. The flash kernel reads it one rolled window at a time; anything else calls
        `materialize()` (the same as `memory`)."""
        batch = key_valid.shape[0]
        bias = self.bias(batch)
        visible = jnp.asarray(self.visible(batch))  # [batch, range]
        return RolledMemory(keys, values, key_valid, visible, None if bias is None else jnp.asarray(bias))

    def memory(self, keys: jax.Array, values: jax.Array, key_valid: jax.Array) -> MemoryBlock:
        """The MemoryBlock of every row from the layer's own window keys/values.

        keys, values: `[batch, seq, kv_heads, head_dim]` raw (un-rotated); key_valid: `[batch, seq]` bool.
        Returns a MemoryBlock with `[batch, range * seq, kv_heads, head_dim]` keys/values, where block j holds row
        i-1-j (rolled along the batch axis; wrapped-around rows are masked out), and mask `[batch, range * seq]`.
        """
        return self.rolled(keys, values, key_valid).materialize()


def positives_negatives(cross_batch: CrossBatch, batch: int) -> list[tuple[int, int]]:
    """For each row, (visible rows of the same k-group = same document stream, visible rows of other groups)."""
    visible = cross_batch.visible(batch)
    counts = []
    for i in range(batch):
        seen = [i - 1 - j for j in range(cross_batch.range) if visible[i, j]]
        pos = sum(int(s // cross_batch.group == i // cross_batch.group) for s in seen)
        counts.append((pos, len(seen) - pos))
    return counts
