"""bench/sparse_loss.py times the sparse-loss step against the full one; its check that both do the same work (the
first step's loss from the same weights) must hold, and the script must run end to end at toy size."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from sparse_loss import main


def test_the_bench_runs_and_both_steps_compute_the_same_loss(tmp_path):
    out = tmp_path / "sparse.json"
    result = main(["--rows", "8", "--range", "3", "--repeats", "1", "--ignore-load", "--json", str(out)])
    assert result["loss_positions"] == [8, 16] and result["query_row_stride"] == 2
    for name in ("banded", "positions", "rows"):
        assert result["first_loss"][name] == pytest.approx(result["first_loss"]["rolled"], rel=1e-5)
        assert result["last_loss"][name] == pytest.approx(result["last_loss"]["rolled"], rel=1e-4)
    assert json.loads(out.read_text())["range"] == 3 and result["speedup_median"]["rolled"] == 1.0
