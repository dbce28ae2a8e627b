"""`python -m focused.convert export|import`: round trip through files, and one-line errors with exit status 2."""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from focused.convert.__main__ import main
from focused.training.checkpoint import load_model, params_dict, save_model
from tests.convert.helpers import random_model, tiny_config

TOKENIZER = Path(__file__).parents[2] / "focused" / "data" / "assets" / "tokenizer"


def assert_same_params(a, b) -> None:
    for x, y in zip(jax.tree.leaves(params_dict(a)), jax.tree.leaves(params_dict(b)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def run(argv: list[str]) -> int:
    """main's status, also for the errors argparse reports by exiting."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A focused saved-model directory with a small random model."""
    model = random_model(tiny_config(num_hidden_layers=2, mem_layers=(1,)), seed=11)
    return save_model(model, tmp_path_factory.mktemp("saved") / "model")


def test_export_then_import_round_trips(tmp_path, saved, capsys):
    hf, back = tmp_path / "hf", tmp_path / "back"
    argv = ["export", "--checkpoint", str(saved), "--out", str(hf), "--format", "llama"]
    assert main([*argv, "--max-shard-size", "40KB", "--tokenizer", str(TOKENIZER)]) == 0
    assert (hf / "model.safetensors.index.json").is_file() and (hf / "tokenizer.json").is_file()
    assert main(["import", "--hf", str(hf), "--out", str(back)]) == 0
    assert f"wrote {back}" in capsys.readouterr().out
    original, imported = load_model(saved), load_model(back)
    assert_same_params(original, imported)
    # a llama export drops the FoT fields: they come back as defaults
    plain = original.config.replace(mem_layers=(), mem_dtype="bfloat16", last_context_length=64)
    assert imported.config == plain
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back", "hf"]  # no staging folders left behind


def test_export_refuses_a_different_checkpoint_unless_overwrite(tmp_path, saved, capsys):
    hf = tmp_path / "hf"
    other = save_model(random_model(tiny_config(num_hidden_layers=2, mem_layers=(1,)), seed=12), tmp_path / "other")
    assert main(["export", "--checkpoint", str(other), "--out", str(hf)]) == 0
    before = snapshot(hf)
    assert main(["export", "--checkpoint", str(saved), "--out", str(hf)]) == 2
    assert "different checkpoint" in one_error_line(capsys)
    assert snapshot(hf) == before
    assert main(["export", "--checkpoint", str(saved), "--out", str(hf), "--overwrite"]) == 0
    assert snapshot(hf) != before


def test_import_refuses_a_mismatched_folder_and_writes_nothing(tmp_path, saved, capsys):
    hf = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(saved), "--out", str(hf)]) == 0
    config = (hf / "config.json").read_text().replace('"intermediate_size": 160', '"intermediate_size": 170')
    (hf / "config.json").write_text(config)
    assert main(["import", "--hf", str(hf), "--out", str(tmp_path / "back")]) == 2
    line = one_error_line(capsys)
    assert "model.layers.0.mlp.gate_proj.weight" in line and "(160, 96)" in line and "(170, 96)" in line
    assert not (tmp_path / "back").exists()


def test_import_refuses_an_existing_output_unless_overwrite(tmp_path, saved, capsys):
    hf = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(saved), "--out", str(hf)]) == 0
    before = snapshot(saved)
    assert main(["import", "--hf", str(hf), "--out", str(saved)]) == 2
    assert "--overwrite" in one_error_line(capsys)
    assert snapshot(saved) == before
    back = tmp_path / "back"
    back.mkdir()
    (back / "old.txt").write_text("old")
    assert main(["import", "--hf", str(hf), "--out", str(back), "--overwrite"]) == 0
    assert not (back / "old.txt").exists()
    assert_same_params(load_model(back), load_model(saved))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "--checkpoint", "{tmp}/absent", "--out", "{tmp}/hf"], "does not exist"),
        (["export", "--checkpoint", "{saved}", "--out", "{tmp}/hf", "--max-shard-size", "lots"], "cannot read size"),
        (["export", "--checkpoint", "{saved}", "--out", "{tmp}/hf", "--format", "gpt2"], "invalid choice"),
        (["export", "--checkpoint", "{saved}", "--out", "{tmp}/hf", "--tokenizer", "{tmp}/none"], "tokenizer"),
        (["import", "--hf", "{tmp}/absent", "--out", "{tmp}/back"], "does not exist"),
        (["import", "--hf", "{saved}", "--out", "{tmp}/back"], "config.json not found"),
        (["import", "--out", "{tmp}/back"], "required: --hf"),
    ],
)
def test_bad_input_is_one_error_line_and_status_2(tmp_path, saved, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, saved=saved) for a in argv]
    assert run(argv) == 2
    assert message in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_module_entry_point(tmp_path):
    command = [sys.executable, "-m", "focused.convert", "import", "--hf", str(tmp_path / "absent"), "--out", "x"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: Hugging Face folder {tmp_path / 'absent'} does not exist"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("keep", [0.5, 100, 5])  # cut inside the tensors, inside the header, inside its length
def test_import_of_a_truncated_safetensors_file_is_one_error_line(tmp_path, saved, capsys, keep):
    hf = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(saved), "--out", str(hf)]) == 0
    weights = hf / "model.safetensors"
    os.truncate(weights, int(weights.stat().st_size * keep) if keep < 1 else keep)
    before = snapshot(hf)
    capsys.readouterr()
    assert main(["import", "--hf", str(hf), "--out", str(tmp_path / "back")]) == 2
    line = one_error_line(capsys)
    assert f"{weights} cannot be read (" in line and "truncated or corrupt" in line, line
    assert not (tmp_path / "back").exists() and snapshot(hf) == before


def test_export_and_import_folders_get_ordinary_permissions(tmp_path, saved):
    old = os.umask(0o022)
    try:
        hf, back = tmp_path / "hf", tmp_path / "back"
        assert main(["export", "--checkpoint", str(saved), "--out", str(hf), "--max-shard-size", "40KB"]) == 0
        assert main(["import", "--hf", str(hf), "--out", str(back)]) == 0
    finally:
        os.umask(old)
    for root in (hf, back):
        assert stat.S_IMODE(root.stat().st_mode) == 0o755, root
        for path in root.rglob("*"):
            assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path


def test_export_copies_the_runs_tokenizer_by_default(tmp_path, saved, capsys):
    run = tmp_path / "run"
    shutil.copytree(saved, run)
    shutil.copytree(TOKENIZER, run / "tokenizer")  # where training records the tokenizer it read with
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (TOKENIZER / "tokenizer.json").read_bytes()
    assert (tmp_path / "hf" / "tokenizer_config.json").is_file()
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "bare"), "--no-tokenizer"]) == 0
    assert not (tmp_path / "bare" / "tokenizer.json").exists()
