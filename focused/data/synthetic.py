"""Synthetic tasks: dictionary lookup (key-value retrieval), the FoT paper's memory benchmark (DESIGN §6).

A document is a block of definitions followed by a block of queries:

    <bos> <k> k1 k2 k3 k4 <v> v1 v2 v3 v4  <k> ... <v> ...  <f> <f>     definitions (``defs_len`` tokens)
    <q> k1 k2 k3 k4 <v> v1 v2 v3 v4  <q> ... <v> ...  <f> <f>           queries (``query_len`` tokens)

Keys and values are ``key_len`` / ``value_len`` letters from an alphabet of ``num_letters`` (paper: 64 letters,
4 + 4). Keys never repeat inside a document; each query repeats the key of a definition of the same document and
must be answered with its value. Each block is filled to its length with ``<f>``. Training documents have
``doc_len = 512`` tokens, the first half definitions and the second half queries; the eval documents of
``focused.evals.dictionary`` grow the definitions block and keep the last ``query_len = 256`` tokens as queries.

Token ids (``offset`` is added to every id, so the task can live inside a larger model vocabulary):

    0 <pad>   1 <bos>   2 <eos> (reserved, never emitted)   3 <k>   4 <v>   5 <q>   6 <f> (filler)
    7 ... 7 + num_letters - 1: the letters

so a model needs ``vocab_size >= offset + 7 + num_letters`` (71 for the paper's alphabet at offset 0).

Only query values are scored: with the next-token convention of ``focused.data.packing`` (``inputs[t]`` predicts
``targets[t]``), ``loss_mask[t]`` is 1 exactly where ``targets[t]`` is one of v1..v4 of a query.

``DictionaryBatches`` lays documents back to back in ``batch_size // k`` lanes and cuts each lane into windows of
``W`` tokens; batch rows ``g*k … g*k+k-1`` are ``k`` consecutive windows of lane ``g`` (document-aware k-packing,
as ``DocumentPacker`` does), so with ``W = 256`` and ``k = 2`` a group holds the definitions and then the queries of
one document and CrossBatch row ``2g+1`` sees its own definitions at row ``2g``. Every document is a pure function
of ``(seed, split, lane, index)``, so the iterator state is just the number of batches served.
"""

from __future__ import annotations

import collections
import dataclasses
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from focused.config import checked_fields

PAD, BOS, EOS, KEY, VALUE, QUERY, FILL = range(7)
NUM_SPECIALS = 7
SYNTHETIC_TASKS = ("dictionary",)
STATE_FORMAT = 1
Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DictionaryTaskConfig:
    """`config.data.synthetic`: the shape of the dictionary task.

    num_letters: alphabet of keys and values (paper: 64).   key_len, value_len: letters per key / value (4, 4).
    doc_len: tokens per training document (512).   query_len: tokens of queries at the end of a document (256).
    offset: added to every token id (see the module docstring for the layout).
    """

    num_letters: int = 64
    key_len: int = 4
    value_len: int = 4
    doc_len: int = 512
    query_len: int = 256
    offset: int = 0

    def __post_init__(self) -> None:
        for name in ("num_letters", "key_len", "value_len", "doc_len", "query_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"dictionary task {name} must be a positive int, got {value!r}")
        if not isinstance(self.offset, int) or self.offset < 0:
            raise ValueError(f"dictionary task offset must be a non-negative int, got {self.offset!r}")
        if self.num_letters**self.key_len >= 2**62:
            raise ValueError(f"num_letters**key_len = {self.num_letters}**{self.key_len} is too large")
        if self.query_len < self.item_len:
            raise ValueError(f"query_len {self.query_len} cannot hold one query of {self.item_len} tokens")
        if self.doc_len - self.query_len < 1 + self.item_len:
            raise ValueError(
                f"doc_len {self.doc_len} leaves no room for <bos> and one {self.item_len}-token definition "
                f"before query_len={self.query_len} tokens of queries"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DictionaryTaskConfig:
        return cls(**checked_fields(cls, values, "config.data.synthetic"))

    @property
    def item_len(self) -> int:
        """Tokens per definition or query: marker, key, <v>, value."""
        return self.key_len + self.value_len + 2

    @property
    def vocab_size(self) -> int:
        """Ids the task uses, from `offset`: specials plus letters."""
        return NUM_SPECIALS + self.num_letters

    def token(self, local: int) -> int:
        """The model id of a local id (`KEY`, `VALUE`, ... or `NUM_SPECIALS + letter`)."""
        return self.offset + local

    def check_vocab(self, vocab_size: int, where: str = "the model") -> None:
        """Raises when a model vocabulary of `vocab_size` cannot encode the task's ids."""
        need = self.offset + self.vocab_size
        if vocab_size < need:
            raise ValueError(
                f"{where} has vocab_size {vocab_size}, but the dictionary task needs {need} ids "
                f"({NUM_SPECIALS} specials + {self.num_letters} letters from offset {self.offset})"
            )


@dataclasses.dataclass(frozen=True)
class DictionaryDocument:
    """One document: `defs_len` tokens of definitions, then `task.query_len` tokens of queries.

    keys: `[n_defs, key_len]` uint8 letters (distinct rows).   values: `[n_defs, value_len]` uint8 letters.
    queried: `[n_queries]` int, the definition each query asks for.
    """

    task: DictionaryTaskConfig
    defs_len: int
    keys: np.ndarray
    values: np.ndarray
    queried: np.ndarray

    @property
    def length(self) -> int:
        return self.defs_len + self.task.query_len

    @property
    def n_defs(self) -> int:
        return len(self.keys)

    def _items(self, rows: np.ndarray, offsets: np.ndarray, marker: int) -> np.ndarray:
        """Local ids of item tokens: `rows` (definition index) and `offsets` (0..item_len-1), both `[n]`."""
        t = self.task
        out = np.full(rows.shape, marker, np.int32)
        is_key = (offsets >= 1) & (offsets <= t.key_len)
        out[is_key] = NUM_SPECIALS + self.keys[rows[is_key], offsets[is_key] - 1]
        out[offsets == t.key_len + 1] = VALUE
        is_value = offsets >= t.key_len + 2
        out[is_value] = NUM_SPECIALS + self.values[rows[is_value], offsets[is_value] - t.key_len - 2]
        return out

    def tokens(self, positions: np.ndarray) -> np.ndarray:
        """Model ids (offset applied) at `positions` (any int array); `<pad>` outside `0 .. length-1`."""
        pos = np.asarray(positions, np.int64)
        item = self.task.item_len
        out = np.full(pos.shape, PAD, np.int32)
        out[pos == 0] = BOS
        in_defs = (pos >= 1) & (pos < self.defs_len)
        is_def = in_defs & (pos - 1 < self.n_defs * item)
        out[in_defs & ~is_def] = FILL
        d = pos[is_def] - 1
        out[is_def] = self._items(d // item, d % item, KEY)
        q = pos - self.defs_len
        in_queries = (q >= 0) & (q < self.task.query_len)
        is_query = in_queries & (q < len(self.queried) * item)
        out[in_queries & ~is_query] = FILL
        qq = q[is_query]
        out[is_query] = self._items(self.queried[qq // item], qq % item, QUERY)
        return out + self.task.offset

    def is_query_value(self, positions: np.ndarray) -> np.ndarray:
        """`[...]` bool: True where the token at `positions` is v1..v4 of a query (what is scored)."""
        q = np.asarray(positions, np.int64) - self.defs_len
        inside = (q >= 0) & (q < len(self.queried) * self.task.item_len)
        return inside & (q % self.task.item_len >= self.task.key_len + 2)


def make_document(task: DictionaryTaskConfig, defs_len: int, rng: np.random.Generator) -> DictionaryDocument:
    """A random document with `defs_len` tokens of definitions (as many as fit after `<bos>`) and then
    `task.query_len` tokens of queries, each asking a different definition while there are enough of them."""
    n_defs = (defs_len - 1) // task.item_len
    if n_defs < 1:
        raise ValueError(f"defs_len {defs_len} holds no definition of {task.item_len} tokens after <bos>")
    letters = task.num_letters
    if n_defs > letters**task.key_len:
        raise ValueError(f"{n_defs} definitions need distinct keys but only {letters}**{task.key_len} exist")
    codes = rng.choice(letters**task.key_len, size=n_defs, replace=False)
    powers = letters ** np.arange(task.key_len - 1, -1, -1, dtype=np.int64)
    keys = ((codes[:, None] // powers[None, :]) % letters).astype(np.uint8)
    values = rng.integers(0, letters, size=(n_defs, task.value_len), dtype=np.uint8)
    n_queries = task.query_len // task.item_len
    queried = rng.choice(n_defs, size=n_queries, replace=n_queries > n_defs)
    return DictionaryDocument(task, defs_len, keys, values, queried)


class DictionaryBatches:
    """Deterministic, resumable iterator of packed training batches of the dictionary task.

    Each batch is a dict of numpy arrays, all `[batch_size, window]`: `inputs`, `targets` (int32, next token),
    `loss_mask` (float32, 1 exactly on query values) and `doc_ids` (int32, the document of each input token;
    equal ids in rows of a k-group mean consecutive windows of one document).
    """

    def __init__(
        self,
        task: DictionaryTaskConfig,
        batch_size: int,
        window: int,
        k: int = 1,
        seed: int = 0,
        split: str = "train",
    ) -> None:
        for name, value in (("batch_size", batch_size), ("window", window), ("k", k)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DictionaryBatches {name} must be a positive int, got {value!r}")
        if batch_size % k:
            raise ValueError(f"batch_size={batch_size} is not divisible by k={k}: a group of k rows is one lane")
        self.task = task
        self.batch_size, self.window, self.k, self.seed, self.split = batch_size, window, k, seed, split
        self.num_lanes = batch_size // k
        self._stream = zlib.crc32(split.encode())  # "train" and held-out splits draw different documents
        self._batches = 0
        self._cache: collections.OrderedDict[int, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()

    def __iter__(self) -> DictionaryBatches:
        return self

    def document(self, doc_id: int) -> DictionaryDocument:
        """Document `doc_id` of this stream (lane `doc_id % num_lanes`, its `doc_id // num_lanes`-th)."""
        rng = np.random.default_rng([self.seed, self._stream, doc_id])
        return make_document(self.task, self.task.doc_len - self.task.query_len, rng)

    def _doc_arrays(self, doc_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens `[doc_len]` int32, query-value flags `[doc_len]` bool) of a document, cached."""
        if doc_id not in self._cache:
            doc = self.document(doc_id)
            pos = np.arange(doc.length)
            self._cache[doc_id] = (doc.tokens(pos), doc.is_query_value(pos))
            while len(self._cache) > 4 * self.num_lanes:
                self._cache.popitem(last=False)
        return self._cache[doc_id]

    def _row(self, lane: int, window_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Window `window_index` of a lane: tokens, query-value flags, doc ids, each `[window + 1]`."""
        pos = window_index * self.window + np.arange(self.window + 1)
        nth, offset = np.divmod(pos, self.task.doc_len)
        doc_ids = nth * self.num_lanes + lane
        tokens = np.empty(pos.shape, np.int32)
        flags = np.empty(pos.shape, bool)
        for doc_id in np.unique(doc_ids):
            at = doc_ids == doc_id
            doc_tokens, doc_flags = self._doc_arrays(int(doc_id))
            tokens[at], flags[at] = doc_tokens[offset[at]], doc_flags[offset[at]]
        return tokens, flags, doc_ids.astype(np.int32)

    def __next__(self) -> Batch:
        shape = (self.batch_size, self.window + 1)
        tokens, flags, doc_ids = np.empty(shape, np.int32), np.empty(shape, bool), np.empty(shape, np.int32)
        for lane in range(self.num_lanes):
            for j in range(self.k):
                row = lane * self.k + j
                tokens[row], flags[row], doc_ids[row] = self._row(lane, self._batches * self.k + j)
        self._batches += 1
        return {
            "inputs": tokens[:, :-1],
            "targets": tokens[:, 1:],
            "loss_mask": flags[:, 1:].astype(np.float32),
            "doc_ids": doc_ids[:, :-1],
        }

    def _fingerprint(self) -> dict[str, Any]:
        return dataclasses.asdict(self.task) | {
            "batch_size": self.batch_size,
            "window": self.window,
            "k": self.k,
            "seed": self.seed,
            "split": self.split,
        }

    def get_state(self) -> dict[str, Any]:
        """A small JSON-serialisable dict; `set_state` resumes exactly here."""
        return {"format": STATE_FORMAT, "task": "dictionary", "config": self._fingerprint(), "batches": self._batches}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Resume from a `get_state` dict of an iterator with the same task and batch settings."""
        keys = {"format", "task", "config", "batches"}
        if not isinstance(state, Mapping) or set(state) != keys or state["task"] != "dictionary":
            raise ValueError(f"not a dictionary-task iterator state: expected a dict with the keys {sorted(keys)}")
        if state["format"] != STATE_FORMAT:
            raise ValueError(f"dictionary iterator state format {state['format']} is not the supported {STATE_FORMAT}")
        mine = self._fingerprint()
        changed = sorted(k for k in mine if state["config"].get(k) != mine[k])
        if changed:
            raise ValueError(f"dictionary iterator state was saved with a different {changed}: use the same settings")
        self._batches = int(state["batches"])


def synthetic_batches(config: Any, source: Any) -> DictionaryBatches:
    """The iterator for `source.path = "synthetic:<task>"` of a training config (`focused.training.loop`).

    Reads `config.data` (batch_size, k, seed, optional `synthetic` section of `DictionaryTaskConfig` fields),
    `config.model` (window = max_position_embeddings, vocab_size) and `source.split` (held-out splits draw other
    documents).
    """
    name = source.path.removeprefix("synthetic:")
    if name not in SYNTHETIC_TASKS:
        known = ", ".join(f"synthetic:{t}" for t in SYNTHETIC_TASKS)
        raise ValueError(f"unknown synthetic task {source.path!r} in the data source path; known: {known}")
    task = DictionaryTaskConfig.from_dict(config.data.get("synthetic") or {})
    task.check_vocab(config.model.vocab_size, "config.model")
    return DictionaryBatches(
        task,
        batch_size=config.data.batch_size,
        window=config.model.max_position_embeddings,
        k=config.data.k,
        seed=config.data.seed,
        split=source.get("split", "train") if hasattr(source, "get") else "train",
    )
