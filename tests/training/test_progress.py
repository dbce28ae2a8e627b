"""Progress lines and the ETA (compilation left out, a mean that settles), the summary line, warmup clamping."""

import io
import itertools

import pytest

from focused.training.optimizer import TrainConfig, learning_rate_schedule
from focused.training.progress import Progress, duration, summary


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_eta_leaves_out_the_first_step_and_settles():
    clock, out = Clock(), io.StringIO()
    progress = Progress(0, 100, interactive=False, interval=0.0, clock=clock, out=out)
    clock.now = 30.0  # step 1 compiles
    progress.advance(1, {"loss": 5.0, "accuracy": 0.1, "tokens_per_s": 100.0})
    assert progress.eta(1) is None
    etas = []
    for step in range(2, 51):
        clock.now += 0.5 if step % 10 else 5.5  # every tenth step is slow (an eval, a checkpoint)
        progress.advance(step, {"loss": 4.0, "accuracy": 0.2})
        etas.append(progress.eta(step))
    per_step = (clock.now - 30.0) / 49
    assert etas[-1] == pytest.approx(50 * per_step)  # the mean since step 1, not the 30 s compile
    # a slow step moves the estimate by a fraction (an EMA of recent steps would multiply it by ~4)
    later = etas[20:]  # from step 22 on
    assert all(abs(b - a) <= 0.3 * a for a, b in itertools.pairwise(later))
    lines = out.getvalue().splitlines()
    assert lines[0] == "step 1/100: loss 5.000, acc 0.100, 100 tok/s, eta ?"
    assert lines[-1].startswith("step 50/100: loss 4.000, acc 0.200, eta ")


def test_plain_lines_are_throttled_but_the_last_step_is_always_shown():
    clock, out = Clock(), io.StringIO()
    progress = Progress(0, 20, interactive=False, interval=10.0, clock=clock, out=out)
    for step in range(1, 21):
        clock.now += 1.0
        progress.advance(step, {"loss": 1.0})
    shown = [line.split(":")[0] for line in out.getvalue().splitlines()]
    assert shown == ["step 1/20", "step 11/20", "step 20/20"]


def test_duration_and_summary_line():
    assert [duration(s) for s in (4.4, 187, 7500)] == ["4s", "3m07s", "2h05m"]
    line = summary(
        step=300,
        total=300,
        seconds=780,
        metrics={"loss": 3.21, "accuracy": 0.4},
        workdir="runs/tiny",
        checkpoint="/abs/runs/tiny/checkpoints/300",
        trained=True,
    )
    assert "\n" not in line
    assert line.startswith("done: step 300/300 in 13m00s; loss 3.2100, accuracy 0.4000; checkpoint /abs/runs/tiny/")
    assert "python eval.py --config configs/eval_perplexity.py --config.checkpoints=\"('runs/tiny',)\"" in line
    assert "python -m focused.convert export --checkpoint runs/tiny --out hf/tiny" in line


def test_warmup_longer_than_the_run_is_clamped_with_a_warning():
    cfg = TrainConfig(steps=20, warmup_steps=30, learning_rate=1e-3, schedule="constant")
    assert cfg.effective_warmup_steps == 20
    (warning,) = cfg.warnings()
    assert "config.train.warmup_steps=30 exceeds config.train.steps=20" in warning
    schedule = learning_rate_schedule(cfg)
    assert float(schedule(10)) == pytest.approx(5e-4) and float(schedule(20)) == pytest.approx(1e-3)
    assert TrainConfig(steps=20, warmup_steps=5).warnings() == []
    with pytest.raises(ValueError, match="config.train.warmup_steps must be >= 0, got -1"):
        TrainConfig(steps=20, warmup_steps=-1)


@pytest.mark.parametrize(
    ("field", "value"), [("learning_rate", float("nan")), ("learning_rate", float("inf")), ("weight_decay", -1.0)]
)
def test_non_finite_or_negative_optimizer_numbers_are_refused(field, value):
    with pytest.raises(ValueError, match=f"config.train.{field}=.* must be a finite number >= 0"):
        TrainConfig(**{field: value})
