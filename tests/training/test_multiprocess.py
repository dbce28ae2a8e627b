"""Multi-process training with real `jax.distributed` processes on localhost (CPU devices, gloo collectives).

Default suite (seconds): the launcher (`focused.launch`) with stand-in commands, the peer watchdog with a fake
key-value store, per-process rows of the synthetic task and of the batch sharding.

Opt-in (`pytest -m slow tests/training/test_multiprocess.py`; minutes, each run compiles a train step in every
process): 2 processes x 4 devices against 1 process x 8 devices, CrossBatch included; a checkpoint written by 2
processes resumed by 1 and by 2; a process killed with SIGKILL and what the survivor does; resuming after that.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from focused.data.synthetic import DictionaryBatches, DictionaryTaskConfig
from focused.launch import child_env, command_line, how_it_ended
from focused.training.peers import PeerWatchdog, lost_message

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "tests/training/_multiprocess_config.py"
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"  # cheaper CPU compiles
LAYOUTS = {
    "data": ("--config.sharding.mesh.data=8",),
    "data_fsdp": ("--config.sharding.mesh.data=2", "--config.sharding.mesh.fsdp=4"),
    "fsdp_tensor": (
        "--config.sharding.mesh.data=1",
        "--config.sharding.mesh.fsdp=2",
        "--config.sharding.mesh.tensor=4",
    ),
}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS"))}
    return env | {"XLA_FLAGS": FAST_XLA, "JAX_PLATFORMS": "cpu"} | extra


def launch(processes: int, devices: int, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "focused.launch", "-n", str(processes), "-d", str(devices), "--", *args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def train_args(workdir: Path, *extra: str, layout: str = "data_fsdp") -> list[str]:
    return ["train.py", "--config", CONFIG, f"--config.workdir={workdir}", *LAYOUTS[layout], *extra]


def losses(workdir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["split"] == "train"]
    assert len(steps) == len(set(steps)), f"steps logged more than once (by several processes?): {steps}"
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def jax_leaves(tree: object) -> list[np.ndarray]:
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


# ------------------------------------------------------------------------------------------------------------
# the launcher, with stand-in commands


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_child_env_and_command_line() -> None:
    env = child_env({"XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=2"}, 1, 3, 4, "127.0.0.1:99")
    assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=4"
    assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:99"
    assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == ("3", "1")
    assert env["JAX_PLATFORMS"] == "cpu" and env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] == "gloo"
    assert command_line(["train.py", "--config", "x"]) == [sys.executable, "train.py", "--config", "x"]
    assert command_line(["echo", "hi"]) == ["echo", "hi"]
    with pytest.raises(ValueError, match="no command after '--'"):
        command_line([])
    assert how_it_ended(-9) == "was killed by SIGKILL" and how_it_ended(2) == "exited with status 2"


def test_launcher_prefixes_each_process_output_and_passes_the_environment() -> None:
    code = (
        "import os, sys; e = os.environ; print(e['JAX_PROCESS_ID'], e['JAX_NUM_PROCESSES'], "
        "e['JAX_COORDINATOR_ADDRESS'], e['XLA_FLAGS']); print('to stderr', file=sys.stderr); print('[Gloo] Rank 0 x')"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "focused.launch", "-n", "2", "-d", "3", "--", *_python(code)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    _ok(proc)
    out = sorted(proc.stdout.splitlines())
    assert len(out) == 2, out  # the gloo line is dropped
    port = out[0].split()[3].rsplit(":", 1)[1]
    for i, line in enumerate(out):
        assert line == f"[p{i}] {i} 2 127.0.0.1:{port} {FAST_XLA} --xla_force_host_platform_device_count=3", line
    assert sorted(proc.stderr.splitlines()) == ["[p0] to stderr", "[p1] to stderr"]


def test_launcher_stops_the_others_when_one_process_dies() -> None:
    code = (
        "import os, signal, time; i = int(os.environ['JAX_PROCESS_ID']); print('up', flush=True); time.sleep(0.5)\n"
        "if i == 1: os.kill(os.getpid(), signal.SIGKILL)\n"
        "time.sleep(300)"
    )
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "focused.launch", "-n", "3", "--", *_python(code)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - began
    assert took < 30, f"the launcher took {took:.0f} s to stop"
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: process 1 (pid ") and "was killed by SIGKILL; stopped the other 2 " in errors[0]
    assert sorted(proc.stdout.split()) == ["[p0]", "[p1]", "[p2]", "up", "up", "up"]


def test_launcher_passes_sigterm_on_once_and_returns_the_children_status() -> None:
    code = (
        "import signal, sys, time\n"
        "def stop(*a): print('saving', flush=True); sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, stop); print('ready', flush=True); time.sleep(300)"
    )
    launcher = subprocess.Popen(
        [sys.executable, "-m", "focused.launch", "-n", "2", "--", *_python(code)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert launcher.stdout is not None
    ready = [launcher.stdout.readline() for _ in range(2)]
    assert sorted(ready) == ["[p0] ready\n", "[p1] ready\n"]
    launcher.send_signal(signal.SIGTERM)
    out, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 143, err
    assert sorted(out.splitlines()) == ["[p0] saving", "[p1] saving"] and "error" not in err


# ------------------------------------------------------------------------------------------------------------
# the peer watchdog, with a fake key-value store and clock


class FakeStore:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.down = False

    def key_value_set(self, key: str, value: str, allow_overwrite: bool = False) -> None:
        if self.down:
            raise RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service")
        self.values[key] = value

    def key_value_try_get(self, key: str) -> str:
        if self.down:
            raise RuntimeError("UNAVAILABLE: Failed to send RPC to coordination service")
        if key not in self.values:
            raise RuntimeError(f"NOT_FOUND: Config key {key} not found")
        return self.values[key]


def test_peer_watchdog_names_a_silent_peer_and_ignores_one_that_finished() -> None:
    store, now = FakeStore(), [0.0]
    dogs = [PeerWatchdog(store, i, 3, timeout=10, clock=lambda: now[0]) for i in range(3)]
    for _ in range(5):  # everybody beats
        now[0] += 1
        assert [d.poll() for d in dogs] == [[], [], []]
    dogs[2].finish()  # process 2 ended normally
    for _ in range(15):  # process 1 is gone: only 0 beats
        now[0] += 1
        lost = dogs[0].poll()
    assert lost == [1]
    assert lost_message(0, 3, lost, "no heartbeat for 10 s") == (
        "error: lost process 1 of 3 (no heartbeat for 10 s); process 0 stops too: rerun the same command (all "
        "processes) to resume from the last complete checkpoint"
    )


def test_peer_watchdog_counts_an_unreachable_coordinator_as_lost_process_0() -> None:
    store, now = FakeStore(), [0.0]
    dog = PeerWatchdog(store, 1, 2, timeout=10, clock=lambda: now[0])
    assert dog.poll() == []
    store.down = True
    now[0] += 5
    assert dog.poll() == []  # not yet: a slow answer is no failure
    now[0] += 6
    assert dog.poll() == [0]
    assert "lost process 0 (the coordinator) of 2" in lost_message(1, 2, [0], "x")


# ------------------------------------------------------------------------------------------------------------
# per-process rows


def test_dictionary_batches_generate_only_the_rows_asked_for() -> None:
    task = DictionaryTaskConfig(key_letters=16, key_len=1, value_letters=16, page_len=16)
    whole = DictionaryBatches(task, batch_size=8, window=16, k=2)
    halves = [DictionaryBatches(task, batch_size=8, window=16, k=2, rows=(r, r + 4)) for r in (0, 4)]
    for _ in range(3):
        full = next(whole)
        parts = [next(h) for h in halves]
        for key, value in full.items():
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), value, err_msg=key)
    assert halves[0].get_state() == halves[1].get_state() == whole.get_state()  # any process count resumes it
    with pytest.raises(ValueError, match="not a non-empty range"):
        DictionaryBatches(task, batch_size=8, window=16, k=2, rows=(4, 9))


class IntTokenizer:
    """Documents are space-separated token ids."""

    bos_id, eos_id, pad_id = 1, 2, 0

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in text.split()]


def test_lane_stream_packers_of_each_process_make_the_whole_batch_and_resume_with_any_split() -> None:
    from focused.data.packing import DocumentPacker, PackingConfig, merge_states

    rng = np.random.default_rng(0)
    docs = [" ".join(str(t) for t in rng.integers(3, 99, size=rng.integers(5, 60))) for _ in range(40)]
    config = PackingConfig(batch_size=8, window=16, k=2, seed=1, lane_streams=True)
    whole = DocumentPacker(docs, IntTokenizer(), config)
    parts = [DocumentPacker(docs, IntTokenizer(), config, lanes=lanes) for lanes in ((0, 2), (2, 4))]
    read: list[set[int]] = [set(), set()]
    for _ in range(5):
        full = next(whole)
        halves = [next(p) for p in parts]
        for i, half in enumerate(halves):
            read[i] |= {int(d) for d in np.unique(half["doc_ids"]) if d >= 0}
        for key in full:
            np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), full[key], err_msg=key)
    assert all(d % 4 in (0, 1) for d in read[0]) and all(d % 4 in (2, 3) for d in read[1])  # own documents only
    merged = merge_states([p.get_state() for p in parts])
    assert merged == whole.get_state()
    resumed = [DocumentPacker(docs, IntTokenizer(), config, lanes=(g, g + 1)) for g in range(4)]  # 4 "processes"
    for packer in resumed:
        packer.set_state(merged)
    for _ in range(3):
        full = next(whole)
        np.testing.assert_array_equal(np.concatenate([next(p)["inputs"] for p in resumed]), full["inputs"])
    with pytest.raises(ValueError, match="lacks some of lanes 2..3"):
        DocumentPacker(docs, IntTokenizer(), config, lanes=(2, 4)).set_state(parts[0].get_state())
    with pytest.raises(ValueError, match="needs lane_streams=True"):
        DocumentPacker(docs, IntTokenizer(), PackingConfig(batch_size=8, window=16, k=2), lanes=(0, 2))
    shared = DocumentPacker(docs, IntTokenizer(), PackingConfig(batch_size=8, window=16, k=2, seed=1))
    assert "lane_streams" not in shared.get_state()["config"]  # states of earlier runs still resume
    with pytest.raises(ValueError, match=r"different \['lane_streams'\]"):
        shared.set_state(whole.get_state())


def test_process_rows_of_a_single_process_are_the_whole_batch() -> None:
    import jax

    from focused.training import sharding as sh

    mesh = sh.make_mesh(sh.MeshConfig(data=-1), jax.devices()[:1])
    assert sh.process_rows(sh.batch_sharding(mesh), 8) == (0, 8)


# ------------------------------------------------------------------------------------------------------------
# real processes (opt-in: minutes)


@pytest.fixture(scope="module")
def one_process_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """Losses of 3 steps in 1 process x 8 devices, data x fsdp (the reference the multi-process runs must match)."""
    workdir = tmp_path_factory.mktemp("one") / "run"
    proc = launch(1, 8, train_args(workdir))
    _ok(proc)
    got = losses(workdir)
    assert sorted(got) == [1, 2, 3]
    return got


@pytest.mark.slow
def test_two_processes_match_one_process_with_crossbatch_on_data_x_fsdp(
    one_process_reference: dict[int, float], tmp_path: Path
) -> None:
    proc = launch(2, 4, train_args(tmp_path / "run"))
    _ok(proc)
    for i, (a, b) in enumerate(((0, 3), (4, 7))):  # each process reads only its own rows
        assert f"[p{i}] process {i} of 2: 4 of 8 devices, batch rows {a}..{b} of 8" in proc.stdout, proc.stdout
    got = losses(tmp_path / "run")
    print("1 x 8:", one_process_reference, "2 x 4:", got)
    np.testing.assert_allclose(
        [got[s] for s in (1, 2, 3)], [one_process_reference[s] for s in (1, 2, 3)], rtol=0, atol=1e-6
    )


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["data", "fsdp_tensor"])
def test_two_processes_train_the_other_mesh_layouts(
    layout: str, one_process_reference: dict[int, float], tmp_path: Path
) -> None:
    proc = launch(2, 4, train_args(tmp_path / "run", layout=layout))
    _ok(proc)
    got = losses(tmp_path / "run")
    print(layout, got)
    # another layout reduces in another order: equal up to float32 rounding, as in test_sharding
    np.testing.assert_allclose(
        [got[s] for s in (1, 2, 3)], [one_process_reference[s] for s in (1, 2, 3)], rtol=0, atol=1e-5
    )


@pytest.mark.slow
def test_a_checkpoint_of_two_processes_resumes_in_one_and_in_two(
    one_process_reference: dict[int, float], tmp_path: Path
) -> None:
    first = tmp_path / "two"
    _ok(launch(2, 4, train_args(first, "--config.train.steps=2", f"--config.export_dir={tmp_path / 'hf'}")))
    assert (first / "checkpoints" / "2" / "params").is_dir()
    # this (1-device) process reads it too: load_model (eval, export) and the export written by the 2 processes
    from flax import nnx

    from focused.convert import import_hf
    from focused.training.checkpoint import load_model

    loaded = jax_leaves(nnx.state(load_model(first), nnx.Param))
    exported = jax_leaves(nnx.state(import_hf(tmp_path / "hf"), nnx.Param))
    assert len(loaded) == len(exported) == 21
    for a, b in zip(loaded, exported, strict=True):
        np.testing.assert_array_equal(a, b)
    next_loss = {}
    for processes, devices in ((1, 8), (2, 4)):
        workdir = tmp_path / f"resumed_{processes}"
        shutil.copytree(first, workdir)
        proc = launch(processes, devices, train_args(workdir, "--config.train.steps=3"))
        _ok(proc)
        assert f"resumed from {workdir / 'checkpoints' / '2'}" in proc.stdout, proc.stdout
        next_loss[processes] = losses(workdir)[3]
    print("step 3 after resuming:", next_loss, "uninterrupted:", one_process_reference[3])
    assert abs(next_loss[1] - next_loss[2]) <= 1e-6, next_loss
    assert abs(next_loss[2] - one_process_reference[3]) <= 1e-6, next_loss


TEXT = (  # configs/tiny_fot.py shrunk: the demo text, CrossBatch k = 2, r = 3, each lane reading its own documents
    "--config.model.hidden_size=32",
    "--config.model.intermediate_size=64",
    "--config.model.num_hidden_layers=2",
    "--config.model.mem_layers=(1,)",
    "--config.model.max_position_embeddings=32",
    "--config.model.last_context_length=16",
    "--config.data.batch_size=8",
    "--config.data.k=2",
    "--config.data.lane_streams=True",
    "--config.train.warmup_steps=0",
    "--config.train.schedule=constant",  # a decaying schedule would depend on train.steps, which the resume changes
    "--config.train.log_every=1",
    "--config.train.async_checkpointing=False",
)


@pytest.mark.slow
def test_text_data_each_process_reads_its_own_documents_and_resumes_with_another_process_count(
    tmp_path: Path,
) -> None:
    def text_args(workdir: Path, steps: int) -> list[str]:
        return [
            "train.py",
            "--config",
            "configs/tiny_fot.py",
            f"--config.workdir={workdir}",
            *LAYOUTS["data_fsdp"],
            *TEXT,
            f"--config.train.steps={steps}",
        ]

    _ok(launch(1, 8, text_args(tmp_path / "one", 3)))
    reference = losses(tmp_path / "one")
    two = tmp_path / "two"
    proc = launch(2, 4, text_args(two, 2))
    _ok(proc)
    assert "[p1] process 1 of 2: 4 of 8 devices, batch rows 4..7 of 8" in proc.stdout
    proc = launch(1, 8, text_args(two, 3))  # the merged data state of 2 processes, resumed by 1
    _ok(proc)
    assert f"resumed from {two / 'checkpoints' / '2'}" in proc.stdout
    got = losses(two)
    print("text, 1 x 8:", reference, "2 x 4 then 1 x 8:", got)
    np.testing.assert_allclose([got[s] for s in (1, 2, 3)], [reference[s] for s in (1, 2, 3)], rtol=0, atol=1e-6)


def _start_job(workdir: Path, *extra: str) -> list[subprocess.Popen]:
    """2 processes started directly (no launcher: nobody else stops the survivor), stdout/stderr to files."""
    from focused.launch import free_port

    coordinator = f"127.0.0.1:{free_port()}"
    args = [sys.executable, *train_args(workdir, "--config.train.steps=100000", "--config.train.save_every=2", *extra)]
    workdir.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            args,
            cwd=ROOT,
            env=child_env(_env(), i, 2, 4, coordinator),
            stdout=open(workdir.parent / f"out{i}.txt", "w"),
            stderr=open(workdir.parent / f"err{i}.txt", "w"),
        )
        for i in range(2)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_killing_one_process_ends_the_other_with_one_line_and_a_rerun_resumes(victim: int, tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    job = _start_job(workdir)
    try:
        deadline = time.monotonic() + 500
        while not (workdir / "checkpoints" / "4").is_dir():
            assert time.monotonic() < deadline, "no checkpoint step 4 after 500 s"
            assert all(p.poll() is None for p in job), (tmp_path / "err0.txt").read_text()[-3000:]
            time.sleep(0.5)
        job[victim].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        survivor = job[1 - victim]
        survivor.wait(timeout=90)
        took = time.monotonic() - killed
    finally:
        for p in job:
            p.kill()
            p.wait()
    err = (tmp_path / f"err{1 - victim}.txt").read_text()
    print(f"survivor {how_it_ended(survivor.returncode)} {took:.1f} s after the kill; its last stderr line:")
    print(err.strip().splitlines()[-1][:400])
    assert took <= 60, f"the survivor took {took:.0f} s"
    assert survivor.returncode != 0
    if victim == 1:  # our own line, from the failed collective or the watchdog
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith("error: lost process 1 of 2 ("), err[-3000:]
    else:  # the coordinator is gone: JAX's error polling ends the process at once (SIGABRT), with its own line
        assert "Terminating process because the JAX distributed service detected fatal errors" in err, err[-3000:]
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    last = steps[-1]
    proc = launch(2, 4, train_args(workdir, f"--config.train.steps={last + 1}", "--config.train.save_every=2"))
    _ok(proc)
    assert f"resumed from {workdir / 'checkpoints' / str(last)}" in proc.stdout, proc.stdout[-2000:]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == last + 1  # steps after `last` were logged before the kill, and again now


@pytest.mark.slow
def test_sigterm_to_the_launcher_saves_one_checkpoint_from_all_processes_and_a_rerun_resumes(tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    args = train_args(workdir, "--config.train.steps=100000", "--config.train.save_every=2")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "focused.launch", "-n", "2", "-d", "4", "--", *args],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "err.txt", "w"),  # noqa: SIM115  (a file: a full pipe would block the job)
    )
    try:
        deadline = time.monotonic() + 500
        while not (workdir / "checkpoints" / "2").is_dir():
            assert time.monotonic() < deadline and launcher.poll() is None, "no checkpoint step 2"
            time.sleep(0.5)
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=120)
    finally:
        launcher.kill()
    err = (tmp_path / "err.txt").read_text()
    assert launcher.returncode == 143, err[-3000:]
    lines = [line for line in err.splitlines() if "interrupted by SIGTERM at step" in line]
    assert len(lines) == 2, err[-3000:]
    steps = {int(line.split("at step ")[1].split(",")[0]) for line in lines}
    assert len(steps) == 1, lines  # both processes stopped after the same step and saved it together
    (step,) = steps
    assert (workdir / "checkpoints" / str(step) / "params").is_dir()
    proc = launch(2, 4, train_args(workdir, f"--config.train.steps={step + 1}"))
    _ok(proc)
    assert f"resumed from {workdir / 'checkpoints' / str(step)}" in proc.stdout
