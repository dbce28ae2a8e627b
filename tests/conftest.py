"""Tests run from the repository root so `configs/...` paths resolve; JAX stays on the CPU."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.chdir(ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
