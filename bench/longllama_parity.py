"""Parity of focused against the official LongLLaMA PyTorch implementation (CStanKonrad/long_llama, `src/`).

A tiny random focused model is exported with `focused.convert.export_hf(..., format="longllama")`, loaded by the
official `LongLlamaForCausalLM.from_pretrained` in a separate Python environment (old transformers + torch), and
both sides compute, in float32:

1. logits of a multi-window prompt: the official forward (`_handle_long_input`: the first n - last_context_length
   tokens in windows of max_position_embeddings go to memory, the rest through the local cache) vs focused
   (`forward_long` over the same prefix, then the remaining tokens through the local cache attending to memory);
   the last logit is also checked against `focused.generate.ingest`;
2. greedy generation of `--new-tokens` tokens (enough to overflow the local cache into memory): official
   `generate(use_cache=True)` vs `focused.generate.generate`, and the per-step logits, with focused
   teacher-forced on the official tokens through `focused.generate.decode`.

No official code is copied here: the official modules are imported from `--official-src` (a folder holding
`modeling_longllama.py`, `configuration_longllama.py`, `longllama_utils.py`, e.g. exported with
`git show HEAD:src/<file>` from the official repository) by a child process run with `--python`.

    python bench/longllama_parity.py --official-src /tmp/longllama_src --python /tmp/llvenv/bin/python

Exit status 0 when every logit agrees within `--tol` and the greedy tokens are identical.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

OFFICIAL_PACKAGE = "longllama_official"


# ---------------------------------------------------------------------------------------------------------------
# official side (runs in the scratch environment: torch + transformers ~4.33, no jax / focused)


def _import_official(src: Path):
    """Imports the official modules from `src` as the package `longllama_official` (they use relative imports)."""
    import importlib
    import types

    package = types.ModuleType(OFFICIAL_PACKAGE)
    package.__path__ = [str(src)]
    sys.modules[OFFICIAL_PACKAGE] = package
    modeling = importlib.import_module(f"{OFFICIAL_PACKAGE}.modeling_longllama")
    configuration = importlib.import_module(f"{OFFICIAL_PACKAGE}.configuration_longllama")
    return modeling, configuration


def run_official(args: argparse.Namespace) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    modeling, configuration = _import_official(Path(args.official_src))
    config = configuration.LongLlamaConfig.from_pretrained(args.hf_dir)
    config.torch_attention = False
    model = modeling.LongLlamaForCausalLM.from_pretrained(args.hf_dir, config=config, torch_dtype=torch.float32)
    model.eval()
    # greedy generation must not stop early at a random eos: switch eos off on both sides
    model.generation_config.eos_token_id = None
    work = Path(args.work_dir)
    ids = torch.from_numpy(np.load(work / "prompt.npy")).long()
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=args.new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            eos_token_id=None,
            pad_token_id=model.config.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
    np.save(work / "official_logits.npy", logits.float().numpy())
    np.save(work / "official_tokens.npy", out.sequences[:, ids.shape[1] :].numpy().astype(np.int32))
    np.save(work / "official_scores.npy", torch.stack(out.scores, dim=1).float().numpy())
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__}
    (work / "official_versions.json").write_text(json.dumps(versions))


# ---------------------------------------------------------------------------------------------------------------
# focused side


def build_model(args: argparse.Namespace):
    """A tiny random LongLLaMA-shaped focused model (no GQA: the official code has none)."""
    from flax import nnx

    from focused import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=None,
        max_position_embeddings=args.window,
        last_context_length=args.last_context_length,
        mem_layers=(1, 3),
        mem_dtype="float32",
        mem_positionals=not args.no_positionals,
        rms_norm_eps=1e-6,
    )
    model = LlamaForCausalLM(config, rngs=nnx.Rngs(args.seed))
    # random weights: N(0, std) matrices, 1 + N(0, 0.1) norm weights
    rng = np.random.default_rng(args.seed)
    state = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        noise = rng.normal(size=var.shape)
        value = 1 + 0.1 * noise if path[-1] == "weight" else args.std * noise
        var[...] = value.astype(var[...].dtype)
    nnx.update(model, state)
    return model


def focused_prompt_logits(model, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits `[batch, n, vocab]` of the whole prompt following the official split, `ingest`'s last logit, and
    (a control) the local chunk's logits computed without memory."""
    from focused.generate import ingest, init_cache
    from focused.memory.dense import forward_long, memory_blocks

    cfg = model.config
    n = ids.shape[1]
    prefix = max(n - cfg.last_context_length, 0)
    parts = []
    memory = None
    if prefix:
        prefix_logits, memory = forward_long(model, ids[:, :prefix])
        parts.append(np.asarray(prefix_logits))
    blocks = memory_blocks(memory) if memory is not None else None
    out = model(ids[:, prefix:], memory=blocks, cache=init_cache(cfg, ids.shape[0]))
    parts.append(np.asarray(out.logits))
    # control: the same local chunk without memory, to show that memory changes the logits being compared
    no_memory = np.asarray(model(ids[:, prefix:], cache=init_cache(cfg, ids.shape[0])).logits)
    state = ingest(model, ids, progress=False)
    return np.concatenate(parts, axis=1), np.asarray(state.logits), no_memory


def focused_forced_scores(model, ids: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Next-token logits `[batch, steps, vocab]` before each of `tokens`, teacher-forced through `decode`."""
    from focused.generate import decode, ingest

    n, steps = ids.shape[1], tokens.shape[1]
    window = model.config.max_position_embeddings
    capacity = max(-(-(n + steps + window) // window) * window, window)
    state = ingest(model, ids, capacity=capacity, progress=False)
    scores = [np.asarray(state.logits)]
    for step in range(steps - 1):
        state = decode(model, state, tokens[:, step])
        scores.append(np.asarray(state.logits))
    return np.stack(scores, axis=1)


def main(args: argparse.Namespace) -> int:
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    import flax

    from focused.convert import export_hf
    from focused.generate import generate

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="longllama_parity_"))
    work.mkdir(parents=True, exist_ok=True)
    hf_dir = Path(args.hf_dir or work / "hf")
    model = build_model(args)
    cfg = model.config
    export_hf(model, cfg, hf_dir, format="longllama", overwrite=True)
    rng = np.random.default_rng(args.seed + 1)
    ids = rng.integers(3, cfg.vocab_size, size=(1, args.prompt_len)).astype(np.int32)  # no pad/bos/eos ids
    np.save(work / "prompt.npy", ids)

    command = [
        args.python,
        str(Path(__file__).resolve()),
        "--role",
        "official",
        "--official-src",
        str(Path(args.official_src).resolve()),
        "--hf-dir",
        str(hf_dir),
        "--work-dir",
        str(work),
        "--new-tokens",
        str(args.new_tokens),
    ]
    print("official side:", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    official_logits = np.load(work / "official_logits.npy")
    official_tokens = np.load(work / "official_tokens.npy")
    official_scores = np.load(work / "official_scores.npy")
    official_versions = json.loads((work / "official_versions.json").read_text())

    logits, ingest_last, no_memory = focused_prompt_logits(model, ids)
    tokens = generate(model, ids, args.new_tokens, progress=False)
    forced = focused_forced_scores(model, ids, official_tokens)

    n = ids.shape[1]
    prefix = max(n - cfg.last_context_length, 0)
    window = cfg.max_position_embeddings
    diff = np.abs(logits - official_logits).max(axis=(0, 2))
    mem_windows = [(s, min(s + window, prefix)) for s in range(0, prefix, window)]
    results = {
        "prompt_len": n,
        "memory_windows": mem_windows,
        "local_chunk": [prefix, n],
        "max_abs_diff_prompt_logits": float(diff.max()),
        "max_abs_diff_prefix_logits": float(diff[:prefix].max()) if prefix else None,
        "max_abs_diff_local_logits": float(diff[prefix:].max()),
        "control_local_logits_without_memory": float(np.abs(no_memory - official_logits[:, prefix:]).max()),
        "max_abs_diff_ingest_last_logit": float(np.abs(ingest_last - official_logits[:, -1]).max()),
        "max_abs_diff_generation_logits": float(np.abs(forced - official_scores).max()),
        "max_abs_diff_generation_logits_per_step": np.abs(forced - official_scores).max(axis=(0, 2)).tolist(),
        "logit_scale": float(np.abs(official_logits).max()),
        "greedy_tokens_identical": bool(np.array_equal(tokens, official_tokens)),
        "official_tokens": official_tokens.tolist(),
        "focused_tokens": tokens.tolist(),
        "versions": {"jax": jax.__version__, "flax": flax.__version__, "official_env": official_versions},
    }
    first_overflow = window - min(n, cfg.last_context_length) + 1  # decode step whose input finds a full cache
    results["cache_overflows_during_generation"] = max(0, (args.new_tokens - 1 - first_overflow) // window + 1)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    for key, value in results.items():
        if key != "max_abs_diff_generation_logits_per_step":
            print(f"{key}: {value}")
    print(f"(results and arrays in {work})")
    ok = (
        results["max_abs_diff_prompt_logits"] <= args.tol
        and results["max_abs_diff_ingest_last_logit"] <= args.tol
        and results["max_abs_diff_generation_logits"] <= args.tol
        and results["greedy_tokens_identical"]
    )
    print("PARITY OK" if ok else f"PARITY FAILED (tolerance {args.tol})")
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-src", required=True, help="folder with the official src/*.py files")
    parser.add_argument("--python", default=sys.executable, help="python of the environment with torch+transformers")
    parser.add_argument("--hf-dir", default=None, help="where to export the model (default: <work-dir>/hf)")
    parser.add_argument("--work-dir", default=None, help="folder for the exported arrays (default: a temp dir)")
    parser.add_argument("--prompt-len", type=int, default=150)
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--window", type=int, default=32, help="max_position_embeddings")
    parser.add_argument("--last-context-length", type=int, default=16)
    parser.add_argument("--no-positionals", action="store_true", help="mem_positionals=False (NoPE memory layers)")
    parser.add_argument("--std", type=float, default=0.05, help="std of the random weight matrices")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--role", choices=("main", "official"), default="main", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.role == "official":
        run_official(arguments)
    else:
        sys.exit(main(arguments))
