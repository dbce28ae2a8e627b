"""`python eval.py` end to end on tiny saved models (random weights, the shipped tokenizer): results.json,
results.md and plot.png for passkey and perplexity; several checkpoints in one report; one-line errors."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from focused.config import load_config
from focused.convert import export_hf
from focused.evals import report
from focused.evals.runner import EVALS, Checkpoint, resolve_checkpoints
from focused.training.checkpoint import save_model
from tests.evals.test_passkey import CAPACITY, tiny_model
from tests.evals.test_perplexity import random_documents

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("eval_cli", ROOT / "eval.py")
eval_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_cli)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, Path]:
    """Two saved models of the same tiny shape (vocab 4096 = the shipped tokenizer), different random weights."""
    root = tmp_path_factory.mktemp("models")
    return save_model(tiny_model(seed=0), root / "fot_a"), save_model(tiny_model(seed=1), root / "fot_b")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in random_documents(3, 300, seed=5)))
    return path


def passkey_argv(saved, out: Path, *extra: str) -> list[str]:
    return [
        "eval.py",
        "--config",
        "configs/eval_passkey.py",
        f"--config.checkpoints=('{saved[0]}','{saved[1]}')",
        f"--config.out_dir={out}",
        "--config.passkey.lengths=(120,150)",
        "--config.passkey.trials=2",
        f"--config.memory.capacity={CAPACITY}",
        "--config.progress=False",
        *extra,
    ]


def perplexity_argv(saved, corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "eval.py",
        "--config",
        "configs/eval_perplexity.py",
        f"--config.checkpoints=('{saved[0]}',)",
        f"--config.out_dir={out}",
        f"--config.source.path={corpus}",
        "--config.source.split=train",
        "--config.perplexity.memory_windows=(0,1)",
        "--config.perplexity.score_windows=1",
        "--config.perplexity.num_documents=2",
        "--config.perplexity.distractors=1",
        "--config.perplexity.batch_size=2",
        "--config.progress=False",
        *extra,
    ]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def check_outputs(out: Path) -> dict:
    assert (out / "plot.png").read_bytes()[:8] == PNG and (out / "plot.png").stat().st_size > 5000
    assert (out / "results.md").read_text().startswith("# ")
    return json.loads((out / "results.json").read_text())


def test_passkey_end_to_end_with_two_checkpoints(saved, tmp_path, capsys):
    out = tmp_path / "passkey"
    assert eval_cli.main(passkey_argv(saved, out, "--config.labels=('fot','fot seed 1')")) == 0
    results = check_outputs(out)
    assert results["eval"] == "passkey" and [s["label"] for s in results["series"]] == ["fot", "fot seed 1"]
    for series in results["series"]:
        assert series["x"] == [120, 150] and len(series["details"]) == 2
        assert all(0 <= y <= 1 for y in series["y"])
        assert [t["seed"] for t in series["details"][0]["trials"]] == [0, 1]
    assert results["config"]["passkey"]["trials"] == 2
    table = (out / "results.md").read_text()
    assert "| checkpoint | 120 | 150 |" in table and "| fot seed 1 |" in table
    assert "fot seed 1" in capsys.readouterr().out


def test_perplexity_end_to_end_and_overwrite(saved, corpus, tmp_path, capsys):
    out = tmp_path / "ppl"
    assert eval_cli.main(perplexity_argv(saved, corpus, out)) == 0
    results = check_outputs(out)
    assert results["eval"] == "perplexity" and not results["higher_is_better"]
    assert [s["setting"] for s in results["series"]] == ["single", "distractors"]
    for series in results["series"]:
        assert series["x"] == [64, 128] and all(np.isfinite(series["y"]))
        assert {d["scored_tokens"] for d in series["details"]} == {2 * 64}
    assert "| fot_a (distractors) |" in (out / "results.md").read_text()
    before = (out / "results.json").read_bytes()
    assert eval_cli.main(perplexity_argv(saved, corpus, out)) == 2
    assert "already exists: pick another out_dir or pass overwrite=True" in one_error_line(capsys)
    assert (out / "results.json").read_bytes() == before
    assert eval_cli.main(perplexity_argv(saved, corpus, out, "--config.overwrite=True", "--config.labels=('x',)")) == 0
    assert json.loads((out / "results.json").read_text())["series"][0]["label"] == "x"


def test_compare_separate_runs_on_one_plot(tmp_path, capsys):
    results = report.EvalResults(
        "passkey", "accuracy", "prompt tokens", "test", [report.Series("fot", "a", [1024.0, 2048.0], [1.0, 0.5])]
    )
    for name in ("a", "b"):
        report.write_report(results, tmp_path / name)
    out = tmp_path / "both"
    assert (
        report.main([str(tmp_path / "a" / "results.json"), str(tmp_path / "b" / "results.json"), "--out", str(out)])
        == 0
    )
    merged = check_outputs(out)
    assert [s["label"] for s in merged["series"]] == ["fot", "fot#2"]
    assert "| fot#2 | 100.0% | 50.0% |" in (out / "results.md").read_text()
    assert report.main([str(tmp_path / "a" / "results.json"), "--out", str(out)]) == 2
    assert "already exists" in one_error_line(capsys)


def test_bad_input_is_one_error_line_and_status_2(saved, corpus, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": ""}) + "\n")
    cases = [
        (passkey_argv(saved, tmp_path / "a", "--config.eval=lookup"), "unknown eval 'lookup'; available:"),
        (passkey_argv(saved, tmp_path / "b", "--config.checkpoints=('nowhere',)"), "checkpoint(s) not found: nowhere"),
        (passkey_argv(saved, tmp_path / "c", "--config.labels=('one',)"), "config.labels has 1 names for 2"),
        (
            passkey_argv(saved, tmp_path / "d", "--config.passkey.lengths=(120,400)", "--config.memory.capacity=256"),
            "(length 400) needs 384 memory tokens, more than config.memory.capacity=256",
        ),
        (perplexity_argv(saved, empty, tmp_path / "e"), "holds no documents with text"),
        (perplexity_argv(saved, corpus, tmp_path / "f", "--config.perplexity.num_documents=5"), "only 3 of 3"),
        (passkey_argv(saved, tmp_path / "g", "--config.passkey.trails=3"), "unknown config key 'passkey.trails'"),
    ]
    for argv, message in cases:
        assert eval_cli.main(argv) == 2
        assert message in one_error_line(capsys)
        assert not (Path(argv[4].split("=", 1)[1]) / "results.json").exists()


def test_checkpoints_resolve_to_labels_models_and_tokenizers(saved, tmp_path):
    hf = export_hf(tiny_model(seed=2), tiny_model().config, tmp_path / "hf_fot", tokenizer_dir=None)
    config = load_config(
        ["eval.py", "--config", "configs/eval_passkey.py", f"--config.checkpoints=('{saved[0]}','{hf}','{hf}')"]
    )
    checkpoints = resolve_checkpoints(config)
    assert [c.label for c in checkpoints] == ["fot_a", "hf_fot", "hf_fot#2"]
    model, tokenizer = checkpoints[1].load()  # a Hugging Face folder, through import_hf
    assert model.config.mem_layers == (0,) and tokenizer.vocab_size == 4096
    too_small = save_model(tiny_model(vocab_size=1000), tmp_path / "small")
    with pytest.raises(ValueError, match="has 4096 tokens but checkpoint .*small only 1000"):
        Checkpoint(str(too_small), "small").load()
    assert sorted(EVALS) == ["dictionary", "passkey", "perplexity"]


def test_dictionary_end_to_end_through_eval_py(tmp_path, capsys):
    from tests.evals.test_dictionary import tiny_model as dict_model

    fot = save_model(dict_model(seed=2), tmp_path / "dict_fot")
    out = tmp_path / "dictionary"
    argv = [
        "eval.py",
        "--config",
        "configs/eval_dictionary.py",
        f"--config.checkpoints=('{fot}',)",
        f"--config.out_dir={out}",
        "--config.progress=False",
        "--config.dictionary.sizes=(512,1024)",
        "--config.dictionary.trials=1",
        "--config.dictionary.task.key_letters=16",  # the layout of the tiny model (a saved model carries none)
        "--config.dictionary.task.value_letters=16",
        "--config.dictionary.task.page_len=32",
        f"--config.memory.index.values_path={tmp_path / 'memmap'}",
    ]
    assert eval_cli.main(argv) == 0, capsys.readouterr().err
    results = check_outputs(out)
    assert results["eval"] == "dictionary"
    (series,) = results["series"]
    assert series["x"] == [512, 1024] and all(0 <= y <= 1 for y in series["y"])


def test_coincident_series_stay_visible_and_titles_do_not_repeat():
    """Issue 10, case 13: two checkpoints with equal accuracy are drawn side by side, and the legend says why."""
    xs, same = [512.0, 1024.0, 2048.0], [1.0, 1.0, 0.5]
    series = [report.Series("a", "a", xs, same), report.Series("b", "b", xs, same)]
    results = report.EvalResults("passkey", "accuracy", "prompt tokens", "test", series)
    (ax,) = report.figure(results).axes
    first, second = (np.asarray(line.get_xdata()) for line in ax.get_lines())
    assert (first < second).all() and np.allclose(second / first, 2**report.OFFSET)  # shifted, on a log axis
    assert first[0] < 512 < second[0]  # around the true x, which the tables keep
    assert ax.get_lines()[0].get_marker() != ax.get_lines()[1].get_marker()
    assert ax.get_legend().get_title().get_text() == report.OFFSET_NOTE
    assert ax.get_title() == "passkey: accuracy vs prompt tokens"
    one = [report.Series("a", "a", [1.0], [2.0])]
    ppl = report.EvalResults("perplexity", "perplexity", "context tokens", "test", one)
    assert report.title(ppl) == "perplexity vs context tokens"
    assert report.markdown_table(ppl).startswith("# perplexity vs context tokens\n")
    assert report.figure(ppl).axes[0].get_legend().get_title().get_text() == ""  # one series: nothing shifted
