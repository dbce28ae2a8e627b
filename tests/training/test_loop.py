"""The training loop on a micro model: it learns, logs, checkpoints, and resumes to identical losses."""

import json

import pytest

from focused.config import load_config
from focused.training.checkpoint import load_model
from focused.training.loop import train
from focused.training.step import loss_positions
from tests.training.micro import MICRO_MODEL


def micro_config(workdir, steps, **train_overrides):
    argv = [
        "train.py",
        "--config",
        "configs/tiny.py",
        f"--config.workdir={workdir}",
        *MICRO_MODEL,
        "--config.data.batch_size=4",
        "--config.data.source.path=focused:moby_dick",
        f"--config.train.steps={steps}",
        "--config.train.warmup_steps=2",
        "--config.train.learning_rate=0.01",
        "--config.train.log_every=1",
        "--config.train.save_every=3",
        "--config.train.async_checkpointing=False",
    ]
    argv += [f"--config.train.{k}={v}" for k, v in train_overrides.items()]
    return load_config(argv)


def losses(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def test_train_learns_and_resumes_identically(tmp_path):
    full = tmp_path / "full"
    train(micro_config(full, 6))
    reference = losses(full)
    assert sorted(reference) == [1, 2, 3, 4, 5, 6]
    assert reference[6] < reference[1] - 0.3, reference  # it learns (from ~ln 4096 = 8.3)
    assert (full / "tensorboard").is_dir() and (full / "checkpoints" / "6").is_dir()

    split = tmp_path / "split"
    train(micro_config(split, 3))
    train(micro_config(split, 6))  # the same command with more steps resumes from step 3
    resumed = losses(split)
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6)
    model = load_model(split)
    assert model.config.hidden_size == 32


def test_accumulation_matches_one_big_batch(tmp_path):
    one = tmp_path / "one"
    two = tmp_path / "two"
    train(micro_config(one, 2))
    train(micro_config(two, 2, accum_steps=2))
    a, b = losses(one), losses(two)
    assert a[2] == pytest.approx(b[2], abs=2e-5)


def test_bad_accumulation_split_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match="divisible by accum_steps"):
        train(micro_config(tmp_path / "x", 2, accum_steps=3))


def test_non_finite_learning_rate_is_a_config_error(tmp_path):
    with pytest.raises(ValueError, match=r"config.train.learning_rate=inf must be a finite number"):
        train(micro_config(tmp_path / "nan", 2, learning_rate=float("inf"), warmup_steps=0))
    assert not (tmp_path / "nan").exists()


def test_dry_run_plans_longllama_3b_without_weights_or_data():
    config = load_config(
        ["train.py", "--config", "configs/longllama_3b.py", "--config.dry_run=True", "--config.dry_run_devices=128"]
    )
    report = train(config)
    assert abs(report["num_parameters"] - 3.43e9) < 0.01e9
    assert report["num_devices"] == 128


def test_missing_init_checkpoint_or_data_path_names_the_field(tmp_path):
    config = load_config(["train.py", "--config", "configs/longllama_3b.py", f"--config.workdir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="config.init_from=open_llama_3b"):
        train(config)
    config = load_config(
        [
            "train.py",
            "--config",
            "configs/longllama_3b.py",
            f"--config.init_from={tmp_path}",
            f"--config.workdir={tmp_path}",
        ]
    )
    with pytest.raises(ValueError, match="config.data.source.path is empty"):
        train(config)


def test_batch_not_divisible_by_k_is_a_config_error(tmp_path):
    config = load_config(
        ["train.py", "--config", "configs/tiny_fot.py", "--config.data.batch_size=6", f"--config.workdir={tmp_path}"]
    )
    with pytest.raises(ValueError, match="not divisible by config.data.k=4"):
        train(config)


def test_eval_export_and_init_from_the_exported_folder(tmp_path):
    run = tmp_path / "run"
    hf = tmp_path / "hf"
    config = micro_config(run, 2, eval_every=2, eval_batches=1)
    config.unlock()
    config.data.eval_source.path = "focused:sotu"
    config.export_dir = str(hf)
    train(config)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["split"] == "eval"]
    assert len(evals) == 1 and evals[0]["step"] == 2 and evals[0]["perplexity"] > 1
    assert json.loads((hf / "config.json").read_text())["model_type"] == "longllama"
    # continue from the exported Hugging Face folder, as LongLLaMA was made from OpenLLaMA
    again = micro_config(tmp_path / "again", 1, warmup_steps=0)
    again.unlock()
    again.init_from = str(hf)
    last = train(again)
    assert last["loss"] < 8.25  # starts from the trained weights (a fresh model starts at ln 4096 = 8.32)


def test_sparse_logits_train_exactly_like_every_position(tmp_path, monkeypatch):
    """Dictionary lookup counts only query values (1 position in 4 of a query row, none in a definitions row):
    the default path computes logits and the last (memory) layer only there, and trains like the full one."""
    from focused.training import loop

    widths = []

    def spy(mask, most=None):
        out = loss_positions(mask, most)
        widths.append(None if out is None else out.shape[1])
        return out

    monkeypatch.setattr(loop, "loss_positions", spy)

    def run(name, sparse):
        workdir = tmp_path / name
        argv = [
            "train.py",
            "--config",
            "configs/dict_lookup_fot.py",
            f"--config.workdir={workdir}",
            "--config.data.batch_size=8",
            "--config.fot.initial_range=-1",
            "--config.fot.cross_batch_range=5",
            "--config.train.steps=3",
            "--config.train.log_every=1",
            "--config.train.save_every=0",
            "--config.train.async_checkpointing=False",
            "--config.model.attention_impl=flash",
            f"--config.train.sparse_logits={sparse}",
        ]
        train(load_config(argv))
        return losses(workdir)

    full = run("full", False)
    assert widths == []
    sparse = run("sparse", True)
    assert widths == [16, 16, 16]  # 16 queries a page, 64 positions: the sparse path ran every step
    assert sorted(full) == [1, 2, 3]
    for step in (1, 2, 3):
        assert sparse[step] == pytest.approx(full[step], rel=1e-5)
