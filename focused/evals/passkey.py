"""Passkey retrieval (DESIGN §6), in the published format of the LongLLaMA / landmark-attention scripts.

A prompt is five lines joined by "\\n":

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. ...
    <filler prefix>
    The pass key is {k}. Remember it. {k} is the pass key.
    <filler suffix>
    What is the pass key? The pass key is

The filler is `FILLER` repeated, joined by spaces. For a filler budget of `n` characters and a trial seed, exactly as
the published generator does with numpy's legacy `RandomState(seed)`: `p = randint(0, n)` characters go before the
key line and `n - p` after it, each slice taken from the start of the repeated filler; then `k = randint(1, 50000)`.
The prompt is tokenized with `<bos>` first (what the Hugging Face LLaMA tokenizer adds).

Lengths are asked for in tokens: `filler_chars` finds the character budget whose prompt has that many tokens with
the given tokenizer (estimate from tokens per filler character, then correct on the real prompt; a few linear-time
encodes, so 256K tokens and more are cheap). Each trial is generated greedily for len(answer) tokens with
`focused.generate.generate` (LongLLaMA's prompt split and cache rules) and counts only on an exact token match.
The answer tokens are the tokens that `" {k}"` adds after the question (`answer_tokens`): with sentencepiece that is
`encode(str(k))` as in the published script; with byte-level BPE it keeps the leading space the model must write.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import ml_collections
import numpy as np
from tqdm.auto import tqdm

from focused.config import checked_fields
from focused.data.tokenizer import Tokenizer
from focused.evals.report import EvalResults, Series
from focused.generate import generate
from focused.memory.backends import MemoryConfig
from focused.model.llama import LlamaForCausalLM

TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there."
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
CALIBRATION_KEY = 12345  # a typical 5-digit key while searching the filler budget


@dataclasses.dataclass(frozen=True)
class PasskeyConfig:
    """`config.passkey`.

    lengths: prompt lengths in tokens (`<bos>` included).   trials: prompts per length (seeds seed .. seed+trials-1).
    batch_size: prompts generated together (left-padded; 1 reproduces the published one-prompt-at-a-time runs).
    last_context_length: prompt tokens kept in the local cache (0 = the checkpoint's own; for a model without
    memory layers, its whole window minus the answer, since anything before it would be lost).
    add_bos: put `<bos>` first, as the LLaMA tokenizer does.
    """

    lengths: tuple[int, ...] = (1024, 2048, 4096, 8192)
    trials: int = 10
    seed: int = 0
    batch_size: int = 1
    last_context_length: int = 0
    add_bos: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", tuple(int(n) for n in self.lengths))
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"config.passkey.lengths must be positive token counts, got {self.lengths}")
        for name in ("trials", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"config.passkey.{name} must be >= 1, got {getattr(self, name)}")
        if self.last_context_length < 0:
            raise ValueError(f"config.passkey.last_context_length must be >= 0, got {self.last_context_length}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PasskeyConfig:
        return cls(**checked_fields(cls, values, "config.passkey"))


def filler(n_chars: int) -> str:
    """The first `n_chars` characters of the filler repeated and joined by spaces (linear in n_chars)."""
    repeats = n_chars // (len(FILLER) + 1) + 1
    return " ".join([FILLER] * repeats)[:n_chars]


def build_prompt(n_chars: int, prefix_chars: int, key: int) -> str:
    """The prompt text for a filler budget of `n_chars`, `prefix_chars` of them before the key line."""
    if not 0 <= prefix_chars <= n_chars:
        raise ValueError(f"prefix_chars={prefix_chars} must be in [0, {n_chars}]")
    line = KEY_LINE.format(key=key)
    return "\n".join([TASK, filler(prefix_chars), line, filler(n_chars - prefix_chars), QUESTION])


def passkey_prompt(n_chars: int, seed: int) -> tuple[str, int, int]:
    """(prompt text, pass key, prefix characters) of one trial, drawn as the published generator draws them."""
    if n_chars < 1:
        raise ValueError(f"the filler needs at least 1 character, got {n_chars}")
    rng = np.random.RandomState(seed)
    prefix_chars = int(rng.randint(0, n_chars))
    key = int(rng.randint(1, 50000))
    return build_prompt(n_chars, prefix_chars, key), key, prefix_chars


def encode_prompt(tokenizer: Tokenizer, text: str, add_bos: bool = True) -> np.ndarray:
    """Token ids `[n]` int32 of a prompt, `<bos>` first when `add_bos`."""
    ids = tokenizer.encode(text)
    return np.asarray([tokenizer.bos_id, *ids] if add_bos else ids, np.int32)


def answer_tokens(tokenizer: Tokenizer, key: int) -> list[int]:
    """The tokens the model must generate after the question: those `" {key}"` adds to it."""
    question = tokenizer.encode(QUESTION)
    full = tokenizer.encode(f"{QUESTION} {key}")
    if full[: len(question)] == question and len(full) > len(question):
        return list(full[len(question) :])
    return list(tokenizer.encode(str(key)))  # a tokenizer that merges across the space: the published rule


def filler_chars(tokenizer: Tokenizer, target_tokens: int, add_bos: bool = True, max_rounds: int = 8) -> int:
    """The filler budget (characters) whose prompt (key line in the middle, 5-digit key) has `target_tokens`
    tokens, or as close as the tokenizer allows."""

    def count(n: int) -> int:
        return len(encode_prompt(tokenizer, build_prompt(n, n // 2, CALIBRATION_KEY), add_bos))

    bare = count(0)
    if target_tokens < bare + 8:
        raise ValueError(
            f"passkey length {target_tokens} tokens is too short: the prompt without filler already has {bare} "
            f"tokens; use lengths >= {bare + 8}"
        )
    sample = filler(64 * (len(FILLER) + 1))
    per_char = len(tokenizer.encode(sample)) / len(sample)
    n = max(round((target_tokens - bare) / per_char), 1)
    n_tokens = count(n)
    best = (n, n_tokens)
    for _ in range(max_rounds):  # Newton-like steps on the real prompt; a handful of encodes
        if n_tokens == target_tokens:
            break
        step = round((target_tokens - n_tokens) / per_char) or (1 if n_tokens < target_tokens else -1)
        n = max(n + step, 1)
        n_tokens = count(n)
        if abs(n_tokens - target_tokens) < abs(best[1] - target_tokens):
            best = (n, n_tokens)
    return best[0]


def score(outputs: np.ndarray, answers: Sequence[Sequence[int]]) -> list[bool]:
    """Exact match of each row of `outputs` `[batch, >= len(answer)]` with its answer's tokens (first tokens)."""
    if len(outputs) != len(answers):
        raise ValueError(f"{len(outputs)} outputs for {len(answers)} answers")
    return [
        len(answer) > 0 and len(row) >= len(answer) and [int(t) for t in row[: len(answer)]] == list(answer)
        for row, answer in zip(outputs, answers, strict=True)
    ]


def memory_needed(n: int, window: int, last: int, new_tokens: int) -> int:
    """Memory slots per row that generation fills: the prompt prefix, plus one window per local-cache flush."""
    prefix = max(n - last, 0)
    cache, flushes = n - prefix, 0
    for _ in range(new_tokens - 1):  # the last generated token is never fed back
        if cache + 1 > window:
            flushes, cache = flushes + 1, 0
        cache += 1
    return prefix + flushes * window


def _local_context(model: LlamaForCausalLM, cfg: PasskeyConfig, new_tokens: int) -> int:
    mcfg = model.config
    if cfg.last_context_length:
        if cfg.last_context_length > mcfg.max_position_embeddings:
            raise ValueError(
                f"config.passkey.last_context_length={cfg.last_context_length} exceeds the checkpoint's window "
                f"{mcfg.max_position_embeddings}"
            )
        return cfg.last_context_length
    if mcfg.mem_layers:
        return mcfg.last_context_length
    return max(mcfg.max_position_embeddings - new_tokens + 1, 1)


class _Batch(NamedTuple):
    trials: list[dict[str, Any]]  # seed, key, prefix_chars, prompt_tokens per row
    answers: list[list[int]]
    ids: np.ndarray  # [b, n] int32, padded (see `layout`)
    mask: np.ndarray  # [b, n] int32, 0 on padding
    last: int  # last_context_length to generate with


def layout(prompts: Sequence[np.ndarray], window: int, last: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Pads prompts `[n_i]` into `[b, K * window + last]` ids and mask so that generation computes exactly what it
    computes for each prompt alone, with one shape for every prompt (one compilation per model).

    Row i: the prefix `P_i = n_i - last` goes into K windows (K = max over rows of ceil(P_i / window)) after whole
    windows of padding, starting on a window boundary and padded at its end (padding is remembered as masked, and
    causal attention never lets a token see padding after it); the last `last` tokens fill the local cache.
    A batch mixing prompts shorter than `last` with longer ones left-pads the short ones (as `generate` does).
    """
    prefixes = [max(len(p) - last, 0) for p in prompts]
    k = max(-(-p // window) for p in prefixes)
    cache = max(len(p) - prefix for p, prefix in zip(prompts, prefixes, strict=True))  # == last if k > 0
    ids = np.full((len(prompts), k * window + cache), pad_id, np.int32)
    mask = np.zeros(ids.shape, np.int32)
    for row, (p, prefix) in enumerate(zip(prompts, prefixes, strict=True)):
        start = (k - -(-prefix // window)) * window
        ids[row, start : start + prefix], mask[row, start : start + prefix] = p[:prefix], 1
        tail = p[prefix:]
        ids[row, ids.shape[1] - len(tail) :], mask[row, ids.shape[1] - len(tail) :] = tail, 1
    return ids, mask


def _prepare(
    model: LlamaForCausalLM, tokenizer: Tokenizer, cfg: PasskeyConfig, n_chars: int, seeds: Sequence[int]
) -> _Batch:
    """Builds the prompts of `seeds`; without memory layers, keeps only what fits the local cache."""
    trials, prompts, answers = [], [], []
    for seed in seeds:
        text, key, prefix_chars = passkey_prompt(n_chars, seed)
        ids = encode_prompt(tokenizer, text, cfg.add_bos)
        trials.append({"seed": seed, "key": key, "prefix_chars": prefix_chars, "prompt_tokens": len(ids)})
        prompts.append(ids)
        answers.append(answer_tokens(tokenizer, key))
    last = _local_context(model, cfg, max(len(a) for a in answers))
    if not model.config.mem_layers:  # the prompt before the local cache could not reach the answer: skip it
        prompts = [p[-last:] for p in prompts]
    ids, mask = layout(prompts, model.config.max_position_embeddings, last, tokenizer.pad_id)
    return _Batch(trials, answers, ids, mask, last)


def run_passkey(
    model: LlamaForCausalLM,
    tokenizer: Tokenizer,
    cfg: PasskeyConfig,
    memory: MemoryConfig | None = None,
    *,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """All trials of every length for one model; one dict per length (accuracy, filler budget, trials).

    Every prompt is built and checked against the memory capacity before anything is generated.
    """
    memory = memory or MemoryConfig()
    window = model.config.max_position_embeddings
    plans = []
    for length in cfg.lengths:
        n_chars = filler_chars(tokenizer, length, cfg.add_bos)
        seeds = range(cfg.seed, cfg.seed + cfg.trials)
        batches = [
            _prepare(model, tokenizer, cfg, n_chars, seeds[i : i + cfg.batch_size])
            for i in range(0, cfg.trials, cfg.batch_size)
        ]
        for b in batches:
            n, new = b.ids.shape[1], max(len(a) for a in b.answers)
            need = memory_needed(n, window, b.last, new) if model.config.mem_layers else 0
            if memory.capacity and memory.policy == "error" and need > memory.capacity:
                raise ValueError(
                    f"passkey prompt of {n} tokens (length {length}) needs {need} memory tokens, more than "
                    f"config.memory.capacity={memory.capacity}: raise it (0 = as needed), drop the length, or set "
                    "config.memory.policy='drop_oldest'"
                )
        plans.append((length, n_chars, batches))
    original = model.config
    out = []
    try:
        for length, n_chars, batches in plans:
            rows = []
            for b in tqdm(batches, desc=f"passkey {length}", unit="batch", disable=not progress):
                rows.extend(_generate(model, tokenizer, memory, b))
            out.append(
                {
                    "length": length,
                    "filler_chars": n_chars,
                    "accuracy": sum(r["correct"] for r in rows) / len(rows),
                    "mean_prompt_tokens": float(np.mean([r["prompt_tokens"] for r in rows])),
                    "trials": rows,
                }
            )
    finally:
        model.config = original
    return out


def _generate(model: LlamaForCausalLM, tokenizer: Tokenizer, memory: MemoryConfig, b: _Batch) -> list[dict]:
    """Generates max(len(answer)) tokens greedily for the batch `[b, n]` and scores each row."""
    model.config = model.config.replace(last_context_length=b.last)
    outputs = generate(
        model,
        b.ids,
        max(len(a) for a in b.answers),
        attention_mask=b.mask,
        capacity=memory.capacity or None,
        policy=memory.policy,
        memory_cfg=memory,
        progress=False,
    )
    correct = score(outputs, b.answers)
    return [
        {
            **trial,
            "answer": answer,
            "output": [int(t) for t in row[: len(answer)]],
            "output_text": tokenizer.decode(row[: len(answer)]),
            "correct": ok,
        }
        for trial, answer, row, ok in zip(b.trials, b.answers, outputs, correct, strict=True)
    ]


def evaluate(config: ml_collections.ConfigDict, checkpoints: Sequence[Any]) -> EvalResults:
    """The passkey eval of every checkpoint (`focused.evals.runner.Checkpoint`): accuracy vs prompt tokens."""
    cfg = PasskeyConfig.from_dict(config.passkey)
    memory = MemoryConfig.from_dict(config.memory)
    series = []
    for ckpt in checkpoints:
        model, tokenizer = ckpt.load()
        points = run_passkey(model, tokenizer, cfg, memory, progress=config.progress)
        x = [float(p["length"]) for p in points]
        y = [p["accuracy"] for p in points]
        series.append(Series(label=ckpt.label, checkpoint=ckpt.path, x=x, y=y, details=points))
        del model
    description = (
        f"Passkey retrieval, exact match of greedy generation; {cfg.trials} trials per length (seeds {cfg.seed}.."
        f"{cfg.seed + cfg.trials - 1}), prompts in the published LongLLaMA format"
    )
    return EvalResults("passkey", "accuracy", "prompt tokens", description, series, higher_is_better=True)
