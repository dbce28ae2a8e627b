"""Perplexity vs memory size (DESIGN §6): long documents read window by window, memory limited to m windows.

Protocol, for a model with window W (its `max_position_embeddings`, or `config.perplexity.window`), the memory
sizes m in `memory_windows` (M = the largest) and S = `score_windows`:

- Documents: the first `num_documents` documents of the source with at least (M + S)·W + 1 tokens (`<bos>` first);
  of each, the first (M + S)·W + 1 tokens: M + S windows of inputs, each target the next token.
- single: each document alone. Its M + S windows are read in order with memory capacity m·W tokens, oldest dropped
  first (`drop_oldest`), so window j sees windows j-m .. j-1 through memory. Only the last S windows are scored:
  each of them has m full windows of its own document in memory, and every m scores the same S·W tokens.
- distractors: D = `distractors` other documents (for target i: eligible documents i+1 .. i+D, cyclically) are
  interleaved window by window before the target: d1 window j, ..., dD window j, target window j, for j = 0..M+S-1,
  with memory capacity (D + 1)·m·W. A scored target window then has its own previous m windows in memory plus the
  same windows of D unrelated documents ((D+1)·m·W memory tokens), and is scored on the same tokens as `single`.
- m = 0: no memory (each scored window alone).

PPL = exp(total token loss / scored tokens) over all documents, for each m; x = (m + 1)·W, the tokens of context a
scored window can reach.

A model without memory layers reads instead the (D+1)·m·W tokens before each scored window as local context, as far
as its own window reaches (its `max_position_embeddings` minus W: nothing for a model trained at W, 3W for a 4x
context-extension baseline such as PI or YaRN evaluated with `window` = W), and scores the same tokens; beyond its
reach every m computes the same thing (computed once).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from focused.config import checked_fields
from focused.data import DataSourceConfig, Tokenizer, load_documents
from focused.evals.report import EvalResults, Series
from focused.memory.backends import MemoryConfig, run_long
from focused.memory.dense import init_memory, window_step
from focused.model.graph import StaticGraph, merge, split_static
from focused.model.llama import LlamaForCausalLM

SETTINGS = ("single", "distractors")


@dataclasses.dataclass(frozen=True)
class PerplexityConfig:
    """`config.perplexity` (see the module docstring for the protocol).

    memory_windows: memory sizes m, in windows (0 = no memory).   score_windows: S, windows scored per document.
    num_documents: documents scored.   scan_documents: how many documents to look through for long-enough ones.
    settings: "single" and/or "distractors".   distractors: D, other documents interleaved with each target.
    batch_size: documents processed together.   window: W (0 = the checkpoint's max_position_embeddings).
    add_bos: `<bos>` before each document.
    """

    memory_windows: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32, 64)
    score_windows: int = 4
    num_documents: int = 4
    scan_documents: int = 1000
    settings: tuple[str, ...] = SETTINGS
    distractors: int = 3
    batch_size: int = 1
    window: int = 0
    add_bos: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "memory_windows", tuple(sorted({int(m) for m in self.memory_windows})))
        object.__setattr__(self, "settings", tuple(self.settings))
        if not self.memory_windows or self.memory_windows[0] < 0:
            raise ValueError(f"config.perplexity.memory_windows must be sizes >= 0, got {self.memory_windows}")
        for name in ("score_windows", "num_documents", "scan_documents", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"config.perplexity.{name} must be >= 1, got {getattr(self, name)}")
        bad = [s for s in self.settings if s not in SETTINGS]
        if bad or not self.settings:
            raise ValueError(f"config.perplexity.settings {self.settings} must be a non-empty subset of {SETTINGS}")
        if "distractors" in self.settings and self.distractors < 1:
            raise ValueError(f"config.perplexity.distractors must be >= 1 for that setting, got {self.distractors}")
        if self.window < 0:
            raise ValueError(f"config.perplexity.window must be >= 0, got {self.window}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PerplexityConfig:
        return cls(**checked_fields(cls, values, "config.perplexity"))

    @property
    def pool_size(self) -> int:
        """Documents needed: the targets, and at least D + 1 when distractors are drawn from them."""
        return max(self.num_documents, self.distractors + 1 if "distractors" in self.settings else 1)


def document_spans(
    documents: Iterable[str], tokenizer: Tokenizer, length: int, count: int, *, add_bos: bool = True, scan: int = 1000
) -> tuple[np.ndarray, list[int]]:
    """The first `length` tokens `[count, length]` int32 of the first `count` documents that have that many, and
    their indices in the source."""
    spans, indices, seen, longest = [], [], 0, 0
    for index, text in enumerate(documents):
        if index >= scan or len(spans) == count:
            break
        if not text:
            continue
        seen += 1
        ids = ([tokenizer.bos_id] if add_bos else []) + tokenizer.encode(text)
        longest = max(longest, len(ids))
        if len(ids) >= length:
            spans.append(np.asarray(ids[:length], np.int32))
            indices.append(index)
    if seen == 0:
        raise ValueError(
            f"the perplexity source holds no documents with text in the first {scan}: check config.source (path, "
            "split, data_files, text_field)"
        )
    if len(spans) < count:
        raise ValueError(
            f"only {len(spans)} of {seen} documents have the {length} tokens needed and {count} are needed (longest: "
            f"{longest}): use longer documents, smaller memory_windows / score_windows, or fewer documents"
        )
    return np.stack(spans), indices


def streams(
    spans: np.ndarray, targets: int, distractors: int, window: int, n_windows: int, scored: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows for the first `targets` documents of `spans` `[pool, n_windows * window + 1]`: each target's windows
    with `distractors` other documents' windows interleaved before each of them (0 = the single setting).

    Returns (inputs, labels, weights), each `[targets, (distractors + 1) * n_windows * window]`; weights are 1 on
    the target's last `scored` windows and 0 elsewhere.
    """
    pool, group = len(spans), distractors + 1
    if group > pool:
        raise ValueError(f"{distractors} distractors need {group} documents, only {pool} are long enough")
    shape = (targets, group * n_windows * window)
    inputs, labels, weights = np.zeros(shape, np.int32), np.zeros(shape, np.int32), np.zeros(shape, np.float32)
    for row in range(targets):
        order = [(row + 1 + i) % pool for i in range(distractors)] + [row]
        for j in range(n_windows):
            for slot, doc in enumerate(order):
                at = slice((j * group + slot) * window, (j * group + slot + 1) * window)
                inputs[row, at] = spans[doc, j * window : (j + 1) * window]
                labels[row, at] = spans[doc, j * window + 1 : (j + 1) * window + 1]
                weights[row, at] = float(doc == row and j >= n_windows - scored)
    return inputs, labels, weights


@jax.jit
def _nll(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Weighted sums of token losses and weights per row: logits `[b, t, vocab]`, labels / weights `[b, t]`."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return (ce * weights).sum(-1), weights.sum(-1)


@functools.partial(jax.jit, static_argnames=("graphdef", "skip"))
def _local_nll(
    graphdef: StaticGraph, params: nnx.State, ids: jax.Array, labels: jax.Array, weights: jax.Array, skip: int
) -> tuple[jax.Array, jax.Array]:
    """`_nll` of the positions after the first `skip` of `[b, skip + t]` tokens read in one local window."""
    logits = merge(graphdef, params)(ids).logits[:, skip:]
    return _nll(logits, labels, weights)


def stream_nll(
    model: LlamaForCausalLM,
    inputs: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    capacity: int,
    memory: MemoryConfig,
    window: int,
    local_context: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(loss sum `[rows]`, weight sum `[rows]`) of `[rows, T]` streams read in windows of `window` with a
    `drop_oldest` memory of `capacity` tokens per row (0 = no memory: only weighted windows are run).

    local_context (models without memory layers, capacity 0): each scored window is read together with up to this
    many tokens before it in one local window (positions from 0), scoring only the window itself.
    """
    rows, total = inputs.shape
    graphdef, params = split_static(model)
    loss, count = np.zeros(rows), np.zeros(rows)
    if local_context:
        if capacity or model.config.mem_layers:
            raise ValueError("local_context is for models without memory layers (capacity 0)")
        for start in range(0, total, window):
            at = slice(start, start + window)
            if weights[:, at].any():
                skip = min(local_context, start)
                ids = inputs[:, start - skip : start + window]
                s, c = _local_nll(graphdef, params, ids, labels[:, at], weights[:, at], skip)
                loss, count = loss + np.asarray(s), count + np.asarray(c)
        return loss, count
    if capacity and memory.backend == "faiss":
        cfg = dataclasses.replace(memory, capacity=capacity, policy="drop_oldest")
        logits = run_long(model, inputs, None, cfg)
        for start in range(0, total, window):
            at = slice(start, start + window)
            if weights[:, at].any():
                s, c = _nll(logits[:, at], labels[:, at], weights[:, at])
                loss, count = loss + np.asarray(s), count + np.asarray(c)
        return loss, count
    state = init_memory(model.config, rows, capacity) if capacity else None
    top_k = memory.top_k if memory.backend == "topk" else None
    valid = jnp.ones((rows, window), bool)
    for start in range(0, total, window):
        at = slice(start, start + window)
        scored = bool(weights[:, at].any())
        if state is None and not scored:
            continue
        # no memory: an empty one-window memory (every slot masked) for each window, the same compiled step
        current = init_memory(model.config, rows, window) if state is None else state
        logits, current = window_step(graphdef, params, current, inputs[:, at], valid, top_k)
        state = None if state is None else current
        if scored:
            s, c = _nll(logits, labels[:, at], weights[:, at])
            loss, count = loss + np.asarray(s), count + np.asarray(c)
    return loss, count


def run_perplexity(
    model: LlamaForCausalLM,
    tokenizer: Tokenizer,
    documents: Iterable[str],
    cfg: PerplexityConfig,
    memory: MemoryConfig | None = None,
    *,
    progress: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """PPL per memory size for each setting: `{setting: [{m, ppl, nll, scored_tokens, ...} per m]}`."""
    memory = memory or MemoryConfig()
    if memory.capacity:
        raise ValueError(
            "the perplexity eval sizes memory from config.perplexity.memory_windows: leave "
            f"config.memory.capacity at 0 (got {memory.capacity})"
        )
    own = model.config.max_position_embeddings
    window = cfg.window or own
    if window > own:
        raise ValueError(f"config.perplexity.window={window} exceeds the checkpoint's window {own}")
    n_windows = max(cfg.memory_windows) + cfg.score_windows
    spans, indices = document_spans(
        documents, tokenizer, n_windows * window + 1, cfg.pool_size, add_bos=cfg.add_bos, scan=cfg.scan_documents
    )
    has_memory = bool(model.config.mem_layers)
    out: dict[str, list[dict[str, Any]]] = {}
    for setting in cfg.settings:
        d = cfg.distractors if setting == "distractors" else 0
        points, scored = [], {}
        for m in tqdm(cfg.memory_windows, desc=f"ppl {setting}", unit="m", disable=not progress):
            reach = (d + 1) * m * window
            # without memory layers: what precedes a scored window as far as the model's own window reaches
            local = 0 if has_memory else min(reach, own - window)
            key = reach if has_memory else local  # without memory layers most m compute the same thing
            if key not in scored:
                scored[key] = _score(model, spans, cfg, d, window, n_windows, reach if has_memory else 0, memory, local)
            loss, count = scored[key]
            points.append(
                {
                    "m": m,
                    "context_tokens": (m + 1) * window,
                    "memory_tokens": reach,
                    "local_context_tokens": local,
                    "scored_tokens": int(count.sum()),
                    "nll": float(loss.sum() / count.sum()),
                    "ppl": math.exp(loss.sum() / count.sum()),
                    "document_ppl": [math.exp(a / b) for a, b in zip(loss, count, strict=True)],
                    "documents": indices[: cfg.num_documents],
                    "distractors": d,
                }
            )
        out[setting] = points
    return out


def _score(
    model: LlamaForCausalLM,
    spans: np.ndarray,
    cfg: PerplexityConfig,
    distractors: int,
    window: int,
    n_windows: int,
    capacity: int,
    memory: MemoryConfig,
    local_context: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(loss, count) per target document `[num_documents]`, in batches of `batch_size` rows."""
    inputs, labels, weights = streams(spans, cfg.num_documents, distractors, window, n_windows, cfg.score_windows)
    parts = []
    for i in range(0, cfg.num_documents, cfg.batch_size):
        rows = slice(i, i + cfg.batch_size)
        part = stream_nll(model, inputs[rows], labels[rows], weights[rows], capacity, memory, window, local_context)
        parts.append(part)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _quiet_load(source: DataSourceConfig) -> Iterable[str]:
    """`load_documents` without the datasets progress bars (restored afterwards)."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        return load_documents(source)
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def evaluate(config: ml_collections.ConfigDict, checkpoints: Sequence[Any]) -> EvalResults:
    """Perplexity vs memory of every checkpoint (`focused.evals.runner.Checkpoint`), one series per setting."""
    cfg = PerplexityConfig.from_dict(config.perplexity)
    memory = MemoryConfig.from_dict(config.memory)
    source = DataSourceConfig.from_dict(config.source)
    documents = _quiet_load(source) if not config.progress else load_documents(source)
    if not any(text for text in itertools.islice(documents, cfg.scan_documents)):
        raise ValueError(f"config.source {source.path!r} (split {source.split!r}) holds no documents with text")
    series = []
    for ckpt in checkpoints:
        model, tokenizer = ckpt.load()
        found = run_perplexity(model, tokenizer, documents, cfg, memory, progress=config.progress)
        for setting, points in found.items():
            x = [float(p["context_tokens"]) for p in points]
            y = [p["ppl"] for p in points]
            series.append(Series(ckpt.label, ckpt.path, x, y, setting=setting, details=points))
        del model
    description = (
        f"Perplexity on {source.path} ({cfg.num_documents} documents, the last {cfg.score_windows} of "
        f"{max(cfg.memory_windows) + cfg.score_windows} windows scored) with memory of m windows, m in "
        f"{list(cfg.memory_windows)}; x = (m + 1) x window tokens; distractors setting: {cfg.distractors} other "
        "documents interleaved window by window"
    )
    return EvalResults("perplexity", "perplexity", "context tokens", description, series, higher_is_better=False)
