"""The models of the long-context experiment shipped in models/ reproduce the numbers stored in results/ at small
settings (perplexity: the same documents and scored tokens; passkey: the same greedy answers at the shortest length),
and fit the repository's budget (<= 15 MB each, <= 40 MB for all shipped models)."""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from focused.convert import import_hf
from focused.data import DataSourceConfig, load_documents, load_tokenizer
from focused.evals.passkey import PasskeyConfig, run_passkey
from focused.evals.perplexity import document_spans, stream_nll, streams
from focused.evals.runner import Checkpoint
from focused.memory.backends import MemoryConfig

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "experiments" / "long_context.py"


def shipped_size(name: str) -> int:
    return sum(f.stat().st_size for f in (ROOT / "models" / name).iterdir())


def test_shipped_models_fit_the_repository_budget():
    script = runpy.run_path(str(SCRIPT))
    sizes = {name: shipped_size(name) for name in script["EXPORTED"]}
    assert max(sizes.values()) <= 15 * 2**20, sizes
    everything = sum(f.stat().st_size for f in (ROOT / "models").rglob("*") if f.is_file())
    assert everything <= 40 * 2**20, everything


@pytest.mark.parametrize("label", ["fot", "plain", "pi", "yarn"])
def test_a_shipped_perplexity_model_reproduces_its_stored_numbers(label):
    """m = 0 and 1 of the single setting, recomputed on the stored documents (the last scored windows of the same
    spans), within float rounding of another CPU."""
    report = json.loads((ROOT / "results" / "perplexity" / "results.json").read_text())
    cfg = report["config"]["perplexity"]
    series = next(s for s in report["series"] if s["label"] == label and s["setting"] == "single")
    model = import_hf(ROOT / "models" / f"lm_{label}")
    tok = load_tokenizer(ROOT / "models" / f"lm_{label}")
    source = DataSourceConfig.from_dict(report["config"]["source"])
    window, n_windows = cfg["window"], max(cfg["memory_windows"]) + cfg["score_windows"]
    spans, indices = document_spans(load_documents(source), tok, n_windows * window + 1, cfg["num_documents"])
    inputs, labels, weights = streams(spans, cfg["num_documents"], 0, window, n_windows, cfg["score_windows"])
    own = model.config.max_position_embeddings
    for point in series["details"][:2]:
        assert point["documents"] == indices
        m = point["m"]
        memory = m * window if model.config.mem_layers else 0
        local = 0 if model.config.mem_layers else min(m * window, own - window)
        loss, count = stream_nll(model, inputs, labels, weights, memory, MemoryConfig(), window, local)
        assert int(count.sum()) == point["scored_tokens"]
        np.testing.assert_allclose(np.exp(loss.sum() / count.sum()), point["ppl"], rtol=2e-4)


@pytest.mark.parametrize("label", ["fot", "pi"])
def test_a_shipped_passkey_model_reproduces_its_stored_answers(label):
    """The first trials at 1K tokens (FoT: the key in memory for most), generated again with the stored eval
    settings: the same tokens, right or wrong."""
    report = json.loads((ROOT / "results" / "passkey" / "results.json").read_text())
    series = next(s for s in report["series"] if s["label"] == label)
    point = next(p for p in series["details"] if p["length"] == 1024)
    settings = {**report["config"]["passkey"], "lengths": (point["length"],), "trials": 4}
    model, tokenizer = Checkpoint(path=str(ROOT / "models" / f"passkey_{label}"), label=label).load()
    (got,) = run_passkey(
        model, tokenizer, PasskeyConfig.from_dict(settings), MemoryConfig.from_dict(report["config"]["memory"])
    )
    assert [t["seed"] for t in got["trials"]] == [t["seed"] for t in point["trials"][:4]]
    assert [t["output"] for t in got["trials"]] == [t["output"] for t in point["trials"][:4]]
