"""The long-context experiment: its whole pipeline at smoke size (seven trainings, bfloat16 exports with their
tokenizer, the perplexity and passkey evals, tables and plots), its refusal to replace shipped work, and which runs
each evaluation needs."""

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "experiments" / "long_context.py"


def folders(tmp_path: Path) -> list[str]:
    return ["--runs", str(tmp_path / "runs"), "--models", str(tmp_path / "models"), "--out", str(tmp_path / "out")]


def test_the_whole_pipeline_runs_at_smoke_size(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    script = runpy.run_path(str(SCRIPT))
    assert script["main"](["--smoke", *folders(tmp_path)]) == 0
    for name in script["EXPORTED"]:
        exported = tmp_path / "models" / name
        config = json.loads((exported / "config.json").read_text())
        assert config["torch_dtype"] == "bfloat16" and (exported / "tokenizer.json").is_file()
        assert bool(config.get("mem_layers")) == ("_fot" in name)
    ppl = json.loads((tmp_path / "out" / "perplexity" / "results.json").read_text())
    labels = {(s["label"], s["setting"]) for s in ppl["series"]}
    assert labels == {(m, s) for m in ("fot", "plain", "pi", "yarn") for s in ("single", "distractors")}
    for series in ppl["series"]:
        assert series["x"] == [256.0, 512.0, 768.0] and all(np.isfinite(series["y"]))
    passkey = json.loads((tmp_path / "out" / "passkey" / "results.json").read_text())
    assert [s["label"] for s in passkey["series"]] == ["fot", "pi"]
    assert all(len(d["trials"]) == 2 for s in passkey["series"] for d in s["details"])
    for kind in ("perplexity", "passkey"):
        assert (tmp_path / "out" / kind / "plot.png").stat().st_size > 0


def test_a_fresh_run_refuses_at_once_to_replace_shipped_models_and_results(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    script = runpy.run_path(str(SCRIPT))
    (tmp_path / "models" / "lm_fot").mkdir(parents=True)
    (tmp_path / "out" / "passkey").mkdir(parents=True)
    (tmp_path / "out" / "passkey" / "results.json").write_text("{}")
    with pytest.raises(SystemExit, match="already exist .*--overwrite") as stop:
        script["main"](["--smoke", *folders(tmp_path)])
    assert "lm_fot" in str(stop.value) and "results.json" in str(stop.value) and "\n" not in str(stop.value)
    assert not (tmp_path / "runs").exists()
    assert (tmp_path / "out" / "passkey" / "results.json").read_text() == "{}"


def test_an_evaluation_needs_only_its_runs_and_their_parents():
    script = runpy.run_path(str(SCRIPT))
    assert script["needed_runs"]("perplexity") == ["lm_base", "lm_fot", "lm_plain", "lm_pi", "lm_yarn"]
    assert script["needed_runs"]("passkey") == [
        "lm_base",
        "lm_fot",
        "passkey_copy",
        "passkey_copy_more",
        "passkey_copy_digits",
        "passkey_fot",
        "passkey_pi",
    ]
    assert script["needed_runs"]("") == list(script["RUNS"])
