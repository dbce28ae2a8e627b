"""The dictionary-lookup models shipped in models/ load with the task layout they carry and reproduce the accuracy
stored in results/dictionary/results.json at one small memory size (the same eval seed and trials, so the same
documents), and each stays under the 15 MB a shipped model may take."""

import json
from pathlib import Path

import pytest

from focused.convert import import_hf
from focused.data.synthetic import load_task
from focused.evals.dictionary import evaluate_dictionary
from focused.memory.backends import MemoryConfig

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results" / "dictionary" / "results.json"
SHIPPED = ("dict_lookup_fot", "dict_lookup_d1", "dict_lookup_baseline")
SIZE = 4096  # tokens of definitions: 64 pages, past the baseline's window, exact top-k on the device


def stored(name: str) -> tuple[dict, dict]:
    report = json.loads(RESULTS.read_text())
    series = {Path(s["checkpoint"]).name: s for s in report["series"]}
    row = next(d for d in series[name]["details"] if d["memory_tokens"] == SIZE)
    return report, row


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_reproduces_its_stored_accuracy(name):
    folder = ROOT / "models" / name
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 15 * 2**20
    task = load_task(folder)
    assert task is not None, f"{folder} carries no task layout"
    report, row = stored(name)
    settings = report["config"]
    memory = {**settings["memory"], "index": {"index_type": settings["memory"]["index"]["index_type"]}}
    got = evaluate_dictionary(
        import_hf(folder),
        (SIZE,),
        MemoryConfig.from_dict(memory),
        seed=settings["dictionary"]["seed"],
        trials=row["trials"],
        task=task,
        device_up_to=settings["dictionary"]["device_up_to"],
    )["results"][0]
    assert got["backend"] == row["backend"]
    assert got["queries"] == row["queries"]
    # the same documents and weights: at most one query may flip on another CPU's float rounding
    assert abs(got["accuracy"] - row["accuracy"]) * row["queries"] <= 1.0 + 1e-9, (got, row)
