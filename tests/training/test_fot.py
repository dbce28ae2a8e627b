"""focused.training.fot: config.fot as CrossBatch specs, and the once-only switch of the range (d curriculum)."""

import pytest

from focused.memory.crossbatch import CrossBatch
from focused.training.fot import FotConfig, RangeSchedule


def test_specs_carry_every_setting_of_config_fot():
    cfg = FotConfig.from_dict({"cross_batch_range": 7, "cross_batch_stepping": True, "cross_batch_distractors": False})
    schedule = RangeSchedule(cfg, group=8)
    assert schedule.train_spec() == CrossBatch(7, 8, stepping=True, distractors=False)
    assert schedule.eval_spec() == schedule.train_spec()
    assert RangeSchedule(FotConfig(cross_batch_range=0), group=2).train_spec() is None
    assert RangeSchedule(FotConfig(cross_batch_range=3), group=4).train_spec() == CrossBatch(3, 4)
    weighted = RangeSchedule(FotConfig(cross_batch_range=3, distractor_weight=64.0), group=2)
    assert weighted.train_spec() == CrossBatch(3, 2, distractor_weight=64.0)
    assert weighted.eval_spec() == CrossBatch(3, 2)  # eval reads memory as inference does, unweighted


def test_the_range_switches_once_by_step_or_by_accuracy():
    by_step = RangeSchedule(FotConfig(cross_batch_range=5, initial_range=1, switch_step=10), group=2)
    assert by_step.range == 1 and not by_step.observe(9, 1.0)
    assert by_step.observe(10, None) and by_step.range == 5 and not by_step.observe(11, None)
    by_accuracy = RangeSchedule(FotConfig(cross_batch_range=5, initial_range=1, switch_accuracy=0.9), group=2)
    assert not by_accuracy.observe(100, 0.89) and by_accuracy.range == 1
    assert by_accuracy.observe(101, 0.9) and by_accuracy.train_spec() == CrossBatch(5, 2)
    evaluated = RangeSchedule(FotConfig(cross_batch_range=5, initial_range=1, eval_range=1), group=2)
    assert evaluated.eval_spec() == CrossBatch(1, 2)


def test_bad_settings_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="config.fot ranges must be >= 0"):
        FotConfig(cross_batch_range=-2)
    with pytest.raises(ValueError, match="config.fot"):
        FotConfig.from_dict({"cross_batch_distractor": False})  # a typo is not silently ignored
    with pytest.raises(ValueError, match="mem_layers is empty"):
        FotConfig(cross_batch_range=1).check(has_memory_layers=False)
    with pytest.raises(ValueError, match="distractor_weight must be > 0"):
        FotConfig(cross_batch_range=1, distractor_weight=-1.0)
    with pytest.raises(ValueError, match="cross_batch_distractors=False has none"):
        FotConfig(cross_batch_range=1, cross_batch_distractors=False, distractor_weight=8.0)
