"""A training run directory: one writer at a time, and nothing in it is replaced by an inconsistent run.

    with RunDirectory(workdir) as run:          # exclusive lock, or TrainingError naming the holder's PID
        run.check_model_config(model_config)    # the run's model_config.json must match (before anything is written)
        run.check_tokenizer(tokenizer_file, spec)
        ...restore...
        run.record(model_config, tokenizer_file)  # written once, when the run is known to be consistent

The lock is `fcntl.flock` on `<workdir>/train.lock`, which holds the PID of the process that has it. The kernel
drops the lock when that process ends, however it ends (kill -9 included), so a lock is never stale; the file
itself stays behind and is reused. In a multi-process (multi-host) job only process 0 locks and records; the
others share its run directory.
"""

from __future__ import annotations

import fcntl
import filecmp
import os
import shutil
from pathlib import Path
from types import TracebackType

from focused.model.config import LlamaConfig
from focused.training.checkpoint import CONFIG_NAME, TOKENIZER_DIR, read_model_config, write_model_config
from focused.training.errors import TrainingError

LOCK_NAME = "train.lock"
# model fields that change how a step runs but not what a checkpoint holds; a resume may change them freely
RUNTIME_FIELDS = ("remat", "dtype", "mem_attention_grouping", "attention_impl", "attention_chunk")
# files copied from the tokenizer's folder next to the one that is read (tokenizer.json / tokenizer.model)
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json")


class RunDirectory:
    """`config.workdir` of a training run, held with an exclusive lock while training writes into it."""

    def __init__(self, path: str | Path, *, primary: bool = True):
        """primary: this process locks the directory and records the config (process 0 of a multi-process job)."""
        self.path = Path(path).absolute()
        self.primary = primary
        self._fd: int | None = None

    # ----------------------------------------------------------------------------------------------------------
    # the lock

    def acquire(self) -> None:
        """Takes the exclusive lock; a TrainingError (one line) when the directory is read-only or held."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise self._not_writable(error.strerror or str(error)) from None
        for path in (self.path, self.path / "checkpoints", self.path / "metrics.jsonl", self.path / LOCK_NAME):
            if path.exists() and not os.access(path, os.W_OK):
                raise self._not_writable(f"{path.name} is read-only" if path != self.path else "read-only")
        if not self.primary:
            return
        try:
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise self._not_writable(error.strerror or str(error)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise TrainingError(
                f"{self.path} is in use by another training run ({who}): wait for it to finish or stop it, or pick "
                "another config.workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunDirectory:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()

    def _not_writable(self, reason: str) -> TrainingError:
        return TrainingError(
            f"cannot write to the run directory {self.path} ({reason}): make it writable, or pick another "
            "config.workdir (config.init_from can start from its weights)"
        )

    # ----------------------------------------------------------------------------------------------------------
    # consistency with the run already there

    def check_model_config(self, config: LlamaConfig) -> None:
        """Refuses a model config that differs from the run's `model_config.json` (runtime fields aside)."""
        saved_path = self.path / CONFIG_NAME
        if not saved_path.is_file():
            steps = self.path / "checkpoints"
            if steps.is_dir() and any(p.name.isdigit() for p in steps.iterdir()):
                raise TrainingError(
                    f"{steps} holds checkpoints but {saved_path} is missing, so they cannot be checked against "
                    "config.model: restore the file or pick another config.workdir"
                )
            return
        try:
            saved = read_model_config(self.path)
        except (ValueError, TypeError) as error:
            raise TrainingError(
                f"{saved_path} cannot be read ({error}): restore it or pick another config.workdir"
            ) from None
        old, new = saved.to_dict(), config.to_dict()
        differ = [name for name in new if name not in RUNTIME_FIELDS and old.get(name) != new[name]]
        if differ:
            shown = ", ".join(f"config.model.{n}={_show(new[n])} (the run has {_show(old.get(n))})" for n in differ[:3])
            more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
            raise TrainingError(
                f"{self.path} holds a run of another model: {shown}{more}; to resume it use the run's values, "
                "to start a new run pick another config.workdir"
            )

    def check_tokenizer(self, tokenizer_file: Path | None, spec: str) -> None:
        """Refuses a tokenizer other than the one recorded in `<run>/tokenizer/` (compared byte for byte)."""
        recorded = self.path / TOKENIZER_DIR
        if tokenizer_file is None or not recorded.is_dir():
            return
        twin = recorded / tokenizer_file.name
        if not twin.is_file() or not filecmp.cmp(twin, tokenizer_file, shallow=False):
            raise TrainingError(
                f"config.data.tokenizer={spec} is not the tokenizer this run was trained with ({recorded}): resume "
                "with that one, or pick another config.workdir"
            )

    def record(self, config: LlamaConfig, tokenizer_file: Path | None) -> None:
        """Writes `model_config.json` and copies the tokenizer into `<run>/tokenizer/`, each only when absent."""
        if not self.primary:
            return
        if not (self.path / CONFIG_NAME).is_file():
            write_model_config(config, self.path)
        recorded = self.path / TOKENIZER_DIR
        if tokenizer_file is None or recorded.exists():
            return
        staged = self.path / f".{TOKENIZER_DIR}.partial"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir()
        for name in (tokenizer_file.name, *TOKENIZER_EXTRAS):
            if (tokenizer_file.parent / name).is_file():
                shutil.copyfile(tokenizer_file.parent / name, staged / name)
        os.replace(staged, recorded)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _show(value: object) -> str:
    if isinstance(value, list):
        value = tuple(value)
    return repr(value) if isinstance(value, str) else str(value)
