"""Training progress on the console, and the one line that ends a run.

On a terminal `Progress` draws a tqdm bar on stderr; otherwise (a log file, a cluster job, a pipe) it prints one
plain line per logged step to stdout, at most one every `interval` seconds, so logs stay readable.

The ETA is (steps left) × (mean seconds per step since the first step of this invocation finished). The first
step, which includes compiling the step function, is left out, and the mean is over all later steps, so the
estimate settles instead of jumping with every slow step (an eval, a checkpoint, a recompile).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm.auto import tqdm

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def duration(seconds: float) -> str:
    """`42s`, `3m07s`, `2h05m`."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Progress of steps `start+1 … total`; call `advance(done, metrics)` after every step.

    interactive: draw a bar (default: when stderr is a terminal). interval: seconds between plain lines.
    clock: seconds, monotonic (injectable for tests). out: where plain lines and messages go (default stdout).
    """

    def __init__(
        self,
        start: int,
        total: int,
        *,
        interactive: bool | None = None,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        out: TextIO | None = None,
    ):
        self.start, self.total = start, total
        self.interval, self.clock = interval, clock
        self.out = out or sys.stdout
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._first: tuple[int, float] | None = None  # (step, time) when the first step of this invocation ended
        self._last_line = -float("inf")
        self._postfix = ""
        self._bar = None
        if self.interactive:
            self._bar = tqdm(total=total, initial=start, desc="train", unit="step", bar_format=BAR_FORMAT)

    def eta(self, done: int) -> float | None:
        """Seconds left after step `done`, or None until two steps of this invocation have finished."""
        if self._first is None or done <= self._first[0]:
            return None
        step0, t0 = self._first
        return (self.total - done) * (self.clock() - t0) / (done - step0)

    def advance(self, done: int, metrics: dict[str, float] | None = None) -> None:
        """Step `done` finished; `metrics` (loss, accuracy, tokens_per_s) when it was a logged step."""
        now = self.clock()
        if self._first is None:
            self._first = (done, now)
        eta = self.eta(done)
        if metrics is not None:
            parts = [f"loss {metrics['loss']:.3f}"]
            if "accuracy" in metrics:
                parts.append(f"acc {metrics['accuracy']:.3f}")
            if "tokens_per_s" in metrics:
                parts.append(f"{metrics['tokens_per_s']:.0f} tok/s")
            self._postfix = ", ".join(parts)
        eta_text = f"eta {duration(eta)}" if eta is not None else "eta ?"
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self._postfix}, {eta_text}" if self._postfix else eta_text, refresh=False)
            self._bar.update(done - self._bar.n)
            return
        if metrics is not None and (now - self._last_line >= self.interval or done == self.total):
            self._last_line = now
            print(f"step {done}/{self.total}: {self._postfix}, {eta_text}", file=self.out, flush=True)

    def message(self, text: str) -> None:
        """A line of information (above the bar when there is one)."""
        if self._bar is not None:
            self._bar.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def summary(
    *,
    step: int,
    total: int,
    seconds: float,
    metrics: dict[str, float],
    workdir: str,
    checkpoint: str | None,
    trained: bool,
    eval_config: str = "configs/eval_perplexity.py",
) -> str:
    """The last line of a run: what was done, where it went, and the commands that read it next."""
    head = f"done: step {step}/{total} in {duration(seconds)}" if trained else f"done: already at step {step}/{total}"
    parts = [head]
    if "loss" in metrics:
        scores = f"loss {metrics['loss']:.4f}"
        if "accuracy" in metrics:
            scores += f", accuracy {metrics['accuracy']:.4f}"
        parts.append(scores)
    parts.append(f"checkpoint {checkpoint}" if checkpoint else "no checkpoint saved")
    name = workdir.rstrip("/").split("/")[-1] or "run"
    parts.append(
        f"next: python eval.py --config {eval_config} --config.checkpoints=\"('{workdir}',)\" "
        f"--config.out_dir=out/{name}  or  python -m focused.convert export --checkpoint {workdir} --out hf/{name}"
    )
    return "; ".join(parts)
