"""Models trained by the project's configs (a few steps, tiny sizes) run through all three evals via eval.py:
tiny FoT vs the PI baseline on passkey and perplexity, dictionary FoT vs its plain baseline on key-value lookup."""

import importlib.util
import json
from pathlib import Path

import pytest

from focused.config import load_config
from focused.training.loop import train

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("eval_cli_e2e", ROOT / "eval.py")
eval_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_cli)

MICRO = [
    "--config.model.hidden_size=32",
    "--config.model.intermediate_size=48",
    "--config.model.num_hidden_layers=2",
    "--config.model.num_attention_heads=4",
    "--config.train.steps=2",
    "--config.train.warmup_steps=1",
    "--config.train.log_every=1",
    "--config.train.save_every=0",
    "--config.train.async_checkpointing=False",
]


def trained(config_file: str, workdir: Path, *extra: str) -> Path:
    train(load_config(["train.py", "--config", config_file, f"--config.workdir={workdir}", *MICRO, *extra]))
    return workdir


@pytest.fixture(scope="module")
def text_models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("trained")
    fot = trained(
        "configs/tiny_fot.py",
        root / "tiny_fot",
        "--config.model.max_position_embeddings=32",
        "--config.model.last_context_length=16",
        "--config.model.mem_layers=(1,)",
        "--config.data.source.path=focused:sotu",
    )
    pi = trained(
        "configs/tiny_pi.py",
        root / "tiny_pi",
        "--config.model.max_position_embeddings=128",
        "--config.model.last_context_length=64",
        "--config.data.source.path=focused:sotu",
    )
    return fot, pi


def outputs(out: Path) -> dict:
    assert (out / "plot.png").stat().st_size > 5000 and (out / "results.md").is_file()
    return json.loads((out / "results.json").read_text())


def test_passkey_fot_vs_pi_baseline(text_models, tmp_path):
    out = tmp_path / "passkey"
    argv = [
        "eval.py",
        "--config",
        "configs/eval_passkey.py",
        f"--config.checkpoints=('{text_models[0]}','{text_models[1]}')",
    ]
    argv += [f"--config.out_dir={out}", "--config.passkey.lengths=(120,)", "--config.passkey.trials=1"]
    assert eval_cli.main([*argv, "--config.progress=False"]) == 0
    results = outputs(out)
    assert [s["label"] for s in results["series"]] == ["tiny_fot", "tiny_pi"]


def test_perplexity_fot_vs_pi_baseline(text_models, tmp_path):
    out = tmp_path / "ppl"
    argv = [
        "eval.py",
        "--config",
        "configs/eval_perplexity.py",
        f"--config.checkpoints=('{text_models[0]}','{text_models[1]}')",
    ]
    argv += [f"--config.out_dir={out}", "--config.source.path=focused:sotu", "--config.perplexity.memory_windows=(0,1)"]
    argv += ["--config.perplexity.score_windows=1", "--config.perplexity.num_documents=2", "--config.progress=False"]
    assert eval_cli.main(argv) == 0
    results = outputs(out)
    assert all(y > 1 for s in results["series"] for y in s["y"])


def test_dictionary_fot_vs_plain_baseline(tmp_path):
    fot = trained("configs/dict_lookup_fot.py", tmp_path / "dict_fot", "--config.model.mem_layers=(1,)")
    base = trained("configs/dict_lookup_baseline.py", tmp_path / "dict_base")
    out = tmp_path / "dictionary"
    argv = ["eval.py", "--config", "configs/eval_dictionary.py", f"--config.checkpoints=('{fot}','{base}')"]
    argv += [f"--config.out_dir={out}", "--config.dictionary.sizes=(1024,)", "--config.dictionary.trials=1"]
    argv += [f"--config.memory.index.values_path={tmp_path / 'memmap'}", "--config.progress=False"]
    assert eval_cli.main(argv) == 0
    results = outputs(out)
    assert [s["label"] for s in results["series"]] == ["dict_fot", "dict_base"]
    assert all(0 <= y <= 1 for s in results["series"] for y in s["y"])
