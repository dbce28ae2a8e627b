"""The dictionary-lookup experiment pipeline at smoke size: three trainings, exports that carry their task layout,
the eval over 1, 4 and 16 pages of memory (the last through FAISS), the table and the plot."""

import json
import runpy
from pathlib import Path

import pytest

from focused.data.synthetic import load_task

ROOT = Path(__file__).resolve().parents[2]


def test_the_whole_pipeline_runs_at_smoke_size(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    script = runpy.run_path(str(ROOT / "experiments" / "dictionary_lookup.py"))
    folders = ["--runs", str(tmp_path / "runs"), "--models", str(tmp_path / "models"), "--out", str(tmp_path / "out")]
    assert script["main"](["--smoke", *folders]) == 0
    for name in ("dict_lookup_fot", "dict_lookup_d1", "dict_lookup_baseline"):
        exported = tmp_path / "models" / name
        assert (exported / "config.json").is_file() and (exported / "model.safetensors").is_file()
        assert load_task(exported) == load_task(tmp_path / "runs" / name)  # the layout travels with the model
    # the memory models are exported from their last continuation stage: FoT has two (r = 127, then r = 255), d1 one
    stages = {"dict_lookup_fot": (".continued", ".continued2"), "dict_lookup_d1": (".continued",)}
    for name, suffixes in stages.items():
        for suffix in suffixes:
            continued = tmp_path / "runs" / f"{name}{suffix}"
            assert (continued / "checkpoints" / "2").is_dir()
            assert load_task(continued) == load_task(tmp_path / "runs" / name)
    wider = json.loads((tmp_path / "runs" / "dict_lookup_fot.continued2" / "model_config.json").read_text())
    assert wider["attention_impl"] == "flash"
    exported = {
        n: json.loads((tmp_path / "models" / n / "config.json").read_text())
        for n in ("dict_lookup_fot", "dict_lookup_d1")
    }
    assert all(
        cfg["mem_key_norm"] is True for cfg in exported.values()
    )  # the memory layer of configs/dict_lookup_fot.py
    assert not (tmp_path / "runs" / "dict_lookup_d1.continued2").exists()
    assert not (tmp_path / "runs" / "dict_lookup_baseline.continued").exists()
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = {s["label"]: s for s in report["series"]}
    assert set(rows) == {"fot", "d1", "baseline"}
    for series in rows.values():
        assert series["x"] == [64.0, 256.0, 1024.0]
        assert all(0.0 <= y <= 1.0 for y in series["y"])
        backends = [d["backend"] for d in series["details"]]
        assert backends == (["local"] * 3 if series["label"] == "baseline" else ["topk", "topk", "faiss:flat"])
    assert (tmp_path / "out" / "plot.png").stat().st_size > 0
    # a second invocation evaluates the finished runs again and replaces the results when asked to
    assert script["main"](["--smoke", "--skip-train", "--overwrite", *folders]) == 0


def test_a_fresh_run_refuses_at_once_to_replace_shipped_models_and_results(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    script = runpy.run_path(str(ROOT / "experiments" / "dictionary_lookup.py"))
    (tmp_path / "models" / "dict_lookup_fot").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.json").write_text("{}")
    folders = ["--runs", str(tmp_path / "runs"), "--models", str(tmp_path / "models"), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="already exist .*--overwrite") as stop:
        script["main"](["--smoke", *folders])
    assert "dict_lookup_fot" in str(stop.value) and "results.json" in str(stop.value) and "\n" not in str(stop.value)
    assert not (tmp_path / "runs").exists()  # nothing was trained or written
    assert (tmp_path / "out" / "results.json").read_text() == "{}"
