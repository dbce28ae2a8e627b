"""Stopping a training run cleanly on SIGINT (Ctrl-C) and SIGTERM (how clusters and schedulers stop jobs).

    with StopSignals() as stop:
        for step in ...:
            if stop.received:        # the signal number, once one arrived
                break                # the loop saves a checkpoint at the current step and raises TrainingInterrupted
            ...

The first signal only sets `received`; the step in flight finishes, a checkpoint is saved, and the command exits
with status 128 + signal number: 130 for SIGINT, 143 for SIGTERM (the shell's convention). A second signal while
that happens stops at once (KeyboardInterrupt), without saving. Outside the main thread (where Python cannot
install handlers) the context manager does nothing.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

import jax
import numpy as np

from focused.training.errors import TrainingInterrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Turns SIGINT / SIGTERM into a flag (`received`) for the duration of a `with` block."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt  # a second signal: stop now
        self.received = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    @property
    def exit_code(self) -> int:
        """128 + the signal number (130 for SIGINT, 143 for SIGTERM); 0 when no signal arrived."""
        return 128 + self.received if self.received is not None else 0

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def stop_agreed(stop: StopSignals) -> bool:
    """Whether to stop before the next step. With several processes all of them must decide alike (one that
    stops while another runs the next step would wait forever in a collective), so the flags are all-gathered
    (one tiny collective per step); a process that got no signal itself stops as if it got SIGTERM."""
    if jax.process_count() == 1:
        return stop.received is not None
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(stop.received or 0))  # decide from these alone
    if not np.any(flags):
        return False
    if stop.received is None:
        stop.received = int(np.max(flags))
    return True


def interrupted(stop: StopSignals, done: int, start: int, save: Any, ckpts: Any) -> TrainingInterrupted:
    """Saves the current step (when a step ran) and builds the exception that ends the command."""
    if done == start:
        where = f"; checkpoint step {start} is in {ckpts.path(start)}" if ckpts.last_saved is not None else ""
        return TrainingInterrupted(
            f"interrupted by {stop.name} at step {start} before a step ran, nothing new to save{where}; rerun the "
            "same command to resume",
            stop.exit_code,
        )
    save(done)
    ckpts.finish()
    return TrainingInterrupted(
        f"interrupted by {stop.name} at step {done}, checkpoint saved in {ckpts.path(done)}; rerun the same command "
        "to resume",
        stop.exit_code,
    )
