"""Kill -9 in the middle of a run, rerun the same command: the resumed losses equal an uninterrupted run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.training.micro import MICRO_MODEL

ARGS = [
    "--config",
    "configs/tiny_fot.py",
    *MICRO_MODEL,
    "--config.data.batch_size=8",
    "--config.data.source.path=focused:sotu",
    "--config.train.steps=40",
    "--config.train.warmup_steps=2",
    "--config.train.log_every=1",
    "--config.train.save_every=4",
]


def run(workdir, extra=()):
    cmd = [sys.executable, "train.py", *ARGS, f"--config.workdir={workdir}", *extra]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def final_losses(workdir):
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out[record["step"]] = record["loss"]  # a re-run step overwrites the killed run's record
    return out


def test_kill_9_and_rerun_gives_identical_losses(tmp_path):
    reference = tmp_path / "reference"
    assert run(reference).wait() == 0
    expected = final_losses(reference)

    killed = tmp_path / "killed"
    proc = run(killed)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "12").is_dir() and time.time() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    steps = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] < 40, steps

    # a checkpoint whose write was interrupted (orbax's temporary name) must never be picked up
    shutil.copytree(killed / "checkpoints" / str(steps[-1]), killed / "checkpoints" / "36.orbax-checkpoint-tmp-1")

    rerun = run(killed)
    output = rerun.communicate()[0].decode()
    assert rerun.returncode == 0, output[-2000:]
    assert f"resumed from {killed / 'checkpoints' / str(steps[-1])}" in output
    resumed = final_losses(killed)
    assert sorted(resumed) == sorted(expected)
    for step in range(steps[-1] + 1, 41):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6), step
