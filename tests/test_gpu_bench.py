"""bench/gpu.sh and bench/gpu_bench.py without a GPU: the script refuses clearly, the Python runs at toy size."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
bench = runpy.run_path(str(ROOT / "bench" / "gpu_bench.py"))


def test_the_1b_config_and_its_flop_count() -> None:
    from focused.model.llama import LlamaForCausalLM

    cfg = bench["model_config"](False)
    params = nnx.state(nnx.eval_shape(lambda: LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    total, matmul = bench["count_params"](params)
    assert 0.9e9 < total < 1.0e9 and total - matmul == 32000 * 2048  # the embedding table is a lookup
    flops = bench["train_flops"](matmul, 16, 2048, 2048, 8 * 2048)
    assert flops == 6 * matmul * 8 * 2048 + 12 * 16 * 2048 * 2048 * 8 * 2048


def test_gpu_sh_stops_with_one_line_without_a_gpu(tmp_path: Path) -> None:
    # an nvidia-smi that lists no GPU shadows any real one, so the refusal is tested on every machine
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nexit 9\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", "bench/gpu.sh", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines() == [
        "error: no NVIDIA GPU here (nvidia-smi missing or lists none): run bench/gpu.sh on a GPU machine"
    ]


def _run_tiny(tmp_path: Path, parts: str) -> dict:
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, "bench/gpu_bench.py", "--tiny", "--parts", parts, "--steps", "2", "--peak-tflops", "1"]
    proc = subprocess.run([*cmd, "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    print(json.dumps({k: v for k, v in result.items() if k.endswith("_wall_s")}))
    return result


def test_gpu_bench_train_and_faiss_parts_run_at_toy_size(tmp_path: Path) -> None:
    result = _run_tiny(tmp_path, "train,faiss")
    train = result["train"]
    assert train["tokens_per_step"] == 8 * 64 and train["step_s"] > 0
    assert train["mfu"] == pytest.approx(train["flops_per_step"] / train["step_s"] / 1e12, rel=1e-3)
    rows = result["faiss"]
    assert [(r["N"], r["use_gpu"]) for r in rows] == [(10000, True), (10000, False)]
    if result["backend"] == "cpu":  # the GPU path falls back to the CPU, and says so
        assert rows[0]["device"] == "cpu (fallback)" and rows[1]["device"] == "cpu"
        assert any("no GPU support" in w for w in rows[0]["warnings"]), rows[0]


@pytest.mark.slow
def test_gpu_bench_ingest_part_runs_at_toy_size(tmp_path: Path) -> None:
    ingest = _run_tiny(tmp_path, "ingest")["ingest"]
    assert ingest["tokens"] == 256 and ingest["logits_finite"] and ingest["tokens_per_s"] > 0
