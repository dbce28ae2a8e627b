"""Tests run from the repository root so `configs/...` paths resolve; JAX stays on the CPU."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.chdir(ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The CLI's persistent compilation cache (focused.cli.compile_cache) stays off in tests: no process-wide JAX
# setting leaks between tests and nothing is written under the home folder. tests/test_cli.py turns it on by hand.
os.environ["FOCUSED_COMPILE_CACHE"] = "off"
# The suite runs in two pytest-xdist workers (pyproject.toml, `-n 2`), one per core of a 2-core CI machine: each
# worker's torch keeps to one OpenMP thread, so the two do not oversubscribe the cores (`-n 0` runs in one process).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
