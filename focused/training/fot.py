"""FoT training settings (`config.fot`) and the schedule of the CrossBatch range (the paper's d curriculum).

`cross_batch_range` r counts the earlier batch rows a memory layer sees. How the paper's d maps onto r depends on
the packing: with k-packing the rows just before a row hold its own document's earlier windows (the paper's
C_prev), so for the dictionary task packed with k = 2 (definitions row, then queries row) paper d = r, and the
curriculum "d = 1 until 98% train accuracy, then larger" is `initial_range=1`, `switch_accuracy=0.98`,
`cross_batch_range=<larger>` (configs/dict_lookup_fot.py). With `initial_range=0` the query row could not see its
own definitions and accuracy would never reach the switch. LongLLaMA-3B uses r = 3 with stepping from the start.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from focused.config import checked_fields
from focused.memory.crossbatch import CrossBatch


@dataclasses.dataclass(frozen=True)
class FotConfig:
    """`config.fot`.

    cross_batch_range: r, earlier rows a memory layer sees (after the switch, if any); 0 = plain training.
    cross_batch_stepping: LongLLaMA's stepped number of contexts per row (DESIGN §4).
    cross_batch_distractors: False = a memory layer sees only its own document's earlier windows (no negatives).
    initial_range: r before the switch; -1 = cross_batch_range from the start (no curriculum).
    switch_step: switch to cross_batch_range at this step; -1 = not by step.
    switch_accuracy: switch once the logged train accuracy reaches this; -1 = not by accuracy.
    eval_range: r used by eval; -1 = cross_batch_range.
    distractor_weight: w, how many keys each distractor key (another document's) counts as in the train step's
        softmax (ln w added to its scores; `CrossBatch.distractor_weight`): w > 1 trains the memory layer as if its
        memory held w times as many distractors as the batch has. 1 = the paper's CrossBatch; eval always uses 1.
    """

    cross_batch_range: int = 0
    cross_batch_stepping: bool = False
    cross_batch_distractors: bool = True
    initial_range: int = -1
    switch_step: int = -1
    switch_accuracy: float = -1.0
    eval_range: int = -1
    distractor_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.cross_batch_range < 0 or self.initial_range < -1 or self.eval_range < -1:
            raise ValueError("config.fot ranges must be >= 0 (or -1 for 'same as cross_batch_range')")
        if not self.distractor_weight > 0:
            raise ValueError(f"config.fot.distractor_weight must be > 0 (1 = unweighted), got {self.distractor_weight}")
        if self.distractor_weight != 1 and not self.cross_batch_distractors:
            raise ValueError(
                "config.fot.distractor_weight weighs distractors, but config.fot.cross_batch_distractors=False has "
                "none: set the weight to 1 or enable distractors"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FotConfig:
        return cls(**checked_fields(cls, values, "config.fot"))

    def check(self, has_memory_layers: bool) -> None:
        if max(self.cross_batch_range, self.initial_range, self.eval_range) > 0 and not has_memory_layers:
            raise ValueError("config.fot asks for CrossBatch (range > 0) but config.model.mem_layers is empty")


class RangeSchedule:
    """Which CrossBatch range the train step uses now; switches once, by step or by train accuracy."""

    def __init__(self, cfg: FotConfig, group: int):
        self.cfg = cfg
        self.group = group
        self.switched = cfg.initial_range < 0

    def _spec(self, r: int, weight: float = 1.0) -> CrossBatch | None:
        if r == 0:
            return None
        cfg = self.cfg
        distractors = cfg.cross_batch_distractors
        return CrossBatch(r, self.group, cfg.cross_batch_stepping, distractors, distractor_weight=weight)

    @property
    def range(self) -> int:
        return self.cfg.cross_batch_range if self.switched else self.cfg.initial_range

    def train_spec(self) -> CrossBatch | None:
        return self._spec(self.range, self.cfg.distractor_weight)

    def eval_spec(self) -> CrossBatch | None:
        return self._spec(self.cfg.cross_batch_range if self.cfg.eval_range < 0 else self.cfg.eval_range)

    def observe(self, step: int, accuracy: float | None) -> bool:
        """Updates after `step` finished steps; returns True when the range just switched."""
        if self.switched:
            return False
        by_step = 0 <= self.cfg.switch_step <= step
        by_accuracy = accuracy is not None and 0 <= self.cfg.switch_accuracy <= accuracy
        self.switched = by_step or by_accuracy
        return self.switched
