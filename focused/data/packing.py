"""Document-aware packing for CrossBatch training (DESIGN §4), as a deterministic, checkpointable iterator.

Each of ``num_lanes = batch_size // k`` lanes owns one token stream. When a lane runs out of tokens it pulls the
next document from a shared order (a seeded permutation per epoch) and appends ``[bos] + tokens + [eos]``, so
consecutive documents in a lane read ``… <eos><bos> …``. A lane's stream ``s`` is cut into windows of ``W``
tokens: window ``j`` has inputs ``s[jW : (j+1)W]`` and targets ``s[jW+1 : (j+1)W+1]``, so every token is the
target of exactly one position and nothing is lost at window boundaries.

With k-packing (``doc_aware_k{k}``) batch rows ``g*k … g*k+k-1`` are ``k`` consecutive windows of lane ``g``;
``k = 1`` gives ``batch_size`` independent lanes. Pure numpy; nothing here needs JAX.

With ``align_documents`` every document starts a group of ``k`` windows (``k * W`` tokens) of its lane: the rest of
the previous document's last group is padding (``doc_ids`` -1, out of the loss; the train step masks it out of
attention and memory). A window then never holds two documents, and the CrossBatch positives of a row are its own
document's earlier windows only. Short documents that must not see each other (passkey prompts: every prompt looks
alike but for its key, so a key line of another prompt in view makes the answer ambiguous) need it; it costs the
padding.

With ``lane_streams`` each lane reads its own slice of the order instead (lane ``g`` of ``L``: draws ``g``,
``g + L``, ``g + 2L``, …), so a lane's documents do not depend on the other lanes and a process of a multi-process
job packs only its own lanes (``DocumentPacker(..., lanes=(first, stop))``), reading only their documents. The
state of such a partial packer lists only its lanes (``None`` for the others); :func:`merge_states` joins the
states of all processes into the state of the whole batch, which any partial packer (or a whole one) resumes from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from focused.config import checked_fields
from focused.data.sources import ShuffledOrder, document_order
from focused.data.windows import Batch

STATE_FORMAT = 1


class TextEncoder(Protocol):
    """What the packer needs from a tokenizer (:class:`focused.data.Tokenizer` has it)."""

    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...


@dataclasses.dataclass(frozen=True)
class PackingConfig:
    """How documents become batches.

    Attributes:
        batch_size: rows per batch ``B``.
        window: tokens per row ``W`` (the model's local context).
        k: consecutive windows of one document stream per group of rows; ``batch_size`` must be divisible by it.
        seed: seeds the per-epoch document permutation.
        num_epochs: stop after this many passes over the documents; ``None`` loops forever.
        shuffle: permute the documents each epoch (sequences only; streams are read in order).
        add_bos: put ``bos`` in front of each document.
        add_eos: put ``eos`` after each document.
        lane_streams: lane ``g`` reads draws ``g, g + L, g + 2L, …`` of the order (its own documents; see the module
            docstring) instead of the next document of one shared order; needs a random-access source.
        align_documents: start every document on a group boundary of its lane (``k * window`` tokens), padding the
            rest of the group before it (see the module docstring).
    """

    batch_size: int
    window: int
    k: int = 1
    seed: int = 0
    num_epochs: int | None = None
    shuffle: bool = True
    add_bos: bool = True
    add_eos: bool = True
    lane_streams: bool = False
    align_documents: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "window", "k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"PackingConfig.{name} must be a positive int, got {value!r}")
        if self.batch_size % self.k:
            raise ValueError(
                f"batch_size={self.batch_size} is not divisible by k={self.k}: each group of k rows holds one "
                "document stream, so pick batch_size as a multiple of k"
            )
        if self.num_epochs is not None and (not isinstance(self.num_epochs, int) or self.num_epochs < 1):
            raise ValueError(f"num_epochs must be None (forever) or a positive int, got {self.num_epochs!r}")

    @property
    def num_lanes(self) -> int:
        """Independent document streams per batch: ``batch_size // k``."""
        return self.batch_size // self.k

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PackingConfig:
        """Build from a dict or an ``ml_collections.ConfigDict`` section; unknown keys are an error."""
        return cls(**checked_fields(cls, values))


@dataclasses.dataclass
class _Lane:
    """One token stream: the documents still (partly) unread, and where reading resumes in the first one."""

    # (draw, tokens [len]); with align_documents a padding segment has draw -len (its length, for the saved state)
    segments: list[tuple[int, np.ndarray]] = dataclasses.field(default_factory=list)
    offset: int = 0
    index: int = 0  # which lane of the batch
    pulled: int = 0  # with lane_streams: documents this lane has drawn (its next draw is index + pulled * L)
    phase: int = 0  # windows of the current batch read so far (k per batch, so 0 whenever a state is taken)

    @property
    def available(self) -> int:
        return sum(len(tokens) for _, tokens in self.segments) - self.offset


class DocumentPacker:
    """Iterator of packed batches; resumable through :meth:`get_state` / :meth:`set_state`.

    Each batch is a dict of numpy arrays, all ``[batch_size, window]``:

    * ``inputs`` (int32): token ids;
    * ``targets`` (int32): the next token of each input position (``pad_id`` where there is none);
    * ``loss_mask`` (float32): 1 where ``targets`` is a real token, 0 on padding (only at the end of the data);
    * ``doc_ids`` (int32): the draw number of the document each input token belongs to (unique per document
      occurrence, -1 on padding); rows with equal ids hold windows of the same document.

    Documents are tokenized lazily, one at a time when a lane needs them, so a huge corpus is never tokenized
    up front. With ``num_epochs`` set, lanes that run dry are padded until every lane is empty; then iteration
    stops.
    """

    def __init__(
        self,
        documents: Sequence[str] | Iterable[str],
        tokenizer: TextEncoder,
        config: PackingConfig,
        lanes: tuple[int, int] | None = None,
    ) -> None:
        """lanes: (first, stop) to pack only lanes first … stop-1 (rows first·k … stop·k - 1); needs
        ``config.lane_streams``."""
        self.config = config
        self.tokenizer = tokenizer
        self._order = document_order(documents, config.seed, config.shuffle, config.num_epochs)
        first, stop = (0, config.num_lanes) if lanes is None else (int(lanes[0]), int(lanes[1]))
        if (first, stop) != (0, config.num_lanes):
            if not config.lane_streams:
                raise ValueError("packing only some lanes needs lane_streams=True (lanes that share one order)")
            if not 0 <= first < stop <= config.num_lanes:
                raise ValueError(f"lanes {lanes} are not a non-empty range of the {config.num_lanes} lanes")
        if config.lane_streams and not isinstance(self._order, ShuffledOrder):
            raise ValueError("lane_streams needs a random-access document source (not streaming=True)")
        self.lane_range = (first, stop)
        self._lanes = [_Lane(index=g) for g in range(first, stop)]
        self._next_draw = 0
        self._batches = 0
        self._finished = False

    def __iter__(self) -> DocumentPacker:
        return self

    @property
    def epoch(self) -> int:
        """The epoch the next document will be drawn from (with lane_streams: the earliest of this packer's lanes)."""
        if self.config.lane_streams:
            return min(self._order.epoch_of(ln.index + ln.pulled * self.config.num_lanes) for ln in self._lanes)
        return self._order.epoch_of(self._next_draw)

    def _tokenize(self, text: str) -> np.ndarray:
        """``[bos] + encode(text) + [eos]`` as int32 ``[len]``; empty when the text has no tokens."""
        ids = self.tokenizer.encode(text)
        if not ids:
            return np.zeros((0,), np.int32)
        head = [self.tokenizer.bos_id] if self.config.add_bos else []
        tail = [self.tokenizer.eos_id] if self.config.add_eos else []
        return np.asarray(head + list(ids) + tail, dtype=np.int32)

    def _pull(self, lane: _Lane) -> bool:
        """Append the next non-empty document to ``lane``; False when the data is used up."""
        first_empty = None
        while True:
            draw = lane.index + lane.pulled * self.config.num_lanes if self.config.lane_streams else self._next_draw
            text = self._order.get(draw)
            if text is None:
                return False
            if self.config.lane_streams:
                lane.pulled += 1
            else:
                self._next_draw += 1
            tokens = self._tokenize(text)
            if len(tokens):
                self._align(lane)
                lane.segments.append((draw, tokens))
                return True
            if first_empty is None:
                first_empty = draw
            elif self._order.epoch_of(draw) >= self._order.epoch_of(first_empty) + 2:
                raise ValueError("every document encodes to zero tokens: check the data source and text_field")

    def _align(self, lane: _Lane) -> None:
        """With align_documents, pads the lane's stream up to its next group boundary (before a new document)."""
        if not self.config.align_documents or not lane.segments:
            return
        group = self.config.k * self.config.window
        # the stream's first segment starts `lane.offset` tokens before the next window, which starts a group
        # only when the lane has read a whole number of groups; `lane.phase` counts windows read modulo k
        end = lane.phase * self.config.window - lane.offset + sum(len(tokens) for _, tokens in lane.segments)
        short = -end % group
        if short:
            lane.segments.append((-short, np.full((short,), self.tokenizer.pad_id, np.int32)))

    def _window(self, lane: _Lane) -> tuple[np.ndarray, np.ndarray]:
        """The lane's next window: tokens ``[W + 1]`` and their draw ids ``[W + 1]``; then advance by ``W``."""
        need = self.config.window + 1
        while lane.available < need and self._pull(lane):
            pass
        tokens = np.full((need,), self.tokenizer.pad_id, np.int32)
        draws = np.full((need,), -1, np.int32)
        filled, offset = 0, lane.offset
        for draw, seg in lane.segments:
            piece = seg[offset : offset + need - filled]
            tokens[filled : filled + len(piece)] = piece
            draws[filled : filled + len(piece)] = max(draw, -1)
            filled += len(piece)
            offset = 0
            if filled == need:
                break
        lane.offset += self.config.window
        lane.phase = (lane.phase + 1) % self.config.k
        while lane.segments and lane.offset >= len(lane.segments[0][1]):
            lane.offset -= len(lane.segments.pop(0)[1])
        if not lane.segments:
            lane.offset = 0
        return tokens, draws

    def __next__(self) -> Batch:
        if self._finished:
            raise StopIteration
        cfg = self.config
        rows = len(self._lanes) * cfg.k
        tokens = np.empty((rows, cfg.window + 1), np.int32)
        draws = np.empty((rows, cfg.window + 1), np.int32)
        for g, lane in enumerate(self._lanes):
            for j in range(cfg.k):
                tokens[g * cfg.k + j], draws[g * cfg.k + j] = self._window(lane)
        loss_mask = ((draws[:, 1:] >= 0) & (draws[:, :-1] >= 0)).astype(np.float32)  # no target after padding
        if not loss_mask.any():
            self._finished = True
            if self._batches == 0:
                raise ValueError("the documents hold no tokens: check the data source and text_field")
            raise StopIteration
        self._batches += 1
        return {
            "inputs": tokens[:, :-1],
            "targets": tokens[:, 1:],
            "loss_mask": loss_mask,
            "doc_ids": draws[:, :-1],
        }

    def _fingerprint(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self.config)
        for name in ("lane_streams", "align_documents"):
            if not fields[name]:  # absent from the states of runs older than the field
                del fields[name]
        # A stream's length is unknown until read once, so only sequences are checked for it.
        fields["num_documents"] = self._order.num_documents if isinstance(self._order, ShuffledOrder) else None
        return fields

    def get_state(self) -> dict[str, Any]:
        """A small JSON-serialisable dict from which :meth:`set_state` resumes exactly here.

        Lanes record which documents (by draw number) they still hold and the read offset into the first; the
        tokens themselves are recomputed on restore instead of being stored (a padding segment of
        align_documents is recorded as minus its length). With lane_streams every lane also
        records how many documents it has drawn (`pulled`), and lanes this packer does not pack are None.
        """
        lanes: list[dict[str, Any] | None] = [
            {"draws": [int(d) for d, _ in lane.segments], "offset": int(lane.offset)} for lane in self._lanes
        ]
        if self.config.lane_streams:
            first, stop = self.lane_range
            for entry, lane in zip(lanes, self._lanes, strict=True):
                entry["pulled"] = int(lane.pulled)  # type: ignore[index]
            lanes = [None] * first + lanes + [None] * (self.config.num_lanes - stop)
        return {
            "format": STATE_FORMAT,
            "config": self._fingerprint(),
            "epoch": self.epoch,
            "next_draw": self._next_draw,
            "batches": self._batches,
            "finished": self._finished,
            "lanes": lanes,
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Resume from a :meth:`get_state` dict taken from a packer with the same config and documents."""
        keys = {"format", "config", "epoch", "next_draw", "batches", "finished", "lanes"}
        if not isinstance(state, Mapping) or set(state) != keys:
            raise ValueError(f"not a DocumentPacker state: expected a dict with the keys {sorted(keys)}")
        if state["format"] != STATE_FORMAT:
            raise ValueError(f"packer state format {state['format']} is not the supported {STATE_FORMAT}")
        mine = self._fingerprint()
        changed = sorted({k for k in mine if state["config"].get(k) != mine[k]} | set(state["config"]) - set(mine))
        if changed:
            raise ValueError(f"packer state was saved with a different {changed}: restore with the same settings")
        if len(state["lanes"]) != self.config.num_lanes:
            raise ValueError(f"packer state has {len(state['lanes'])} lanes, this packer {self.config.num_lanes}")
        first, stop = self.lane_range
        own = state["lanes"][first:stop]
        if any(lane is None for lane in own):
            raise ValueError(f"packer state lacks some of lanes {first}..{stop - 1}: merge the states of all processes")
        needed = sorted({int(d) for lane in own for d in lane["draws"] if int(d) >= 0})
        tokens: dict[int, np.ndarray] = {}
        for draw in needed:  # increasing, so a stream is read once
            text = self._order.get(draw)
            tokens[draw] = self._tokenize(text) if text is not None else np.zeros((0,), np.int32)
            if not len(tokens[draw]):
                raise ValueError(f"packer state names document draw {draw}, which these documents lack")
        pad = self.tokenizer.pad_id

        def segment(draw: int) -> tuple[int, np.ndarray]:
            return draw, tokens[draw] if draw >= 0 else np.full((-draw,), pad, np.int32)

        self._lanes = [
            _Lane(
                [segment(int(d)) for d in lane["draws"]],
                int(lane["offset"]),
                g,
                int(lane.get("pulled", 0)),
            )
            for g, lane in enumerate(own, start=first)
        ]
        self._next_draw = int(state["next_draw"])
        self._batches = int(state["batches"])
        self._finished = bool(state["finished"])


def merge_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The state of the whole batch from the states of partial packers (``lane_streams``) that together pack every
    lane once, e.g. one per process; a single whole state is returned as it is."""
    if not states:
        raise ValueError("no packer states to merge")
    merged = dict(states[0])
    lanes = list(merged["lanes"])
    for state in states[1:]:
        if state["config"] != merged["config"] or state["batches"] != merged["batches"]:
            raise ValueError("packer states of different settings or positions cannot be merged")
        for g, lane in enumerate(state["lanes"]):
            if lane is not None:
                if lanes[g] is not None:
                    raise ValueError(f"lane {g} is in more than one packer state")
                lanes[g] = lane
    missing = [g for g, lane in enumerate(lanes) if lane is None]
    if missing:
        raise ValueError(f"no packer state holds lanes {missing}")
    merged["lanes"] = lanes
    merged["epoch"] = min(int(s["epoch"]) for s in states)
    merged["finished"] = all(bool(s["finished"]) for s in states)
    return merged
