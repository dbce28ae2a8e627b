"""Run one command as N cooperating JAX processes on this machine (`jax.distributed` over localhost, CPU devices).

    python -m focused.launch --processes 2 --devices-per-process 4 -- train.py --config configs/tiny_fot.py \\
        --config.sharding.mesh.data=2 --config.sharding.mesh.fsdp=4

starts 2 processes of `python train.py ...`, each with 4 CPU devices (8 devices in all, one global mesh). Each
child gets the environment `focused.training.sharding.maybe_initialize_distributed` reads:

    JAX_COORDINATOR_ADDRESS=127.0.0.1:<free port>   the coordinator runs inside process 0
    JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i           i = 0 .. N-1
    JAX_PLATFORMS=cpu, JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo (cross-process collectives on CPU)
    XLA_FLAGS=--xla_force_host_platform_device_count=D (appended to any XLA_FLAGS already set)

Every line a child prints comes out prefixed `[p<i>] ` (stdout to stdout, stderr to stderr; gloo's
`[Gloo] Rank i is connected to j peer ranks` lines are dropped). A command after
`--` that ends in `.py` runs with this Python; anything else runs as given.

Failure: when a child exits with an error or is killed while others still run, the launcher prints one line
`error: process <i> (pid <pid>) <how it ended>; stopped the other processes ...` on stderr, kills the rest
(they cannot finish a collective without it) and exits with status 1 (or the child's own status). SIGINT /
SIGTERM to the launcher are passed on once, as SIGTERM, so that all processes save a checkpoint together and
exit 143; a second signal kills them. Rerunning the same command resumes from the last complete checkpoint.

On a real cluster do not use this launcher: run the same `python train.py ...` once per host with the cluster's
environment (SLURM, Open MPI, Cloud TPU pods, or the JAX_* variables above set by hand); see README
"Multi-host training".
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

NOISE = ("[Gloo] Rank ",)  # gloo's "Rank i is connected to j peer ranks" lines, one per device and mesh


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def child_env(base: dict[str, str], process_id: int, processes: int, devices: int, coordinator: str) -> dict[str, str]:
    """The environment of child `process_id`: coordinator, process count and id, CPU devices and collectives."""
    env = dict(base)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env.update(
        JAX_COORDINATOR_ADDRESS=coordinator,
        JAX_NUM_PROCESSES=str(processes),
        JAX_PROCESS_ID=str(process_id),
        JAX_PLATFORMS="cpu",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        PYTHONUNBUFFERED="1",  # lines reach the launcher as they are printed
    )
    return env


def command_line(command: Sequence[str]) -> list[str]:
    """`train.py --config ...` → `[python, train.py, --config, ...]`; other commands unchanged."""
    if not command:
        raise ValueError("no command after '--': e.g. python -m focused.launch --processes 2 -- train.py --config ...")
    return [sys.executable, *command] if command[0].endswith(".py") else list(command)


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGKILL it when the launcher dies, so no orphan waits on a collective."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _pump(stream: IO[str], prefix: str, out: IO[str], lock: threading.Lock) -> None:
    for line in iter(stream.readline, ""):
        if line.startswith(NOISE):
            continue
        with lock:
            out.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
            out.flush()
    stream.close()


def how_it_ended(code: int) -> str:
    """`exited with status 2` or `was killed by SIGKILL` for a `Popen.returncode`."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Launcher:
    """N child processes of one command, their output streams, and what happens when one of them fails."""

    def __init__(self, command: Sequence[str], processes: int, devices: int, port: int = 0):
        if processes < 1 or devices < 1:
            raise ValueError(f"--processes and --devices-per-process must be >= 1, got {processes} and {devices}")
        self.command = command_line(command)
        self.processes, self.devices = processes, devices
        self.coordinator = f"127.0.0.1:{port or free_port()}"
        self.children: list[subprocess.Popen[str]] = []
        self._lock = threading.Lock()
        self._pumps: list[threading.Thread] = []
        self._signalled = 0

    def start(self) -> None:
        for i in range(self.processes):
            env = child_env(dict(os.environ), i, self.processes, self.devices, self.coordinator)
            child = subprocess.Popen(
                self.command,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                start_new_session=True,  # a terminal's Ctrl-C reaches the launcher only; it forwards once
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
            self.children.append(child)
            for stream, out in ((child.stdout, sys.stdout), (child.stderr, sys.stderr)):
                pump = threading.Thread(target=_pump, args=(stream, f"[p{i}] ", out, self._lock), daemon=True)
                pump.start()
                self._pumps.append(pump)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signalled += 1
        for child in self.children:
            if child.poll() is None:
                with _quiet():
                    os.kill(child.pid, signal.SIGTERM if self._signalled == 1 else signal.SIGKILL)

    def kill_all(self) -> None:
        for child in self.children:
            if child.poll() is None:
                with _quiet():
                    child.kill()
        for child in self.children:
            child.wait()

    def wait(self) -> int:
        """Waits for every child; returns the exit status of the job (0 when all of them succeeded)."""
        failed: tuple[int, int] | None = None
        while True:
            codes = [c.poll() for c in self.children]
            for i, code in enumerate(codes):
                if code not in (None, 0) and failed is None:
                    failed = (i, code)
            if all(code is not None for code in codes):
                break
            if failed is not None and not self._signalled:  # a lost peer: the others would hang or fail
                i, code = failed
                running = sum(code is None for code in codes)
                self.kill_all()
                self._flush()
                print(
                    f"error: process {i} (pid {self.children[i].pid}) {how_it_ended(code)}; stopped the other "
                    f"{running} process(es) of {self.processes}: rerun the same command to resume from the last "
                    "complete checkpoint",
                    file=sys.stderr,
                    flush=True,
                )
                return code if code > 0 else 1
            time.sleep(0.1)
        self._flush()
        if failed is None:
            return 0
        i, code = failed
        if not self._signalled or code not in (130, 143):
            print(f"error: process {i} (pid {self.children[i].pid}) {how_it_ended(code)}", file=sys.stderr)
        return code if code > 0 else 1

    def _flush(self) -> None:
        for pump in self._pumps:
            pump.join(timeout=5)

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            return self.wait()
        finally:
            self.kill_all()
            for s, handler in previous.items():
                signal.signal(s, handler)


class _quiet:
    """Ignores ProcessLookupError (a child that ended meanwhile)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        return kind is not None and issubclass(kind, ProcessLookupError)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, command = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(
        prog="python -m focused.launch",
        description="Run a command as N jax.distributed processes on localhost, D CPU devices each.",
        epilog="example: python -m focused.launch --processes 2 --devices-per-process 4 -- train.py --config "
        "configs/tiny_fot.py --config.sharding.mesh.data=2 --config.sharding.mesh.fsdp=4",
    )
    parser.add_argument("--processes", "-n", type=int, default=2, help="number of processes (default 2)")
    parser.add_argument("--devices-per-process", "-d", type=int, default=1, help="CPU devices per process")
    parser.add_argument("--port", type=int, default=0, help="coordinator port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args(ours)
    try:
        launcher = Launcher(command, args.processes, args.devices_per_process, args.port)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return launcher.run()


if __name__ == "__main__":
    sys.exit(main())
