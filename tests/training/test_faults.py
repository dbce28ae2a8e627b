"""Issue 10: faults and bad input against `python train.py` (and export / eval of what it wrote).

Each case checks the exit status, that stderr is one line without a traceback, and that what was saved before is
byte-identical afterwards. Real runs are subprocesses of a micro model on the shipped SOTU data that share a
persistent JAX compilation cache (one compile for the module); refusals that happen before any compute call
`train.py`'s `main` in this process.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from focused.convert.__main__ import main as convert_main
from focused.training import run_dir as run_dir_module
from focused.training.checkpoint import load_model, params_dict, step_dirs
from tests.training.micro import MICRO_MODEL

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_cli", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_cli, eval_cli = _load("train"), _load("eval")

STEPS = 150  # long enough (~2 s or more) that a signal sent once the loop runs arrives mid-run
MICRO = [
    "--config",
    "configs/tiny.py",
    *MICRO_MODEL,
    "--config.data.batch_size=4",
    "--config.data.source.path=focused:sotu",
    # a constant schedule: the compiled step does not depend on config.train.steps, so every run shares one compile
    "--config.train.schedule=constant",
    "--config.train.warmup_steps=0",
    "--config.train.learning_rate=0.01",
    "--config.train.log_every=1",
    "--config.train.save_every=50",
    "--config.train.async_checkpointing=False",
]


def argv(workdir: Path, steps: int = STEPS, *extra: str) -> list[str]:
    return ["train.py", *MICRO, f"--config.workdir={workdir}", f"--config.train.steps={steps}", *extra]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    cache = tmp_path_factory.mktemp("jax_cache")
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def start(args: list[str], env: dict[str, str], **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def one_line(err: str) -> str:
    """The single line on stderr (no traceback, nothing else)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def in_process(module, args: list[str], capsys) -> tuple[int, str, str]:
    code = module.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def losses(workdir: Path) -> dict[int, float]:
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out[record["step"]] = record["loss"]  # a re-run step overwrites an earlier record
    return out


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (the lock file aside: it names whoever held the run last)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "train.lock"
    }


def assert_checkpoints_finite(workdir: Path) -> None:
    for step in step_dirs(workdir):
        for leaf in jax.tree.leaves(params_dict(load_model(step))):
            assert np.isfinite(np.asarray(leaf)).all(), step


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, finish(proc)
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def metrics_lines(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env) -> tuple[Path, str]:
    """An uninterrupted run of STEPS steps (checkpoints at 50, 100, 150) and its stdout."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    code, out, err = finish(start(argv(workdir), env))
    assert code == 0, err[-3000:]
    assert err == "", err[-3000:]
    return workdir, out


def copy_run(reference: tuple[Path, str], tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(reference[0], run)
    return run


def largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


# ----------------------------------------------------------------------------------------------------------------
# data loss and silent wrong results


def test_case10_a_run_ends_with_one_summary_line(reference):
    workdir, out = reference
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"done: step {STEPS}/{STEPS} in "), last
    assert "loss " in last and "accuracy " in last
    assert f"checkpoint {workdir / 'checkpoints' / str(STEPS)}" in last
    assert "python eval.py --config configs/eval_perplexity.py" in last
    assert f"python -m focused.convert export --checkpoint {workdir}" in last
    assert (workdir / "tokenizer" / "tokenizer.json").is_file()  # export / eval pick it up (case 12)


def test_case1_resume_with_another_model_shape_is_refused_before_anything_changes(reference, tmp_path, capsys):
    run = copy_run(reference, tmp_path)
    before = snapshot(run)
    code, _, err = in_process(train_cli, argv(run, STEPS + 10, "--config.model.intermediate_size=64"), capsys)
    assert code == 2
    line = one_line(err)
    assert "config.model.intermediate_size=64 (the run has 48)" in line and "another config.workdir" in line
    assert snapshot(run) == before  # model_config.json, checkpoints, metrics untouched
    load_model(run)  # still loadable (and exportable)


def test_case2_non_finite_state_is_never_saved(tmp_path, env):
    """The issue's example: save_every < log_every, so the step that turns NaN is a save step, not a logged one.
    (Huge initial weights make step 1 NaN; the compiled step is the one the other runs use.)"""
    run = tmp_path / "nan"
    extra = ["--config.model.initializer_range=1e30", "--config.train.save_every=1", "--config.train.log_every=10"]
    code, _, err = finish(start(argv(run, 4, *extra), env))
    assert code == 2
    line = one_line(err)
    assert "NaN/inf after step 1, so it was not saved" in line, line
    assert "no finite checkpoint of this run was saved, so there is none to resume from" in line
    assert step_dirs(run) == []


def test_case2_non_finite_learning_rate_is_refused_when_the_config_loads(tmp_path, capsys):
    code, _, err = in_process(train_cli, argv(tmp_path / "run", 3, "--config.train.learning_rate=nan"), capsys)
    assert code == 2
    assert "config.train.learning_rate=nan must be a finite number" in one_line(err)
    assert not (tmp_path / "run").exists()


def test_case3_a_second_run_on_the_same_directory_is_refused(reference, tmp_path, env, capsys):
    run = tmp_path / "run"
    first = start(argv(run), env)  # all STEPS steps: it still holds the lock while the second run starts up
    lock = run / "train.lock"
    wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(first.pid), first)
    code, _, err = in_process(train_cli, argv(run), capsys)
    assert code == 2
    line = one_line(err)
    assert f"in use by another training run (pid {first.pid})" in line, line
    code, _, err = finish(first)
    assert code == 0 and err == "", err[-3000:]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # no duplicates, nothing missing
    assert losses(run) == pytest.approx(losses(reference[0]), abs=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# one-line errors, nothing lost


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_case5_export_and_eval_of_a_damaged_checkpoint_are_one_line(reference, tmp_path, capsys, damage):
    run = copy_run(reference, tmp_path)
    victim = largest_file(run / "checkpoints" / str(STEPS) / "params")
    if damage == "deleted":
        victim.unlink()
    else:
        os.truncate(victim, 100)
    before = snapshot(run)
    assert convert_main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "hf")]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"checkpoint {run / 'checkpoints' / str(STEPS)} cannot be read" in line
    assert f"use an older step instead: {run / 'checkpoints' / '100'}" in line
    eval_args = ["eval.py", "--config", "configs/eval_passkey.py", f"--config.checkpoints=('{run}',)"]
    eval_args += [f"--config.out_dir={tmp_path / 'out'}", "--config.progress=False"]
    code, _, err = in_process(eval_cli, eval_args, capsys)
    assert code == 2
    assert f"checkpoint {run / 'checkpoints' / str(STEPS)} cannot be read" in one_line(err)
    assert snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no export folder, no eval results


def test_case6_an_unreadable_newest_checkpoint_falls_back_to_the_newest_that_restores(reference, tmp_path, env):
    run = copy_run(reference, tmp_path)
    os.truncate(largest_file(run / "checkpoints" / str(STEPS) / "params"), 100)
    older = {k: v for k, v in snapshot(run / "checkpoints").items() if not k.startswith(f"{STEPS}/")}
    code, out, err = finish(start(argv(run), env))
    assert code == 0, err[-3000:]
    line = one_line(err)
    assert line.startswith(f"warning: checkpoint step {STEPS} cannot be restored (")
    moved = run / "unreadable_checkpoints" / str(STEPS)
    assert f"resuming from step 100 instead (step {STEPS} moved to {moved})" in line
    assert f"resumed from {run / 'checkpoints' / '100'}" in out
    assert (run / "unreadable_checkpoints" / str(STEPS) / "params").is_dir()  # set aside, not deleted
    after = snapshot(run / "checkpoints")
    assert all(after[k] == v for k, v in older.items() if k.startswith("100/"))
    expected = losses(reference[0])
    resumed = losses(run)
    for step in range(101, STEPS + 1):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6), step


def interrupt(run: Path, env: dict[str, str], sig: signal.Signals, after: int) -> int:
    """Starts (or resumes) the run, sends `sig` once `after` metric lines exist; checks the exit and returns the
    step it stopped at."""
    proc = start(argv(run), env)
    wait_for(lambda: metrics_lines(run) >= after, proc)
    proc.send_signal(sig)
    code, _, err = finish(proc)
    assert code == 128 + sig, err[-3000:]  # 130 for SIGINT, 143 for SIGTERM
    line = one_line(err)
    assert line.startswith(f"interrupted by {sig.name} at step "), line
    step = int(line.split(" at step ")[1].split(",")[0])
    assert f"checkpoint saved in {run / 'checkpoints' / str(step)}; rerun the same command to resume" in line
    assert step_dirs(run)[-1].name == str(step)
    return step


def test_case7_sigint_then_sigterm_save_the_current_step_and_reruns_continue_identically(reference, tmp_path, env):
    run = tmp_path / "run"
    first = interrupt(run, env, signal.SIGINT, after=2)
    second = interrupt(run, env, signal.SIGTERM, after=metrics_lines(run) + 2)
    assert 2 <= first < second < STEPS, (first, second)
    assert_checkpoints_finite(run)
    code, out, err = finish(start(argv(run), env))
    assert code == 0 and err == "", err[-3000:]
    assert f"resumed from {run / 'checkpoints' / str(second)}" in out
    expected, resumed = losses(reference[0]), losses(run)
    assert sorted(resumed) == sorted(expected)
    for step in range(first + 1, STEPS + 1):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6), step


# runs train.py with writes past 200 KB failing (EFBIG), as they would on a full disk
LIMITED = "import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000)); "
LIMITED += "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"


def test_case8_a_failed_checkpoint_write_is_one_line_and_keeps_the_previous_step(reference, tmp_path, env):
    run = copy_run(reference, tmp_path)
    before = snapshot(run / "checkpoints")
    metrics_before = (run / "metrics.jsonl").read_bytes()
    code, _, err = finish(start(["-c", LIMITED, *argv(run, STEPS + 3)], env))
    assert code == 2
    line = one_line(err)
    assert f"could not save checkpoint step {STEPS + 3} in {run / 'checkpoints'}: File too large" in line, line
    assert f"checkpoint step {STEPS} ({run / 'checkpoints' / str(STEPS)}) is kept and usable" in line
    assert snapshot(run / "checkpoints") == before  # no half-written step left behind either
    assert (run / "metrics.jsonl").read_bytes().startswith(metrics_before)
    load_model(run)


def test_case8_a_read_only_run_directory_is_one_line(reference, tmp_path, capsys, monkeypatch):
    run = copy_run(reference, tmp_path)
    before = snapshot(run)
    if os.geteuid() == 0:  # root writes anywhere: make the check see what a read-only mount (EROFS) gives
        monkeypatch.setattr(run_dir_module.os, "access", lambda path, mode: False)
    else:
        for path in [run, *run.rglob("*")]:
            path.chmod(path.stat().st_mode & 0o555)
    try:
        code, _, err = in_process(train_cli, argv(run, STEPS + 10), capsys)
    finally:
        for path in [run, *run.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"error: cannot write to the run directory {run} (") and "read-only" in line, line
    assert snapshot(run) == before
    load_model(run)


def test_case8_creating_the_run_directory_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = in_process(train_cli, argv(tmp_path / "file" / "run", 3), capsys)
    assert code == 2
    assert f"cannot write to the run directory {tmp_path / 'file' / 'run'} (" in one_line(err)


def test_case8_disk_errors_are_named(tmp_path):
    from focused.training.errors import describe, disk_problem

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x"))
    assert disk_problem(full) == "No space left on device"
    wrapped = ValueError("OUT_OF_RANGE: Error writing ... Failed to write 9 bytes to file 9: [os_error_code='28']")
    assert disk_problem(wrapped) == "No space left on device"
    assert "tensorstore_spec" not in describe(ValueError("NOT_FOUND: x [tensorstore_spec='{\"a\": 1}']"))


# ----------------------------------------------------------------------------------------------------------------
# friction


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--config.data.batch_size=0", "config.data.batch_size must be a positive integer, got 0"),
        ("--config.data.k=0", "config.data.k must be a positive integer, got 0"),
        ("--config.model.hidden_size=0", "config.model.hidden_size must be a positive integer, got 0"),
        ("--config.model.mem_layers=(5,)", "config.model: mem_layers"),
        ("--config.train.warmup_steps=-1", "config.train.warmup_steps must be >= 0, got -1"),
    ],
)
def test_case14_errors_name_the_field_as_typed(tmp_path, capsys, override, message):
    code, _, err = in_process(train_cli, argv(tmp_path / "run", 3, override), capsys)
    assert code == 2
    line = one_line(err)
    assert message in line and "PackingConfig" not in line, line
    assert not (tmp_path / "run").exists()


def test_case2_and_6_checkpoint_guards_without_a_model(tmp_path):
    """The same guarantees on a tiny tree: NaN refused (the message names the last finite checkpoint, or says there is
    none), and a run whose every step is unreadable is a one-line error that moves nothing."""
    import jax.numpy as jnp

    from focused.training.checkpoint import TrainCheckpoints
    from focused.training.errors import TrainingError

    params, opt_state = {"w": jnp.ones((4,))}, {"mu": jnp.zeros((4,))}
    ckpts = TrainCheckpoints(tmp_path, keep=3, async_save=False)
    with pytest.raises(TrainingError, match="NaN/inf after step 1, so it was not saved; no finite checkpoint"):
        ckpts.save(1, {"w": jnp.array([1.0, jnp.nan, 0.0, 0.0])}, opt_state, {"step": 1})
    assert step_dirs(tmp_path) == []
    ckpts.save(2, params, opt_state, {"step": 2})
    ckpts.save(3, params, opt_state, {"step": 3})
    with pytest.raises(TrainingError, match=r"after step 4, .* the last finite checkpoint is step 3 \("):
        ckpts.save(4, params, {"mu": jnp.full((4,), jnp.inf)}, {"step": 4})
    ckpts.finish()
    assert [p.name for p in step_dirs(tmp_path)] == ["2", "3"]
    for step in ("2", "3"):
        (tmp_path / "checkpoints" / step / "params" / "_METADATA").unlink()
    before = snapshot(tmp_path)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params)
    again = TrainCheckpoints(tmp_path, keep=3, async_save=False)
    with pytest.raises(TrainingError, match=r"no checkpoint in .* can be restored \(step 3: .*; step 2: ") as info:
        again.restore(abstract, jax.tree.map(lambda x: x, abstract))
    again.finish()
    assert "\n" not in str(info.value)
    assert snapshot(tmp_path) == before and not (tmp_path / "unreadable_checkpoints").exists()


def test_case12_export_of_a_run_carries_its_tokenizer_with_ordinary_permissions(reference, tmp_path, capsys):
    from focused.evals.runner import Checkpoint

    run, hf = reference[0], tmp_path / "hf"
    old = os.umask(0o022)
    try:
        assert convert_main(["export", "--checkpoint", str(run), "--out", str(hf)]) == 0
    finally:
        os.umask(old)
    assert (hf / "tokenizer.json").read_bytes() == (run / "tokenizer" / "tokenizer.json").read_bytes()
    assert oct(hf.stat().st_mode & 0o777) == "0o755"
    assert {oct(p.stat().st_mode & 0o777) for p in hf.iterdir()} == {"0o644"}
    assert Checkpoint(str(run), "run").load_tokenizer().source == str(run / "tokenizer" / "tokenizer.json")
    step = run / "checkpoints" / str(STEPS)
    assert Checkpoint(str(step), "step").load_tokenizer().source == str(run / "tokenizer" / "tokenizer.json")


def test_case8_a_disk_without_room_for_the_checkpoint_is_refused_before_writing(tmp_path, monkeypatch):
    import jax.numpy as jnp

    from focused.training import checkpoint as checkpoint_module
    from focused.training.checkpoint import TrainCheckpoints
    from focused.training.errors import TrainingError

    params, opt_state = {"w": jnp.ones((256,))}, {"mu": jnp.zeros((256,))}
    ckpts = TrainCheckpoints(tmp_path, keep=3, async_save=False)
    ckpts.save(1, params, opt_state, {"step": 1})
    before = snapshot(tmp_path)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    room = r"not enough free space to save checkpoint step 2 .* about 2.0 KB and 1.0 KB are free; checkpoint step 1"
    with pytest.raises(TrainingError, match=room):
        ckpts.save(2, params, opt_state, {"step": 2})
    ckpts.finish()
    assert snapshot(tmp_path) == before  # nothing written, step 1 kept
