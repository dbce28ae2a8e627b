"""`train.py` / `eval.py` front ends: --help, field listings, quiet library output (issue 10, cases 9 and 13)."""

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from focused import cli
from focused.data import DataSourceConfig, load_documents

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_cli", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_cli, eval_cli = _load("train"), _load("eval")


@pytest.fixture
def library_state():
    """Restores what `quiet_libraries` changes process-wide."""
    bars = datasets.are_progress_bars_disabled()
    levels = {name: logging.getLogger(name).level for name in ("absl", "asyncio")}
    hook = sys.unraisablehook
    yield
    (datasets.disable_progress_bars if bars else datasets.enable_progress_bars)()
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    sys.unraisablehook = hook


def test_train_help_lists_usage_and_configs_with_their_first_docstring_line(capsys):
    assert train_cli.main(["train.py", "--help"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "usage: python train.py --config CONFIG [--config.FIELD=VALUE ...] [--verbose]" in out
    assert "130 stopped by SIGINT, 143 stopped by SIGTERM" in out
    assert "configs/tiny.py" in out and "A ~5M-parameter LLaMA that trains on 2 CPU cores" in out
    assert "configs/longllama_3b.py" in out and "eval_passkey" not in out
    assert "no config given" not in out


def test_eval_help_lists_the_eval_configs(capsys):
    assert eval_cli.main(["eval.py", "-h"]) == 0
    out = capsys.readouterr().out
    assert "usage: python eval.py --config CONFIG" in out
    assert "configs/eval_passkey.py" in out and "Passkey retrieval" in out and "configs/tiny.py" not in out


def test_help_with_a_config_prints_every_field_with_its_value(capsys):
    assert train_cli.main(["train.py", "--config", "configs/tiny.py", "--config.train.steps=7", "--help"]) == 0
    out = capsys.readouterr().out
    fields = {line.split("=")[0].strip(): line.split("=", 1)[1].strip() for line in out.splitlines()[1:]}
    assert fields["train.steps"] == "7" and fields["train.warmup_steps"] == "30"
    assert fields["model.hidden_size"] == "256" and fields["data.source.path"] == "'focused:demo'"
    assert fields["model.head_dim"] == "None (int)"
    assert len(fields) > 60


def test_help_with_a_bad_config_is_one_error_line(capsys):
    assert train_cli.main(["train.py", "--config", "configs/nope.py", "--help"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config file configs/nope.py not found") and err.count("\n") == 1


def test_library_progress_bars_and_logs_are_quiet_unless_verbose(tmp_path, capfd, library_state):
    datasets.enable_progress_bars()
    cli.quiet_libraries()
    cli.quiet_libraries()  # idempotent: one filter, not a chain
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": f"document {i} " * 20}) + "\n" for i in range(5)))
    docs = load_documents(DataSourceConfig(path=str(data)))
    assert len(docs) == 5
    captured = capfd.readouterr()
    assert "Generating train split" not in captured.err + captured.out
    assert logging.getLogger("absl").level == logging.CRITICAL
    assert getattr(sys.unraisablehook, "quiets_closed_loops", False)


def test_coroutines_a_failed_checkpoint_write_drops_are_not_reported_at_exit():
    """An aborted orbax write leaves serialization coroutines unawaited; their warning must not follow the one
    error line (it showed up at interpreter exit, seemingly at random, after the disk-full error)."""
    script = (
        "from focused import cli\n"
        "cli.quiet_libraries(datasets_bars=False)\n"
        "async def write_fragment(): pass\n"
        "dropped = write_fragment(); del dropped\n"
        "async def later(): pass\n"
        "import sys; sys.dropped_at_exit = later()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stderr == ""
    loud = subprocess.run([sys.executable, "-c", script.split("\n", 2)[2]], capture_output=True, text=True)
    assert "was never awaited" in loud.stderr  # without the filter, Python does warn: the check can fail


def test_verbose_is_accepted_and_not_taken_for_an_override(tmp_path, capsys, library_state):
    datasets.enable_progress_bars()
    code = train_cli.main(["train.py", "--config", "configs/tiny.py", "--verbose", "--config.data.batch_size=0"])
    assert code == 2
    assert "config.data.batch_size must be a positive integer" in capsys.readouterr().err
    assert not datasets.are_progress_bars_disabled()  # --verbose leaves the libraries as they are


def test_experiment_scripts_end_a_stop_or_a_training_error_in_one_line(capsys):
    from focused.cli import run_script
    from focused.training.errors import TrainingError, TrainingInterrupted

    def stopped(argv: list[str]) -> int:
        raise TrainingInterrupted("interrupted at step 7, checkpoint saved, rerun to resume", 143)

    def failed(argv: list[str]) -> int:
        raise TrainingError("loss is nan at step 3;\n  the last finite checkpoint is step 2")

    assert run_script(lambda argv: len(argv), ["a", "b"]) == 2
    assert run_script(stopped, []) == 143
    assert capsys.readouterr().err == "interrupted at step 7, checkpoint saved, rerun to resume\n"
    assert run_script(failed, []) == 2
    assert capsys.readouterr().err == "error: loss is nan at step 3; the last finite checkpoint is step 2\n"


@pytest.fixture
def jax_cache_config():
    """Restores the process-wide JAX settings `compile_cache` changes."""
    import jax

    saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size)
    yield jax
    jax.config.update("jax_compilation_cache_dir", saved[0])
    jax.config.update("jax_compilation_cache_max_size", saved[1])


def test_the_compile_cache_goes_where_asked_and_stays_off_when_told(tmp_path, jax_cache_config):
    jax = jax_cache_config
    assert cli.compile_cache({"FOCUSED_COMPILE_CACHE": "off"}) is None
    assert jax.config.jax_compilation_cache_dir is None
    assert cli.compile_cache({"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "theirs")}) is None  # JAX's own wins
    folder = cli.compile_cache({"FOCUSED_COMPILE_CACHE": str(tmp_path / "xla")})
    assert folder == tmp_path / "xla" and folder.is_dir()
    assert jax.config.jax_compilation_cache_dir == str(folder)
    assert jax.config.jax_compilation_cache_max_size == cli.COMPILE_CACHE_MAX_BYTES
    assert cli.compile_cache({"FOCUSED_COMPILE_CACHE": str(tmp_path / "other")}) is None  # already on: left as is


def test_a_compile_cache_that_cannot_be_created_is_a_warning_not_an_error(tmp_path, jax_cache_config):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="cannot be created"):
        assert cli.compile_cache({"FOCUSED_COMPILE_CACHE": str(blocker / "xla")}) is None
    assert jax_cache_config.config.jax_compilation_cache_dir is None


def test_a_second_process_reuses_the_compiled_program(tmp_path):
    """Two processes compile the same jitted function: the second one reads it from the cache folder."""
    script = (
        "import sys, jax, jax.numpy as jnp\n"
        "from focused import cli\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
        "print(cli.compile_cache())\n"
        "f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() * 3.0)\n"
        "print(float(f(jnp.ones((7, 5)))))\n"
    )
    env = {**os.environ, "FOCUSED_COMPILE_CACHE": str(tmp_path / "xla"), "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    programs = lambda: {p.name: p.stat().st_mtime_ns for p in (tmp_path / "xla").glob("*-cache")}  # noqa: E731
    stored = programs()  # (the LRU bookkeeping also keeps "-atime" files, touched on every read)
    assert stored and first.stdout.split()[0] == str(tmp_path / "xla")
    second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert second.stdout.split()[1] == first.stdout.split()[1]
    # a cache hit reads the entry; a miss would compile again and write it anew
    assert programs() == stored
