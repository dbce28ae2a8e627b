"""Metrics sinks: TensorBoard event files (tensorboardX) and one JSON line per logged step."""

from __future__ import annotations

import json
from pathlib import Path

from tensorboardX import SummaryWriter


class MetricsWriter:
    """Writes scalars to `<workdir>/tensorboard/` and `<workdir>/metrics.jsonl` (appending, so resumes continue)."""

    def __init__(self, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = workdir / "metrics.jsonl"
        self._jsonl = self.jsonl_path.open("a")
        self._tb = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, scalars: dict[str, float], prefix: str = "train") -> None:
        for name, value in scalars.items():
            self._tb.add_scalar(f"{prefix}/{name}", value, step)
        self._jsonl.write(json.dumps({"step": step, "split": prefix, **scalars}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        self._tb.close()
        self._jsonl.close()


def last_logged(path: Path, split: str = "train") -> dict[str, float]:
    """The scalars of the last `split` record in a `metrics.jsonl` ({} when there is none or it is unreadable)."""
    if not path.is_file():
        return {}
    for line in reversed(path.read_text().splitlines()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("split") == split:
            return {k: v for k, v in record.items() if k not in ("step", "split") and isinstance(v, int | float)}
    return {}
