"""Tests run from the repository root so `configs/...` paths resolve; JAX stays on the CPU."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.chdir(ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The CLI's persistent compilation cache (focused.cli.compile_cache) stays off in tests: no process-wide JAX
# setting leaks between tests and nothing is written under the home folder. tests/test_cli.py turns it on by hand.
os.environ["FOCUSED_COMPILE_CACHE"] = "off"
