"""Noticing a lost process in a multi-process (`jax.distributed`) job, and ending the others with one line.

When one process of a job dies (kill -9, OOM, a lost host), the others are blocked in, or soon enter, a
collective that can never complete. Two things end them within a bounded time:

* a collective that fails (gloo on CPU sees `Connection reset by peer`) raises in the training loop; `train`
  then asks `PeerWatchdog.lost()` which peers stopped beating and exits with one line naming them;
* a collective that just waits (a host gone without closing its sockets) is ended by the watchdog thread: a peer
  whose heartbeat has not advanced for `timeout` seconds (or a coordinator that no longer answers) makes it
  print one line and `os._exit(2)`.

Heartbeats are counters in the `jax.distributed` key-value store (`focused/alive/<process>`), one update per
`interval` seconds from a daemon thread; a process that ends normally first sets `focused/done/<process>` so
that the others do not take its silence for a failure. `os._exit` is used on purpose: the normal interpreter exit
would wait in `jax.distributed.shutdown`'s barrier for the lost process until JAX's own heartbeat timeout.

    FOCUSED_PEER_TIMEOUT_S   seconds without a heartbeat before a peer counts as lost (default 30)
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import jax

from focused.training.errors import TrainingError, describe

DEFAULT_TIMEOUT_S = 30.0
EXIT_LOST = 2


def timeout_from_env(default: float = DEFAULT_TIMEOUT_S) -> float:
    text = os.environ.get("FOCUSED_PEER_TIMEOUT_S", "").strip()
    try:
        return float(text) if text else default
    except ValueError:
        return default


def lost_message(me: int, count: int, lost: list[int], why: str) -> str:
    """The one line a surviving process prints: which process was lost, and what to do."""
    names = ", ".join(f"process {p}" + (" (the coordinator)" if p == 0 else "") for p in lost) or "another process"
    return (
        f"error: lost {names} of {count} ({why}); process {me} stops too: rerun the same command (all processes) to "
        "resume from the last complete checkpoint"
    )


def _die(message: str) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os.write(2, (message + "\n").encode())
    os._exit(EXIT_LOST)


class PeerWatchdog:
    """Heartbeats of every process of the job through the jax.distributed key-value store (see the module doc).

    client: `jax._src.distributed.global_state.client` (anything with key_value_set / key_value_try_get).
    """

    def __init__(
        self,
        client: Any,
        process_id: int,
        num_processes: int,
        *,
        interval: float = 1.0,
        timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_lost: Callable[[str], None] = _die,
    ):
        self.client, self.me, self.count = client, process_id, num_processes
        self.interval = interval
        self.timeout = timeout_from_env() if timeout is None else timeout
        self.clock, self.on_lost = clock, on_lost
        self._beats = 0
        now = clock()
        self._seen: dict[int, tuple[str | None, float]] = {p: (None, now) for p in self.peers}
        self._kv_ok = now  # when the key-value store last answered
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def peers(self) -> list[int]:
        return [p for p in range(self.count) if p != self.me]

    def _get(self, key: str) -> str | None:
        try:
            return self.client.key_value_try_get(key)
        except Exception as error:  # NOT_FOUND: not set yet; anything else is re-raised as unreachable
            if "not found" in str(error).lower() or "not_found" in str(error).lower():
                return None
            raise

    def poll(self) -> list[int]:
        """One heartbeat and one look at the peers; returns the peers silent for longer than `timeout`.
        A coordinator (process 0) that stopped answering counts as lost after `timeout` too."""
        now = self.clock()
        with self._lock:
            try:
                self._beats += 1
                self.client.key_value_set(f"focused/alive/{self.me}", str(self._beats), allow_overwrite=True)
                for peer in self.peers:
                    if self._get(f"focused/done/{peer}") is not None:
                        self._seen[peer] = ("done", now)
                        continue
                    value = self._get(f"focused/alive/{peer}")
                    if value != self._seen[peer][0]:
                        self._seen[peer] = (value, now)
                self._kv_ok = now
            except Exception:
                if self.me != 0 and now - self._kv_ok > self.timeout:
                    return [0]
                return []
            return [p for p, (value, at) in self._seen.items() if value != "done" and now - at > self.timeout]

    def lost(self, within: float | None = None) -> list[int]:
        """After a failed collective: the peers whose heartbeat does not advance within `within` seconds
        (default 3 intervals + 2 s); process 0 when the coordinator does not answer."""
        within = 3 * self.interval + 2.0 if within is None else within
        start = self.clock()
        try:
            before = {p: self._get(f"focused/alive/{p}") for p in self.peers}
        except Exception:
            return [0] if self.me != 0 else []
        while True:
            time.sleep(self.interval)
            try:
                done = {p for p in self.peers if self._get(f"focused/done/{p}") is not None}
                now = {p: self._get(f"focused/alive/{p}") for p in self.peers}
            except Exception:
                return [0] if self.me != 0 else []
            silent = [p for p in self.peers if p not in done and now[p] == before[p]]
            if not silent or self.clock() - start >= within:
                return silent

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            lost = self.poll()
            if lost and not self._stop.is_set():
                why = f"no heartbeat for {self.timeout:.0f} s"
                self.on_lost(lost_message(self.me, self.count, lost, why))
                return

    def start(self) -> PeerWatchdog:
        self.poll()
        self._thread = threading.Thread(target=self._run, name="focused-peer-watchdog", daemon=True)
        self._thread.start()
        return self

    def finish(self) -> None:
        """Marks this process as done (its silence is no failure) and stops the thread."""
        self._stop.set()
        with self._lock, contextlib.suppress(Exception):
            self.client.key_value_set(f"focused/done/{self.me}", "1", allow_overwrite=True)
        if self._thread is not None:
            self._thread.join(timeout=2 * self.interval + 1)

    def stop(self) -> None:
        """Stops the thread without marking done (on the way to a failure exit)."""
        self._stop.set()


_active: PeerWatchdog | None = None


def start_watchdog() -> PeerWatchdog | None:
    """Starts the watchdog of this process when jax.distributed runs with several processes (else None)."""
    global _active
    import jax
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None or jax.process_count() < 2:
        return None
    if _active is None:
        _active = PeerWatchdog(client, jax.process_index(), jax.process_count()).start()
    return _active


def active() -> PeerWatchdog | None:
    return _active


def fail(message: str) -> None:
    """Ends this process of a multi-process job at once with one line (`error: ...`) and status 2."""
    if _active is not None:
        _active.stop()
    _die(message if message.startswith("error: ") else "error: " + message)


def fail_job(watchdog: PeerWatchdog, error: BaseException) -> None:
    """Ends this process of a multi-process job after `error`: one line naming the lost process when a collective
    failed because a peer is gone, else the error itself prefixed with this process's index."""
    me, count = jax.process_index(), jax.process_count()
    if isinstance(error, TrainingError | ValueError | FileNotFoundError | FileExistsError | NotADirectoryError):
        fail(f"error: process {me} of {count}: " + " ".join(str(error).split()))
    lost = watchdog.lost()
    if lost:
        fail(lost_message(me, count, lost, describe(error, 160)))
    fail(f"error: process {me} of {count}: {type(error).__name__}: {describe(error)}")
