"""Where the right key ranks among N memory keys: a diagnostic of dictionary lookup at large memory.

A dictionary model answers a query when its memory layer's attention puts its weight on the queried definition.
Accuracy alone does not say why a large memory fails: the right key may fall out of the top-k that a kNN index
returns (a retrieval failure), or it may be returned but outscored by unrelated keys (a margin failure), and those
keys may share letters with the query (partial matches) or none. This module scores, for one eval-style document,
every query head of the memory layer against all N memory keys, exactly (numpy), and reports:

- `rank`: per (query, query head), how many memory keys score above the best position of the queried definition
  (0 = the right key is first; < k = it is among the k neighbours FAISS returns);
- `outranking`: for the keys above it (up to `per_pair` per pair), how many key letters their definition shares in
  place with the queried key, and their offset inside their item (which token of a definition they sit on);
- `direction_ranks`: the same ranks with every key scaled to unit length (by cosine: what the ranking would be if
  keys differed in direction only), and `outranking_norm`: for each key above the right one, the share of memory
  keys (of its kv head) shorter than it (near 1 = the outranking keys are the long ones).

Scope: models with exactly one memory layer and no positional encoding in it (`mem_positionals=False`, the
dictionary models): its keys depend only on the layers below, which read no memory, so every window's keys are
computed independently, and its queries are un-rotated.

Shapes: keys `[N, kv_heads, head_dim]` (one per token of the definition pages), queries `[page_len, heads, head_dim]`
(the first query page).
"""

from __future__ import annotations

import collections

import jax.numpy as jnp
import numpy as np

from focused.data.synthetic import DictionaryDocument, DictionaryTaskConfig, make_document
from focused.evals.dictionary import EVAL_STREAM, _fill_kv
from focused.model.graph import split_static
from focused.model.llama import LlamaForCausalLM

FILL_WINDOWS = 256  # windows per batched key computation


def check_model(model: LlamaForCausalLM) -> None:
    cfg = model.config
    if len(cfg.mem_layers) != 1 or cfg.mem_positionals:
        raise ValueError(
            f"key ranks need a model with one memory layer without positional encoding, got mem_layers="
            f"{tuple(cfg.mem_layers)}, mem_positionals={cfg.mem_positionals}: use a dictionary model "
            "(configs/dict_lookup_fot.py)"
        )


def memory_keys(model: LlamaForCausalLM, doc: DictionaryDocument) -> np.ndarray:
    """The memory layer's raw keys of every definition token `[defs_len, kv_heads, head_dim]` (float32)."""
    window = model.config.max_position_embeddings
    graphdef, params = split_static(model)
    out = []
    for start in range(0, doc.defs_len, FILL_WINDOWS * window):
        stop = min(start + FILL_WINDOWS * window, doc.defs_len)
        ids = jnp.asarray(doc.tokens(np.arange(start, stop)).reshape(1, -1, window))
        keys, _ = _fill_kv(graphdef, params, ids)
        out.append(np.asarray(keys[0, 0], np.float32))
    return np.concatenate(out)


def memory_queries(model: LlamaForCausalLM, doc: DictionaryDocument) -> np.ndarray:
    """The memory layer's queries on the first query page `[page_len, heads, head_dim]` (float32)."""
    cfg = model.config
    ids = jnp.asarray(doc.tokens(np.arange(doc.defs_len, doc.defs_len + cfg.max_position_embeddings))[None])
    x, _ = model.model.last_memory_layer_input(ids, None, None)
    q = model.model.layers[cfg.mem_layers[0]].self_attn.q_proj(x)
    return np.asarray(q.reshape(ids.shape[1], cfg.num_attention_heads, cfg.head_size), np.float32)


def definition_of_position(doc: DictionaryDocument) -> tuple[np.ndarray, np.ndarray]:
    """Per definition-page token: the definition it belongs to (-1 for filler) and its offset in its item."""
    task = doc.task
    pos = np.arange(doc.defs_len)
    page, within = np.divmod(pos, task.page_len)
    item, offset = np.divmod(within, task.item_len)
    first = np.concatenate([[0], np.cumsum(doc.page_defs)])
    owner = np.where(item < doc.page_defs[page], first[page] + item, -1)
    return owner, offset


def key_ranks(
    model: LlamaForCausalLM,
    task: DictionaryTaskConfig,
    memory_tokens: int,
    seed: int,
    trial: int = 0,
    per_pair: int = 5,
) -> dict:
    """Ranks of the right key for the first query page of one eval-style document (the eval's document stream:
    `seed`, N, `trial`). Returns {"memory_tokens", "ranks" `[queries, heads]`, "outranking" {(shared letters,
    offset): count}}."""
    check_model(model)
    if memory_tokens % task.page_len:
        raise ValueError(f"memory_tokens={memory_tokens} must be a multiple of the page length {task.page_len}")
    rng = np.random.default_rng([seed, EVAL_STREAM, memory_tokens, trial])
    doc = make_document(task, memory_tokens // task.page_len, rng)
    keys, queries = memory_keys(model, doc), memory_queries(model, doc)
    owner, offset = definition_of_position(doc)
    cfg = model.config
    group = cfg.num_attention_heads // cfg.kv_heads
    last_letter = int(task.markers) + task.key_len - 1  # its position predicts the value
    asked = doc.queried[: task.items_per_page]
    ranks = np.zeros((len(asked), cfg.num_attention_heads), np.int64)
    direction_ranks = np.zeros_like(ranks)
    norms = np.linalg.norm(keys, axis=-1)  # [N, kv_heads]
    sorted_norms = np.sort(norms, axis=0)
    outranking: collections.Counter = collections.Counter()
    outranking_norm: list[float] = []
    for i, definition in enumerate(asked):
        right = owner == definition
        for head in range(cfg.num_attention_heads):
            kv_head = head // group
            scores = keys[:, kv_head] @ queries[i * task.item_len + last_letter, head]
            best = scores[right].max()
            above = np.flatnonzero(scores > best)
            ranks[i, head] = len(above)
            cosines = scores / np.maximum(norms[:, kv_head], 1e-30)
            direction_ranks[i, head] = int((cosines > cosines[right].max()).sum())
            shorter = np.searchsorted(sorted_norms[:, kv_head], norms[above, kv_head])  # keys shorter than each
            outranking_norm += (shorter / len(norms)).tolist()
            for j in above[np.argsort(-scores[above])][:per_pair]:
                shared = -1 if owner[j] < 0 else int((doc.keys[owner[j]] == doc.keys[definition]).sum())
                outranking[(shared, int(offset[j]))] += 1
    return {
        "memory_tokens": memory_tokens,
        "ranks": ranks,
        "outranking": dict(outranking),
        "direction_ranks": direction_ranks,
        "outranking_norm": np.asarray(outranking_norm),
    }


def summary(result: dict, k: int = 32) -> dict:
    """Shares of (query, head) pairs with the right key first and within the top k, median and max rank, the shares
    of queries whose right key is first in at least one head / in more than half the heads (the heads' values are
    summed, so a query can be answered by a majority of heads), and the share of outranking keys that share no key
    letter with the query; the share of pairs whose right key is first by direction alone, and the median length
    share of the outranking keys (None when none outrank)."""
    ranks = result["ranks"]
    heads_first = (ranks == 0).sum(axis=1)  # [queries]
    out = result["outranking"]
    total = sum(out.values())
    none_shared = sum(v for (shared, _), v in out.items() if shared == 0)
    return {
        "memory_tokens": result["memory_tokens"],
        "pairs": int(ranks.size),
        "first": float(np.mean(ranks == 0)),
        f"top{k}": float(np.mean(ranks < k)),
        "query_first_in_a_head": float(np.mean(heads_first > 0)),
        "query_first_in_most_heads": float(np.mean(2 * heads_first > ranks.shape[1])),
        "median_rank": float(np.median(ranks)),
        "max_rank": int(ranks.max()),
        "outranking_keys": total,
        "outranking_no_shared_letter": none_shared / total if total else 0.0,
        "first_by_direction": float(np.mean(result["direction_ranks"] == 0)),
        "outranking_norm_median": float(np.median(result["outranking_norm"])) if total else None,
    }
