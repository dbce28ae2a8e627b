"""Synthetic tasks: dictionary lookup (key-value retrieval), the FoT paper's memory benchmark (DESIGN §6).

A document is a run of *pages* of ``page_len`` tokens (one page = one model window, so an item never straddles a
window): ``def_pages`` pages of definitions, then ``query_pages`` pages of queries.

    a1 a2 a3 v  b1 b2 b3 w  c1 c2 c3 x  ...  <f>       a page of definitions (``page_len`` tokens)
    b1 b2 b3 w  e1 e2 e3 y  b1 b2 b3 w  ...  <f>       a page of queries

Keys are ``key_len`` letters from ``key_letters`` key-letter ids; values are ``value_len`` letters from
``value_letters`` value ids (a separate alphabet, so that a value can never be mistaken for a key). Keys never
repeat inside a document. A query repeats the key of a definition of the same document and is answered with its
value (lookup is a one-step copy); the best strategy that ignores keys scores ~1/definitions (`key_free_accuracy`).
With ``markers`` every definition starts with ``<k>`` and every query with ``<q>``, and with ``value_marker`` a
``<v>`` token separates key and value: the paper's ``<k> k1..k4 <v> v1..v4`` layout.

Queries of *training* documents are drawn with replacement (``repeat_queries``), filling the query pages: a
definition may be asked twice, so there is no elimination shortcut (the key-free level is exactly 1/n), and the
repeats are the stepping stone the lookup circuit needs. Measured with 2-layer models on 2 CPU cores: with every
definition asked once (without replacement) the loss sat at the key-free level for 3,350+ steps; with replacement
lookup was learned in ~150 steps; `<k>`/`<q>` markers stalled it again (400+ steps). Evaluation documents ask
distinct definitions (without replacement), so every answer has to come from the definitions.

Training documents can make lookup learnable sooner and keep it honest at scale:

- ``min_defs``: each training page holds a random number of definitions from ``min_defs`` to a full page (the
  rest is ``<f>`` filler); pages with few definitions give the lookup circuit a strong early gradient.
- ``key_groups``: each training document draws all its keys' letters from one group of ``key_groups`` letters,
  the same group at every position, so every letter, every proper subset of a key's letters and every reordering
  of them is shared with other keys of the document. Only a whole-key match *in order* answers all queries, the
  way it must at 16M tokens of memory, where any partial key, and any key's letters in another order, is shared by
  many definitions. (With a separate group per position, letters never changed position inside a training
  document: the model trained so scored a key with the query's letters in other positions as high as one with
  them in place, and lost lookup beyond 16K tokens.) Evaluation documents always use uniformly random distinct
  keys and full pages.

Token ids (``offset`` is added to every id, so the task can live inside a larger model vocabulary):

    0 <pad>  1 <bos>  2 <eos>  3 <k>  4 <v>  5 <q>  6 <f>   (bos/eos reserved, never emitted)
    7 ... 7 + value_letters - 1: value letters,   then key_letters key letters

Values come first so that a curriculum can grow the key alphabet (and key length, page length) at a fixed
vocabulary: a model trained on a small key alphabet keeps every id's meaning when the alphabet grows.

Only query values are scored: with the next-token convention of ``focused.data.packing`` (``inputs[t]`` predicts
``targets[t]``), ``loss_mask[t]`` is 1 exactly where ``targets[t]`` is a value letter of a query.

``DictionaryBatches`` lays documents back to back in ``batch_size // k`` lanes and cuts each lane into windows;
batch rows ``g*k … g*k+k-1`` are consecutive windows of lane ``g`` (document-aware k-packing, as
``DocumentPacker`` does). With window = page_len and k = def_pages + query_pages a group is exactly one document,
so CrossBatch row ``g*k + def_pages`` (the queries) sees its own definitions in the rows just before it, and
rows of other groups are distractors. Every document is a pure function of ``(seed, split, lane, index)``, so the
iterator state is just the number of batches served.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from focused.config import checked_fields

PAD, BOS, EOS, KEY, VALUE, QUERY, FILL = range(7)
NUM_SPECIALS = 7
SYNTHETIC_TASKS = ("dictionary",)
STATE_FORMAT = 2
TASK_FILE = "dictionary_task.json"  # the layout a model was trained on, kept beside its weights
Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DictionaryTaskConfig:
    """`config.data.synthetic`: the layout of the dictionary task (see the module docstring).

    key_letters, key_len: key alphabet and letters per key.   value_letters, value_len: the same for values.
    markers: start definitions with `<k>` and queries with `<q>`.   value_marker: `<v>` between key and value.
    page_len: tokens per page (= model window).   def_pages, query_pages: pages per training document.
    queries: queries per document (0 = fill the query pages; evaluation documents ask at most half the definitions).
    repeat_queries: training documents draw queries with replacement (evaluation documents never do).
    min_defs: training pages hold min_defs .. a full page of definitions (0 = always full).
    key_groups: letters of a training document's keys, shared by all positions (0 = the whole alphabet).
    offset: added to every token id.
    """

    key_letters: int = 256
    key_len: int = 3
    value_letters: int = 64
    value_len: int = 1
    markers: bool = False
    value_marker: bool = False
    page_len: int = 64
    def_pages: int = 1
    query_pages: int = 1
    queries: int = 0
    repeat_queries: bool = True
    min_defs: int = 0
    key_groups: int = 0
    offset: int = 0

    def __post_init__(self) -> None:
        where = "config.data.synthetic"
        for name in ("key_letters", "key_len", "value_letters", "value_len", "page_len", "def_pages", "query_pages"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{where}.{name} must be a positive int, got {value!r}")
        for name in ("queries", "min_defs", "key_groups", "offset"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{where}.{name} must be a non-negative int, got {value!r}")
        if self.key_letters**self.key_len >= 2**62:
            raise ValueError(f"{where}: key_letters**key_len = {self.key_letters}**{self.key_len} is too large")
        if self.items_per_page < 2:
            raise ValueError(
                f"{where}.page_len={self.page_len} holds {self.items_per_page} item(s) of {self.item_len} tokens; "
                "a page needs at least 2"
            )
        if self.min_defs > self.items_per_page:
            raise ValueError(f"{where}.min_defs={self.min_defs} exceeds the {self.items_per_page} items of a page")
        if not self.repeat_queries and self.queries >= self.defs_per_document:
            raise ValueError(
                f"{where}.queries={self.queries} must be fewer than the {self.defs_per_document} definitions of a "
                "document when queries are drawn without replacement (the elimination shortcut)"
            )
        if self.queries > self.query_capacity:
            raise ValueError(f"{where}.queries={self.queries} does not fit {self.query_pages} query page(s)")
        if self.key_groups and self.key_groups**self.key_len < self.defs_per_document:
            raise ValueError(
                f"{where}.key_groups={self.key_groups} gives {self.key_groups}**{self.key_len} keys, fewer than "
                f"the {self.defs_per_document} distinct keys of a document"
            )
        if self.key_groups > self.key_letters:
            raise ValueError(f"{where}.key_groups={self.key_groups} exceeds key_letters={self.key_letters}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DictionaryTaskConfig:
        return cls(**checked_fields(cls, values, "config.data.synthetic"))

    @property
    def item_len(self) -> int:
        """Tokens per definition or query: optional marker, key, optional `<v>`, value."""
        return int(self.markers) + self.key_len + int(self.value_marker) + self.value_len

    @property
    def items_per_page(self) -> int:
        return self.page_len // self.item_len

    @property
    def defs_per_document(self) -> int:
        """Definitions of a full training document."""
        return self.def_pages * self.items_per_page

    @property
    def query_capacity(self) -> int:
        return self.query_pages * self.items_per_page

    @property
    def doc_len(self) -> int:
        """Tokens of a training document."""
        return (self.def_pages + self.query_pages) * self.page_len

    def num_queries(self, n_defs: int, repeat: bool = False) -> int:
        """Queries asked of a document with `n_defs` definitions; without `repeat` (distinct definitions asked)
        always fewer than n_defs."""
        if repeat:
            return self.queries or self.query_capacity
        asked = self.queries or max(1, n_defs // 2)
        return max(1, min(asked, n_defs - 1, self.query_capacity))

    @property
    def vocab_size(self) -> int:
        """Ids the task uses, from `offset`: specials, key letters, value letters."""
        return NUM_SPECIALS + self.key_letters + self.value_letters

    @property
    def max_memory_tokens(self) -> int:
        """The largest definitions block whose keys can all be distinct."""
        return min(self.key_letters**self.key_len, 2**62) // self.items_per_page * self.page_len

    def check_vocab(self, vocab_size: int, where: str = "the model") -> None:
        """Raises when a model vocabulary of `vocab_size` cannot encode the task's ids."""
        need = self.offset + self.vocab_size
        if vocab_size < need:
            raise ValueError(
                f"{where} has vocab_size {vocab_size}, but the dictionary task needs {need} ids ({NUM_SPECIALS} "
                f"specials + {self.value_letters} value letters + {self.key_letters} key letters from offset "
                f"{self.offset})"
            )

    def is_value_id(self, ids: np.ndarray) -> np.ndarray:
        """`[...]` bool: which model ids are value letters."""
        first = self.offset + NUM_SPECIALS
        return (ids >= first) & (ids < first + self.value_letters)


def save_task(task: DictionaryTaskConfig, folder: str | os.PathLike) -> Path:
    """Writes the task layout into `folder` (a run directory or an exported model folder) as `TASK_FILE`."""
    path = Path(folder) / TASK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(task), indent=1) + "\n")
    return path


def load_task(folder: str | os.PathLike) -> DictionaryTaskConfig | None:
    """The task layout stored in `folder`, in the run directory above a step directory, or None if none is."""
    folder = Path(folder)
    for candidate in (folder, folder.parent.parent):
        path = candidate / TASK_FILE
        if path.is_file():
            try:
                return DictionaryTaskConfig.from_dict(json.loads(path.read_text()))
            except (ValueError, TypeError) as err:
                raise ValueError(f"{path} is not a valid task layout ({err}): delete it or rewrite it") from None
    return None


def key_free_accuracy(task: DictionaryTaskConfig, n_defs: int | None = None, training: bool = True) -> float:
    """Expected query accuracy of the best strategy that never matches keys, for a document of full pages.

    Values are distinct inside a document (while `value_letters` allows), so without the key every candidate
    definition is equally likely. Training documents draw queries with replacement (`repeat_queries`): every
    query is any of the n definitions, 1/n. Drawn without replacement (evaluation documents), the definitions not
    asked yet remain: query j (0-based) is right with probability 1 / (n - j).
    """
    n = n_defs or task.defs_per_document
    if training and task.repeat_queries:
        return 1.0 / n
    q = task.num_queries(n)
    return float(np.mean([1.0 / (n - j) for j in range(q)]))


def _distinct_codes(rng: np.random.Generator, space: int, n: int) -> np.ndarray:
    """`n` distinct integers in [0, space): exact sampling without replacement, also for huge spaces."""
    if space <= 4 * n or space < 1 << 20:
        return rng.choice(space, size=n, replace=False)
    codes = np.unique(rng.integers(0, space, size=int(n * 1.1) + 16, dtype=np.int64))
    while len(codes) < n:
        codes = np.unique(np.concatenate([codes, rng.integers(0, space, size=n, dtype=np.int64)]))
    return rng.permutation(codes)[:n]


@dataclasses.dataclass(frozen=True)
class DictionaryDocument:
    """One document: pages of definitions, then `task.query_pages` pages of queries.

    keys: `[n_defs, key_len]` int32 letters (distinct rows).   values: `[n_defs, value_len]` int32 letters.
    page_defs: `[def_pages]` definitions on each page (the rest of a page is filler).
    queried: `[n_queries]` int, the definition each query asks for (distinct unless drawn with replacement).
    """

    task: DictionaryTaskConfig
    keys: np.ndarray
    values: np.ndarray
    page_defs: np.ndarray
    queried: np.ndarray

    @property
    def def_pages(self) -> int:
        return len(self.page_defs)

    @property
    def defs_len(self) -> int:
        return self.def_pages * self.task.page_len

    @property
    def length(self) -> int:
        return (self.def_pages + self.task.query_pages) * self.task.page_len

    @property
    def n_defs(self) -> int:
        return len(self.keys)

    def _items(self, rows: np.ndarray, offsets: np.ndarray, marker: int) -> np.ndarray:
        """Local ids of item tokens: `rows` (definition index) and `offsets` (0..item_len-1), both `[n]`."""
        t = self.task
        start = int(t.markers)
        out = np.full(rows.shape, marker, np.int32)
        is_key = (offsets >= start) & (offsets < start + t.key_len)
        out[is_key] = NUM_SPECIALS + t.value_letters + self.keys[rows[is_key], offsets[is_key] - start]
        first_value = start + t.key_len + int(t.value_marker)
        if t.value_marker:
            out[offsets == start + t.key_len] = VALUE
        is_value = offsets >= first_value
        out[is_value] = NUM_SPECIALS + self.values[rows[is_value], offsets[is_value] - first_value]
        return out

    @functools.cached_property
    def _page_starts(self) -> np.ndarray:
        """`[def_pages + 1]`: index of the first definition of each page (computed once: 262K pages at 16M)."""
        return np.concatenate([[0], np.cumsum(self.page_defs)])

    def tokens(self, positions: np.ndarray) -> np.ndarray:
        """Model ids (offset applied) at `positions` (any int array); `<pad>` outside `0 .. length-1`."""
        t = self.task
        pos = np.asarray(positions, np.int64)
        out = np.full(pos.shape, PAD, np.int32)
        page, within = np.divmod(pos, t.page_len)
        item, offset = np.divmod(within, t.item_len)
        starts = self._page_starts
        in_defs = (pos >= 0) & (page < self.def_pages)
        page_c = np.clip(page, 0, self.def_pages - 1)
        is_def = in_defs & (item < self.page_defs[page_c])
        out[in_defs & ~is_def] = FILL
        out[is_def] = self._items(starts[page_c[is_def]] + item[is_def], offset[is_def], KEY)
        q_page = page - self.def_pages
        in_queries = (q_page >= 0) & (q_page < t.query_pages)
        q_item = q_page * t.items_per_page + item
        is_query = in_queries & (item < t.items_per_page) & (q_item < len(self.queried))
        out[in_queries & ~is_query] = FILL
        out[is_query] = self._items(self.queried[q_item[is_query]], offset[is_query], QUERY)
        return np.where(out == PAD, PAD, out + t.offset).astype(np.int32)

    def is_query_value(self, positions: np.ndarray) -> np.ndarray:
        """`[...]` bool: True where the token at `positions` is a value letter of a query (what is scored)."""
        t = self.task
        q = np.asarray(positions, np.int64) - self.defs_len
        page, within = np.divmod(q, t.page_len)
        item, offset = np.divmod(within, t.item_len)
        q_item = page * t.items_per_page + item
        inside = (q >= 0) & (page < t.query_pages) & (item < t.items_per_page) & (q_item < len(self.queried))
        return inside & (offset >= t.item_len - t.value_len)


def make_document(
    task: DictionaryTaskConfig, def_pages: int, rng: np.random.Generator, *, training: bool = False
) -> DictionaryDocument:
    """A random document with `def_pages` pages of definitions and `task.query_pages` pages of queries.

    Evaluation documents (`training=False`) have full pages and uniformly random distinct keys. Training documents
    apply `task.min_defs` (random definitions per page) and `task.key_groups` (keys from a few letters shared by
    all positions) and draw queries with replacement (`task.repeat_queries`). Values are distinct inside a document
    while `value_letters` allows.
    """
    if not isinstance(def_pages, int | np.integer) or def_pages < 1:
        raise ValueError(f"a dictionary document needs at least one page of definitions, got {def_pages!r}")
    full = task.items_per_page
    if training and task.min_defs:
        page_defs = rng.integers(task.min_defs, full + 1, size=def_pages)
    else:
        page_defs = np.full(def_pages, full)
    n_defs = int(page_defs.sum())
    if n_defs < 2:  # one definition cannot be asked without giving it away; make it two
        page_defs[0], n_defs = 2, int(page_defs.sum()) + 2 - int(page_defs[0])
    powers = np.int64(1)
    if training and task.key_groups:
        group = rng.choice(task.key_letters, task.key_groups, replace=False)  # one group for every position
        codes = _distinct_codes(rng, task.key_groups**task.key_len, n_defs)
        keys = group[(codes[:, None] // task.key_groups ** np.arange(task.key_len - 1, -1, -1)) % task.key_groups]
    else:
        space = task.key_letters**task.key_len
        if n_defs > space:
            raise ValueError(
                f"{n_defs} definitions need distinct keys but only {task.key_letters}**{task.key_len} exist: "
                f"use at most {task.max_memory_tokens} tokens of definitions"
            )
        codes = _distinct_codes(rng, space, n_defs)
        powers = task.key_letters ** np.arange(task.key_len - 1, -1, -1, dtype=np.int64)
        keys = (codes[:, None] // powers[None, :]) % task.key_letters
    if task.value_len == 1 and n_defs <= task.value_letters:
        values = rng.choice(task.value_letters, size=(n_defs, 1), replace=False)
    else:
        values = rng.integers(0, task.value_letters, size=(n_defs, task.value_len))
    repeat = training and task.repeat_queries
    queried = rng.choice(n_defs, size=task.num_queries(n_defs, repeat), replace=repeat)
    return DictionaryDocument(
        task, keys.astype(np.int32), values.astype(np.int32), page_defs.astype(np.int64), queried.astype(np.int64)
    )


class DictionaryBatches:
    """Deterministic, resumable iterator of packed training batches of the dictionary task.

    Each batch is a dict of numpy arrays, all `[batch_size, window]`: `inputs`, `targets` (int32, next token),
    `loss_mask` (float32, 1 exactly on query values) and `doc_ids` (int32, the document of each input token;
    equal ids in rows of a k-group mean consecutive windows of one document).

    `rows=(start, stop)` yields only rows `start … stop-1` of each global batch (`[stop - start, window]`): a
    process of a multi-process job generates only its own rows and documents (a lane's documents depend on the
    lane alone). The state does not depend on `rows`, so a checkpoint resumes with any number of processes.
    """

    def __init__(
        self,
        task: DictionaryTaskConfig,
        batch_size: int,
        window: int,
        k: int = 1,
        seed: int = 0,
        split: str = "train",
        rows: tuple[int, int] | None = None,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("window", window), ("k", k)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"config.data.{name} must be a positive int, got {value!r}")
        if batch_size % k:
            raise ValueError(f"config.data.batch_size={batch_size} is not divisible by config.data.k={k}")
        if window % task.page_len:
            raise ValueError(
                f"the model window {window} is not a multiple of config.data.synthetic.page_len={task.page_len}: "
                "items would straddle windows"
            )
        self.task = task
        self.batch_size, self.window, self.k, self.seed, self.split = batch_size, window, k, seed, split
        self.num_lanes = batch_size // k
        start, stop = (0, batch_size) if rows is None else (int(rows[0]), int(rows[1]))
        if not 0 <= start < stop <= batch_size:
            raise ValueError(f"rows {rows} are not a non-empty range within the batch of {batch_size} rows")
        self.rows = (start, stop)
        self._stream = zlib.crc32(split.encode())  # "train" and held-out splits draw different documents
        self._batches = 0
        self._cache: collections.OrderedDict[int, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()

    def __iter__(self) -> DictionaryBatches:
        return self

    def document(self, doc_id: int) -> DictionaryDocument:
        """Document `doc_id` of this stream (lane `doc_id % num_lanes`, its `doc_id // num_lanes`-th)."""
        rng = np.random.default_rng([self.seed, self._stream, doc_id])
        return make_document(self.task, self.task.def_pages, rng, training=True)

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
        start, stop = self.rows
        shape = (stop - start, self.window + 1)
        tokens, flags, doc_ids = np.empty(shape, np.int32), np.empty(shape, bool), np.empty(shape, np.int32)
        for row in range(start, stop):
            lane, j = divmod(row, self.k)
            i = row - start
            tokens[i], flags[i], doc_ids[i] = self._row(lane, self._batches * self.k + j)
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


def synthetic_batches(config: Any, source: Any, rows: tuple[int, int] | None = None) -> DictionaryBatches:
    """The iterator for `source.path = "synthetic:<task>"` of a training config (`focused.training.loop`).

    Reads `config.data` (batch_size, k, seed, optional `synthetic` section of `DictionaryTaskConfig` fields),
    `config.model` (window = max_position_embeddings, vocab_size) and `source.split` (held-out splits draw other
    documents). `rows`: only these rows of each batch (see `DictionaryBatches`).
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
        rows=rows,
    )
