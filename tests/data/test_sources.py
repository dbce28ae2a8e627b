"""Tests for focused.data.sources: local files through HF datasets, the shipped demo sets, document orders."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from focused.data import (
    DataSourceConfig,
    Documents,
    ShuffledOrder,
    StreamingDocuments,
    StreamOrder,
    document_order,
    load_documents,
    wrap_dataset,
)

WORDS = ["whale", "sea", "ship", "harpoon", "captain", "mast", "sail", "deck", "oil", "boat", "crew", "wind"]


def random_texts(seed: int, count: int) -> list[str]:
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(count):
        lines = [" ".join(rng.choice(WORDS, size=rng.integers(1, 12))) for _ in range(rng.integers(1, 4))]
        texts.append("\n".join(lines))
    return texts


def write_jsonl(path: Path, rows: list[dict], compress: bool = False) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def test_config_from_dict_and_validation() -> None:
    from ml_collections import ConfigDict

    section = ConfigDict({"path": "wikitext", "name": "wikitext-2-raw-v1", "split": "validation"})
    config = DataSourceConfig.from_dict(section)
    assert (config.path, config.name, config.split, config.text_field) == (
        "wikitext",
        "wikitext-2-raw-v1",
        "validation",
        "text",
    )
    assert DataSourceConfig.from_dict({"path": "json", "data_files": ["a", "b"]}).data_files == ("a", "b")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['txt_field'\] in DataSourceConfig; valid keys:"):
        DataSourceConfig.from_dict({"path": "x", "txt_field": "body"})
    with pytest.raises(ValueError, match="text_granularity"):
        DataSourceConfig(path="x", text_granularity="paragraph")
    with pytest.raises(ValueError, match="non-empty string"):
        DataSourceConfig(path="")


def test_local_jsonl_plain_gz_and_glob(tmp_path: Path) -> None:
    texts = random_texts(0, 17)
    rows = [{"id": i, "body": t} for i, t in enumerate(texts)]
    plain = write_jsonl(tmp_path / "docs.jsonl", rows)
    docs = load_documents(DataSourceConfig(path=str(plain), text_field="body"))
    assert isinstance(docs, Documents)
    assert len(docs) == 17 and list(docs) == texts and docs[np.int64(5)] == texts[5]
    write_jsonl(tmp_path / "part-1.jsonl.gz", rows[:9], compress=True)
    write_jsonl(tmp_path / "part-2.jsonl.gz", rows[9:], compress=True)
    globbed = load_documents(
        DataSourceConfig(path="json", data_files=str(tmp_path / "part-*.jsonl.gz"), text_field="body")
    )
    assert list(globbed) == texts
    sliced = load_documents(DataSourceConfig(path=str(plain), split="train[:4]", text_field="body"))
    assert list(sliced) == texts[:4]
    with pytest.raises(ValueError, match=r"Unknown split \"test\".* Set the source's split") as err:
        load_documents(DataSourceConfig(path=str(plain), split="test", text_field="body"))
    assert "\n" not in str(err.value)


def test_local_text_document_and_line(tmp_path: Path) -> None:
    texts = random_texts(1, 3)
    for i, text in enumerate(texts):
        (tmp_path / f"doc{i}.txt").write_text(text)
    by_doc = load_documents(DataSourceConfig(path=str(tmp_path / "doc0.txt")))
    assert list(by_doc) == [texts[0]]
    files = tuple(str(tmp_path / f"doc{i}.txt") for i in range(3))
    several = load_documents(DataSourceConfig(path="text", data_files=files))
    assert list(several) == texts
    folder = load_documents(DataSourceConfig(path=str(tmp_path)))
    assert sorted(folder) == sorted(texts)
    by_line = load_documents(DataSourceConfig(path=str(tmp_path / "doc0.txt"), text_granularity="line"))
    assert list(by_line) == texts[0].split("\n")
    (tmp_path / "zipped.txt.gz").write_bytes(gzip.compress(texts[1].encode()))
    assert list(load_documents(DataSourceConfig(path=str(tmp_path / "zipped.txt.gz")))) == [texts[1]]


def test_local_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = random_texts(2, 11)
    table = pa.table({"text": texts, "n": list(range(11))})
    pq.write_table(table, tmp_path / "docs.parquet")
    docs = load_documents(DataSourceConfig(path=str(tmp_path / "docs.parquet")))
    assert list(docs) == texts and docs[10] == texts[10]


def test_streaming(tmp_path: Path) -> None:
    texts = random_texts(3, 9)
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in texts])
    docs = load_documents(DataSourceConfig(path=str(path), streaming=True))
    assert isinstance(docs, StreamingDocuments)
    assert list(docs) == texts and list(docs) == texts  # each iteration restarts
    with pytest.raises(ValueError, match=r"no field 'body'; its fields are \['text'\]"):
        load_documents(DataSourceConfig(path=str(path), streaming=True, text_field="body"))


def test_shipped_demo_sets() -> None:
    sotu = load_documents(DataSourceConfig(path="focused:sotu", split="all"))
    assert len(sotu) == 60
    assert sotu[0].startswith("Fellow-Citizens of the Senate and House of Representatives")
    moby = load_documents(DataSourceConfig(path="focused:moby_dick", split="all"))
    assert len(moby) == 1 and len(moby[0]) > 1_200_000 and "Call me Ishmael." in moby[0]
    demo = load_documents(DataSourceConfig(path="focused:demo", split="all"))
    assert len(demo) == 61 and demo[0] == moby[0] and demo[60] == sotu[59]
    lines = load_documents(DataSourceConfig(path="focused:moby_dick", text_granularity="line"))
    assert len(lines) > 2_000 and any(line.startswith("Call me Ishmael.") for line in lines)
    streamed = load_documents(DataSourceConfig(path="focused:sotu", streaming=True))
    assert next(iter(streamed)) == sotu[0]


def test_shipped_demo_splits_hold_out_the_last_chapters_and_addresses() -> None:
    """train (the default) and test partition each shipped set: Moby Dick is cut before chapter 116, the addresses
    of 1845-1849 are held out."""
    book = load_documents(DataSourceConfig(path="focused:moby_dick", split="all"))[0]
    train = load_documents(DataSourceConfig(path="focused:moby_dick"))
    test = load_documents(DataSourceConfig(path="focused:moby_dick", split="test"))
    assert len(train) == len(test) == 1 and train[0] + test[0] == book
    assert test[0].startswith("CHAPTER 116. The Dying Whale.") and "Call me Ishmael." in train[0]
    assert "CHAPTER 116." not in train[0].split("CHAPTER 115.")[-1]
    sotu = list(load_documents(DataSourceConfig(path="focused:sotu", split="all")))
    held = list(load_documents(DataSourceConfig(path="focused:sotu", split="test")))
    kept = list(load_documents(DataSourceConfig(path="focused:sotu", split="train")))
    assert held == sotu[-5:] and kept == sotu[:-5]
    demo_test = load_documents(DataSourceConfig(path="focused:demo", split="test"))
    assert list(demo_test) == [test[0], *held]
    streamed = load_documents(DataSourceConfig(path="focused:demo", split="test", streaming=True))
    assert list(streamed) == list(demo_test)
    book_lines = load_documents(DataSourceConfig(path="focused:moby_dick", split="test", text_granularity="line"))
    assert book_lines[0] == "CHAPTER 116. The Dying Whale."
    with pytest.raises(ValueError, match=r"has the splits \['train', 'test', 'all'\], not 'validation'"):
        load_documents(DataSourceConfig(path="focused:demo", split="validation"))


def test_error_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_documents(DataSourceConfig(path=str(tmp_path / "missing.jsonl")))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_documents(DataSourceConfig(path="json", data_files=str(tmp_path / "none-*.jsonl")))
    with pytest.raises(ValueError, match="also give data_files"):
        load_documents(DataSourceConfig(path="json"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_documents(DataSourceConfig(path=str(tmp_path / "empty.jsonl")))
    write_jsonl(tmp_path / "no_records.jsonl.gz", [], compress=True)
    with pytest.raises(ValueError, match="has no records"):
        load_documents(DataSourceConfig(path=str(tmp_path / "no_records.jsonl.gz")))
    path = write_jsonl(tmp_path / "docs.jsonl", [{"body": t} for t in random_texts(4, 5)])
    with pytest.raises(ValueError, match=r"no field 'text'; its fields are \['body'\]: set text_field"):
        load_documents(DataSourceConfig(path=str(path)))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "no_rows.parquet")
    with pytest.raises(ValueError, match="HF datasets could not read"):
        load_documents(DataSourceConfig(path=str(tmp_path / "no_rows.parquet")))
    (tmp_path / "header.csv").write_text("text\n")
    with pytest.raises(ValueError, match=r"split 'train'\) is empty"):
        load_documents(DataSourceConfig(path=str(tmp_path / "header.csv")))
    numbers = write_jsonl(tmp_path / "numbers.jsonl", [{"text": 3}, {"text": 4}])
    with pytest.raises(ValueError, match="not text"):
        load_documents(DataSourceConfig(path=str(numbers)))[0]
    with pytest.raises(ValueError, match="unknown shipped data set"):
        load_documents(DataSourceConfig(path="focused:pg19"))
    with pytest.raises(ValueError, match="only the field 'text'"):
        load_documents(DataSourceConfig(path="focused:sotu", text_field="president"))
    (tmp_path / "notes.rtf").write_text("x")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_documents(DataSourceConfig(path=str(tmp_path / "notes.rtf")))
    with pytest.raises(ValueError, match="either it or data_files"):
        load_documents(DataSourceConfig(path=str(path), data_files="other.jsonl"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.txt").write_text("a")
    write_jsonl(mixed / "b.jsonl", [{"text": "b"}])
    with pytest.raises(ValueError, match="one format"):
        load_documents(DataSourceConfig(path=str(mixed)))


def test_wrap_dataset() -> None:
    import datasets

    texts = random_texts(5, 4)
    docs = wrap_dataset(datasets.Dataset.from_dict({"body": texts}), "body")
    assert list(docs) == texts
    streamed = wrap_dataset(datasets.Dataset.from_dict({"text": texts}).to_iterable_dataset())
    assert list(streamed) == texts
    with pytest.raises(ValueError, match="my set is empty"):
        wrap_dataset(datasets.Dataset.from_dict({"text": []}), label="my set")
    features = datasets.Features({"text": datasets.Value("string")})
    with pytest.raises(ValueError, match="is empty"):
        wrap_dataset(datasets.IterableDataset.from_generator(no_rows, features=features))
    with pytest.raises(ValueError, match="not one split"):
        wrap_dataset(datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts})}))


def test_shuffled_order_is_seeded_per_epoch() -> None:
    docs = [f"doc {i}" for i in range(23)]
    order = ShuffledOrder(docs, seed=7)
    epochs = [[order.index_of(e * 23 + p) for p in range(23)] for e in range(3)]
    assert all(sorted(e) == list(range(23)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    again = ShuffledOrder(docs, seed=7)
    assert [again.get(n) for n in reversed(range(69))] == [docs[epochs[n // 23][n % 23]] for n in reversed(range(69))]
    assert [ShuffledOrder(docs, seed=8).index_of(p) for p in range(23)] != epochs[0]
    assert [ShuffledOrder(docs, seed=7, shuffle=False).get(n) for n in range(30)] == (docs + docs)[:30]
    finite = ShuffledOrder(docs, seed=7, num_epochs=2)
    assert finite.get(45) is not None and finite.get(46) is None and finite.epoch_of(46) == 2
    with pytest.raises(ValueError, match="empty"):
        ShuffledOrder([], seed=0)


def test_stream_order() -> None:
    docs = StreamingList([f"doc {i}" for i in range(5)])
    order = StreamOrder(docs)
    assert [order.get(n) for n in range(12)] == [f"doc {n % 5}" for n in range(12)]
    assert order.epoch_of(11) == 2 and order.num_documents == 5
    assert order.get(3) == "doc 3"  # going back re-reads the stream
    finite = StreamOrder(docs, num_epochs=2)
    assert [finite.get(n) for n in range(11)] == [f"doc {n % 5}" for n in range(10)] + [None]
    assert finite.get(20) is None and finite.get(7) == "doc 2"
    with pytest.raises(ValueError, match="stream is empty"):
        StreamOrder(StreamingList([])).get(0)
    assert isinstance(document_order(docs, seed=0), StreamOrder)
    assert isinstance(document_order(list(docs), seed=0), ShuffledOrder)
    with pytest.raises(ValueError, match="not a single string"):
        document_order("one long text", seed=0)


def no_rows():
    yield from ()


class StreamingList:
    """An iterable without random access, like an HF IterableDataset."""

    def __init__(self, items: list[str]) -> None:
        self.items = items

    def __iter__(self):
        return iter(self.items)
