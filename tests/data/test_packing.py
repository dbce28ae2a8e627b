"""Tests for focused.data.packing: document-aware k-packing, resumable state."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import numpy as np
import pytest

from focused.data import (
    DataSourceConfig,
    DocumentPacker,
    PackingConfig,
    load_documents,
    load_tokenizer,
)

BOS, EOS, PAD = 1, 2, 0


class IntTokenizer:
    """Documents are space-separated token ids, so a test knows every token a document contributes."""

    bos_id, eos_id, pad_id = BOS, EOS, PAD

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in text.split()]


class Stream:
    """An iterable without random access (like an HF IterableDataset)."""

    def __init__(self, docs: list[str]) -> None:
        self.docs = docs

    def __iter__(self) -> Iterator[str]:
        return iter(self.docs)


def random_docs(seed: int, count: int, max_len: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(map(str, rng.integers(3, 5000, size=rng.integers(1, max_len)))) for _ in range(count)]


def take(packer: DocumentPacker, n: int | None = None) -> list[dict[str, np.ndarray]]:
    return list(packer) if n is None else [next(packer) for _ in range(n)]


def lane_streams_of(batches: list[dict[str, np.ndarray]], k: int) -> list[dict[str, np.ndarray]]:
    """Re-concatenate each lane's rows across batches: inputs/targets/doc_ids/mask ``[steps * k * W]``."""
    lanes = batches[0]["inputs"].shape[0] // k
    out = []
    for g in range(lanes):
        rows = slice(g * k, (g + 1) * k)
        out.append({key: np.concatenate([b[key][rows].reshape(-1) for b in batches]) for key in batches[0]})
    return out


def expected_stream(packer: DocumentPacker, docs: list[str], draws: np.ndarray) -> np.ndarray:
    """``[bos] + doc + [eos]`` for each distinct draw, in order of appearance."""
    order = [int(d) for d in dict.fromkeys(draws.tolist()) if d >= 0]
    pieces = [[BOS, *IntTokenizer().encode(docs[packer._order.index_of(d)]), EOS] for d in order]
    return np.concatenate(pieces).astype(np.int32)


@pytest.mark.parametrize(("batch_size", "k", "window", "seed"), [(8, 4, 16, 0), (6, 1, 7, 1), (8, 2, 33, 2)])
def test_lanes_hold_consecutive_windows_of_their_stream(batch_size: int, k: int, window: int, seed: int) -> None:
    docs = random_docs(seed, 40, 60)
    config = PackingConfig(batch_size=batch_size, window=window, k=k, seed=seed, num_epochs=1)
    packer = DocumentPacker(docs, IntTokenizer(), config)
    batches = take(packer)
    assert all(b["inputs"].shape == (batch_size, window) for b in batches)
    assert batches[0]["inputs"].dtype == np.int32 and batches[0]["loss_mask"].dtype == np.float32
    seen = []
    for lane in lane_streams_of(batches, k):
        real = lane["doc_ids"] >= 0
        n = int(real.sum())
        assert real[:n].all() and not real[n:].any()  # padding only at the very end
        stream = expected_stream(packer, docs, lane["doc_ids"][:n])
        np.testing.assert_array_equal(lane["inputs"][:n], stream)
        # Targets are the inputs shifted by one, across window, row and batch boundaries.
        np.testing.assert_array_equal(lane["targets"][: n - 1], stream[1:])
        assert lane["loss_mask"][: n - 1].all() and not lane["loss_mask"][n - 1 :].any()
        # Between documents the stream reads <eos><bos>.
        change = np.flatnonzero(np.diff(lane["doc_ids"][:n]) != 0)
        assert (lane["inputs"][change] == EOS).all() and (lane["inputs"][change + 1] == BOS).all()
        seen += list(dict.fromkeys(lane["doc_ids"][:n].tolist()))
    assert sorted(seen) == list(range(len(docs)))  # one epoch: every document exactly once
    total = sum(len(d.split()) + 2 for d in docs)
    assert sum(float(b["loss_mask"].sum()) for b in batches) == total - config.num_lanes


def test_k_groups_with_batch_8_k_4() -> None:
    docs = random_docs(3, 30, 200)
    packer = DocumentPacker(docs, IntTokenizer(), PackingConfig(batch_size=8, window=24, k=4, seed=3))
    for batch in take(packer, 12):
        for g in range(2):
            for j in range(3):
                row, nxt = g * 4 + j, g * 4 + j + 1
                assert batch["targets"][row, -1] == batch["inputs"][nxt, 0]  # window j+1 follows window j
                assert batch["doc_ids"][row, -1] <= batch["doc_ids"][nxt, 0]
        assert not set(batch["doc_ids"][:4].ravel()) & set(batch["doc_ids"][4:].ravel())  # lanes never share
        assert batch["loss_mask"].all()


def test_seed_determinism_and_epochs() -> None:
    docs = random_docs(4, 25, 40)
    config = PackingConfig(batch_size=4, window=10, k=2, seed=11, num_epochs=3)
    first = take(DocumentPacker(docs, IntTokenizer(), config))
    again = take(DocumentPacker(docs, IntTokenizer(), config))
    assert len(first) == len(again)
    for a, b in zip(first, again, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other = take(DocumentPacker(docs, IntTokenizer(), dataclasses.replace(config, seed=12)))
    assert not np.array_equal(first[0]["inputs"], other[0]["inputs"])
    packer = DocumentPacker(docs, IntTokenizer(), config)
    take(packer)
    order = packer._order
    epochs = [[order.index_of(e * 25 + p) for p in range(25)] for e in range(3)]
    assert all(sorted(e) == list(range(25)) for e in epochs) and epochs[0] != epochs[1]
    assert packer.epoch == 3 and next(packer, None) is None
    total = 3 * sum(len(d.split()) + 2 for d in docs)
    assert sum(float(b["loss_mask"].sum()) for b in first) == total - config.num_lanes


@pytest.mark.parametrize(
    ("k", "window", "num_epochs", "streamed"), [(4, 9, None, False), (1, 5, 2, False), (2, 13, None, True)]
)
def test_state_round_trip_resumes_exactly(k: int, window: int, num_epochs: int | None, streamed: bool) -> None:
    rng = np.random.default_rng(window)
    docs = random_docs(window, 15, 50)
    source = Stream(docs) if streamed else docs
    config = PackingConfig(batch_size=4 * k, window=window, k=k, seed=5, num_epochs=num_epochs)
    reference = DocumentPacker(source, IntTokenizer(), config)
    expected = take(reference, 20) if num_epochs is None else take(reference)
    for cut in sorted(rng.choice(len(expected), size=3, replace=False)):
        packer = DocumentPacker(source, IntTokenizer(), config)
        take(packer, int(cut))
        state = json.loads(json.dumps(packer.get_state()))
        assert len(json.dumps(state)) < 2000
        resumed = DocumentPacker(source, IntTokenizer(), config)
        resumed.set_state(state)
        rest = take(resumed, len(expected) - int(cut))
        for a, b in zip(expected[int(cut) :], rest, strict=True):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
        if num_epochs is not None:
            assert next(resumed, None) is None


@pytest.mark.parametrize(("batch_size", "k", "window", "lane_streams"), [(8, 4, 16, False), (3, 1, 7, True)])
def test_aligned_documents_start_groups_and_never_share_a_window(
    batch_size: int, k: int, window: int, lane_streams: bool
) -> None:
    docs = random_docs(7 + k, 40, 3 * window)
    config = PackingConfig(
        batch_size=batch_size, window=window, k=k, seed=2, num_epochs=1, align_documents=True, lane_streams=lane_streams
    )
    packer = DocumentPacker(docs, IntTokenizer(), config)
    batches = take(packer)
    seen = []
    for lane in lane_streams_of(batches, k):
        ids = lane["doc_ids"]
        starts = np.flatnonzero((ids >= 0) & (np.r_[-1, ids[:-1]] != ids))
        assert (starts % (k * window) == 0).all()  # every document opens a group of k windows
        for row in ids.reshape(-1, window):
            assert len(set(row[row >= 0].tolist())) <= 1  # never two documents in one window
        order = [int(d) for d in dict.fromkeys(ids.tolist()) if d >= 0]
        for d in order:  # each document whole and in order, its padding after it
            at = np.flatnonzero(ids == d)
            assert (np.diff(at) == 1).all()
            tokens = [BOS, *IntTokenizer().encode(docs[packer._order.index_of(d)]), EOS]
            np.testing.assert_array_equal(lane["inputs"][at], tokens)
        padding = ids < 0
        assert (lane["inputs"][padding] == PAD).all()
        assert not lane["loss_mask"][padding].any()  # nothing is learnt on or after padding
        inside = np.flatnonzero(~padding[:-1] & ~padding[1:])
        assert lane["loss_mask"][inside].all()
        seen += order
    assert sorted(seen) == list(range(len(docs)))
    # resuming from a state taken mid-way gives the same batches (padding segments are in the state)
    for cut in (1, len(batches) // 2):
        partial = DocumentPacker(docs, IntTokenizer(), config)
        take(partial, cut)
        resumed = DocumentPacker(docs, IntTokenizer(), config)
        resumed.set_state(json.loads(json.dumps(partial.get_state())))
        for a, b in zip(batches[cut:], take(resumed), strict=True):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
    unaligned = DocumentPacker(docs, IntTokenizer(), dataclasses.replace(config, align_documents=False))
    with pytest.raises(ValueError, match="align_documents"):
        unaligned.set_state(partial.get_state())


def test_empty_documents_are_skipped() -> None:
    docs = ["", "5 6 7", "", "", "8 9", ""]
    packer = DocumentPacker(docs, IntTokenizer(), PackingConfig(batch_size=1, window=4, num_epochs=1, seed=0))
    batches = take(packer)
    inputs = np.concatenate([b["inputs"][0] for b in batches])
    assert sorted(inputs[inputs > 2].tolist()) == [5, 6, 7, 8, 9]
    assert (inputs == BOS).sum() == 2


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="batch_size=6 is not divisible by k=4"):
        PackingConfig(batch_size=6, window=8, k=4)
    with pytest.raises(ValueError, match="window must be a positive int"):
        PackingConfig(batch_size=4, window=0)
    with pytest.raises(ValueError, match="num_epochs"):
        PackingConfig(batch_size=4, window=8, num_epochs=0)
    config = PackingConfig.from_dict({"batch_size": 8, "window": 16, "k": 4, "seed": 3})
    assert config.num_lanes == 2
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['kk'\] in PackingConfig; valid keys: batch_size"):
        PackingConfig.from_dict({"batch_size": 8, "window": 16, "kk": 4})


def test_data_and_state_errors() -> None:
    tok = IntTokenizer()
    with pytest.raises(ValueError, match="document sequence is empty"):
        DocumentPacker([], tok, PackingConfig(batch_size=2, window=4))
    with pytest.raises(ValueError, match="zero tokens"):
        next(DocumentPacker(["", " "], tok, PackingConfig(batch_size=2, window=4)))
    with pytest.raises(ValueError, match="hold no tokens"):
        next(DocumentPacker(["", " "], tok, PackingConfig(batch_size=2, window=4, num_epochs=1)))
    docs = random_docs(8, 10, 30)
    packer = DocumentPacker(docs, tok, PackingConfig(batch_size=2, window=4, seed=1))
    take(packer, 3)
    state = packer.get_state()
    with pytest.raises(ValueError, match=r"different \['seed'\]"):
        DocumentPacker(docs, tok, PackingConfig(batch_size=2, window=4, seed=2)).set_state(state)
    with pytest.raises(ValueError, match=r"different \['num_documents'\]"):
        DocumentPacker(docs[:9], tok, PackingConfig(batch_size=2, window=4, seed=1)).set_state(state)
    with pytest.raises(ValueError, match="not a DocumentPacker state"):
        packer.set_state({"epoch": 0})
    with pytest.raises(ValueError, match="format 9"):
        packer.set_state({**state, "format": 9})


def test_shipped_demo_end_to_end() -> None:
    tok = load_tokenizer(None)
    docs = load_documents(DataSourceConfig(path="focused:sotu", split="all"))
    packer = DocumentPacker(docs, tok, PackingConfig(batch_size=8, window=128, k=4, seed=0))
    batches = take(packer, 30)
    lanes = lane_streams_of(batches, k=4)
    for lane in lanes:
        text = tok.decode(lane["inputs"])
        assert text.startswith("<s>") and "</s><s>" in text
        first_doc = lane["doc_ids"][0]
        body = lane["inputs"][1 : int(np.argmax(lane["doc_ids"] != first_doc)) - 1]
        assert tok.decode(body) == docs[packer._order.index_of(int(first_doc))]
