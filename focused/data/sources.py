"""Document sources: HF ``datasets`` (hub names or local files) and the shipped demo corpus.

:func:`load_documents` turns a :class:`DataSourceConfig` into the document strings of one split: a
:class:`Documents` sequence (random access, so the packer can shuffle) or, with ``streaming=True``, a
:class:`StreamingDocuments` iterable read front to back.
"""

from __future__ import annotations

import bisect
import dataclasses
import glob
import gzip
import json
import operator
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from focused.config import checked_fields

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
DEMO_SOURCES = ("focused:moby_dick", "focused:sotu", "focused:demo")
DEMO_SPLITS = ("train", "test", "all")
HELDOUT_CHAPTER = "CHAPTER 116."  # Moby Dick from this chapter on is the held-out (test) part
HELDOUT_FIRST_YEAR = 1845  # State of the Union addresses of this year and later are held out
GRANULARITIES = ("document", "line")
# File extension → HF packaged builder; a trailing compression suffix is looked through.
BUILDER_BY_EXTENSION = {
    ".json": "json",
    ".jsonl": "json",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".parquet": "parquet",
    ".csv": "csv",
}
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
PACKAGED_BUILDERS = ("json", "text", "parquet", "csv")


@dataclasses.dataclass(frozen=True)
class DataSourceConfig:
    """Where the documents come from.

    Attributes:
        path: a hub dataset (``"wikitext"``, ``"allenai/c4"``); a local file, folder or glob (the builder follows
            from the extension: .json/.jsonl, .txt/.text/.md, .parquet, .csv, each optionally .gz/.bz2/.xz/.zst);
            a packaged builder name (``"json"``, ``"text"``, ``"parquet"``, ``"csv"``) together with
            ``data_files``; or a shipped demo set: ``"focused:moby_dick"``, ``"focused:sotu"``, ``"focused:demo"``.
        name: the hub dataset's configuration name (``"wikitext-103-raw-v1"``).
        split: which split to read; slicing such as ``"train[:1000]"`` works.
        data_files: files (or globs) for a builder name or a hub dataset.
        text_field: the column holding the document text.
        text_granularity: for plain text files, ``"document"`` (a whole file is one document) or ``"line"``.
        streaming: read lazily with an HF ``IterableDataset`` (no random access, so no shuffling).
    """

    path: str
    name: str | None = None
    split: str = "train"
    data_files: str | tuple[str, ...] | None = None
    text_field: str = "text"
    text_granularity: str = "document"
    streaming: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"data source path must be a non-empty string, got {self.path!r}")
        if self.text_granularity not in GRANULARITIES:
            raise ValueError(f"text_granularity={self.text_granularity!r} is not one of {GRANULARITIES}")
        if self.data_files is not None and not isinstance(self.data_files, str):
            object.__setattr__(self, "data_files", tuple(str(f) for f in self.data_files))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DataSourceConfig:
        """Build from a dict or an ``ml_collections.ConfigDict`` section; unknown keys are an error."""
        return cls(**checked_fields(cls, values))


class Documents(Sequence[str]):
    """Random-access document texts: one column of an HF ``datasets.Dataset``.

    Attributes:
        dataset: the underlying dataset, reduced to the text column.
        text_field: the column read.
    """

    def __init__(self, dataset: Any, text_field: str) -> None:
        self.dataset = dataset.select_columns([text_field])
        self.text_field = text_field

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        return _as_text(self.dataset[operator.index(index)][self.text_field], self.text_field)

    def __iter__(self) -> Iterator[str]:
        for chunk in self.dataset.iter(batch_size=256):
            for text in chunk[self.text_field]:
                yield _as_text(text, self.text_field)


class StreamingDocuments(Iterable[str]):
    """Document texts read front to back from an HF ``datasets.IterableDataset``; each ``iter`` restarts."""

    def __init__(self, dataset: Any, text_field: str) -> None:
        self.dataset = dataset
        self.text_field = text_field

    def __iter__(self) -> Iterator[str]:
        for example in self.dataset:
            yield _as_text(example[self.text_field], self.text_field)


def _as_text(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} holds {type(value).__name__} values, not text: set text_field")
    return value


def load_documents(config: DataSourceConfig) -> Documents | StreamingDocuments:
    """Load the documents of ``config.split`` described by ``config``.

    Returns:
        :class:`Documents` (``len`` and indexing) or, when ``config.streaming``, :class:`StreamingDocuments`.
    """
    import datasets

    if config.path.startswith("focused:"):
        return _load_demo(config)
    builder, data_files = _resolve(config)
    kwargs: dict[str, Any] = {"split": config.split, "streaming": config.streaming}
    if builder in PACKAGED_BUILDERS:
        kwargs["data_files"] = list(data_files)
        if builder == "text":
            kwargs["sample_by"] = "document" if config.text_granularity == "document" else "line"
    else:
        kwargs["name"] = config.name
        if config.data_files is not None:
            kwargs["data_files"] = config.data_files
    label = f"data source {config.path!r} (split {config.split!r})"
    try:
        dataset = datasets.load_dataset(builder, **kwargs)
    except StopIteration as err:  # the json builder's schema inference on a file without records
        raise ValueError(f"{label} has no records: check data_files") from err
    except datasets.exceptions.DatasetGenerationError as err:
        raise ValueError(f"HF datasets could not read {label}: {err.__cause__ or err}") from err
    except ValueError as err:
        if "corresponds to no data" in str(err):
            raise ValueError(f"{label} is empty: point the data source at files with documents") from err
        if str(err).startswith("Unknown split"):  # "Unknown split "test". Should be one of ['train']."
            raise ValueError(f"{label}: {err} Set the source's split (e.g. --config.source.split=train)") from err
        raise
    return wrap_dataset(dataset, config.text_field, label)


def wrap_dataset(dataset: Any, text_field: str = "text", label: str = "dataset") -> Documents | StreamingDocuments:
    """Check that an HF ``Dataset`` / ``IterableDataset`` is non-empty and has ``text_field``, then wrap it.

    Args:
        dataset: the loaded split.
        text_field: the column holding the text.
        label: how error messages name the source.
    """
    import datasets

    if isinstance(dataset, datasets.IterableDataset):
        try:
            first = next(iter(dataset))
        except StopIteration:
            raise ValueError(f"{label} is empty: point the data source at files with documents") from None
        if text_field not in first:
            raise ValueError(f"{label} has no field {text_field!r}; its fields are {sorted(first)}: set text_field")
        return StreamingDocuments(dataset, text_field)
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(f"{label} is a {type(dataset).__name__}, not one split: choose a split")
    if text_field not in dataset.column_names:
        raise ValueError(f"{label} has no field {text_field!r}; its fields are {dataset.column_names}: set text_field")
    if len(dataset) == 0:
        raise ValueError(f"{label} is empty: point the data source at files with documents")
    return Documents(dataset, text_field)


def _builder_of(path: str) -> str | None:
    """The packaged builder for a file name, looking through one compression suffix."""
    stem = path.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return BUILDER_BY_EXTENSION.get(os.path.splitext(stem)[1])


def _expand(patterns: Sequence[str]) -> list[str]:
    """Local files named by ``patterns`` (paths or globs); missing or empty files are an error."""
    files: list[str] = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches or not all(os.path.isfile(m) for m in matches):
            raise FileNotFoundError(f"data file {pattern!r} does not exist: check the path / data_files")
        for match in matches:
            if os.path.getsize(match) == 0:
                raise ValueError(f"data file {match!r} is empty: remove it from the data source")
        files.extend(matches)
    return files


def _resolve(config: DataSourceConfig) -> tuple[str, list[str]]:
    """(builder or hub name, local data files) for a non-demo source."""
    path = config.path
    listed = [config.data_files] if isinstance(config.data_files, str) else list(config.data_files or ())
    if path in PACKAGED_BUILDERS:
        if not listed:
            raise ValueError(f"path={path!r} names a file format: also give data_files=[...] to read")
        return path, _expand(listed)
    local = os.path.expanduser(path)
    looks_local = path.startswith(("/", "./", "../", "~")) or _builder_of(path) is not None
    if os.path.isdir(local):
        candidates = sorted(
            os.path.join(local, f) for f in os.listdir(local) if _builder_of(f) and not f.startswith(".")
        )
        builders = {_builder_of(f) for f in candidates}
        if len(builders) != 1:
            raise ValueError(
                f"folder {path!r} must hold data files of one format (.jsonl, .txt, .parquet, .csv), "
                f"found {sorted(b for b in builders if b) or 'none'}"
            )
        return builders.pop(), _expand(candidates)
    if os.path.exists(local) or glob.has_magic(local) or looks_local:
        if listed:
            raise ValueError(f"path={path!r} is a local file: give either it or data_files, not both")
        builder = _builder_of(local)
        if builder is None:
            raise ValueError(
                f"cannot tell the format of {path!r} from its extension: use path='json'/'text'/'parquet'/'csv' "
                "with data_files=[...]"
            )
        return builder, _expand([local])
    return path, []


def _load_demo(config: DataSourceConfig) -> Documents | StreamingDocuments:
    """The shipped public-domain demo sets (see ``focused/data/assets/README.md``), split into ``train`` and a
    held-out ``test`` split (``all`` = both):

    - Moby Dick: ``train`` is the book up to ``CHAPTER 116.``; ``test`` is the rest (chapters 116-135 and the
      epilogue, ~47K tokens of the shipped tokenizer), one document each.
    - State of the Union: ``train`` holds the addresses before 1845, ``test`` those of 1845-1849 (5 long ones).

    ``focused:demo`` is Moby Dick's part followed by the addresses. Evaluations read ``test``; training never does.
    """
    import datasets

    if config.path not in DEMO_SOURCES:
        raise ValueError(f"unknown shipped data set {config.path!r}; available: {list(DEMO_SOURCES)}")
    if config.text_field != "text":
        raise ValueError(f"the shipped data sets have only the field 'text', not {config.text_field!r}")
    if config.split not in DEMO_SPLITS:
        raise ValueError(
            f"the shipped data set {config.path!r} has the splits {list(DEMO_SPLITS)}, not {config.split!r} "
            "(test is held out from train)"
        )
    texts: list[str] = []
    if config.path in ("focused:moby_dick", "focused:demo"):
        parts = demo_book_parts()
        book = parts[0] + parts[1] if config.split == "all" else parts[config.split == "test"]
        texts += book.splitlines() if config.text_granularity == "line" else [book]
    if config.path in ("focused:sotu", "focused:demo"):
        texts += [
            address["text"]
            for address in demo_addresses()
            if config.split == "all" or (address["year"] >= HELDOUT_FIRST_YEAR) == (config.split == "test")
        ]
    dataset = datasets.Dataset.from_dict({"text": texts})
    if config.streaming:
        dataset = dataset.to_iterable_dataset()
    return wrap_dataset(dataset, config.text_field, config.path)


def _asset(name: str) -> Path:
    file = ASSETS_DIR / name
    if not file.is_file():
        raise FileNotFoundError(f"shipped asset {file} is missing: rebuild with focused.data.build_assets")
    return file


def demo_book_parts() -> tuple[str, str]:
    """Moby Dick split before ``HELDOUT_CHAPTER``: (training part, held-out part); together the whole book."""
    with gzip.open(_asset("moby_dick.txt.gz"), "rt", encoding="utf-8") as f:
        book = f.read()
    cut = book.rfind(HELDOUT_CHAPTER)  # the chapter itself, not its line in the table of contents
    if cut < len(book) // 2:
        raise ValueError(f"the shipped Moby Dick has no {HELDOUT_CHAPTER!r}: rebuild with focused.data.build_assets")
    return book[:cut], book[cut:]


def demo_addresses() -> list[dict[str, Any]]:
    """The shipped State of the Union addresses, in order: dicts with year, president, party, text."""
    with gzip.open(_asset("sotu.jsonl.gz"), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class ShuffledOrder:
    """The documents of a :class:`Documents` sequence in a fresh seeded permutation each epoch.

    Draw ``n`` (0, 1, 2, …) is document ``perm_e[n mod N]`` of epoch ``e = n // N``, where ``perm_e`` is the
    permutation of ``N`` documents drawn from ``numpy.random.default_rng([seed, e])`` (the identity when
    ``shuffle`` is off). Any draw can be fetched at any time, which makes resuming cheap.
    """

    def __init__(
        self, documents: Sequence[str], seed: int, shuffle: bool = True, num_epochs: int | None = None
    ) -> None:
        if len(documents) == 0:
            raise ValueError("the document sequence is empty: load a data source with at least one document")
        self.documents = documents
        self.seed = seed
        self.shuffle = shuffle
        self.num_epochs = num_epochs
        self.num_documents = len(documents)
        self._perms: dict[int, Any] = {}

    def epoch_of(self, draw: int) -> int:
        return draw // self.num_documents

    def index_of(self, draw: int) -> int:
        """Row of the dataset that draw ``draw`` reads."""
        import numpy as np

        epoch, pos = divmod(draw, self.num_documents)
        if not self.shuffle:
            return pos
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_documents)
        return int(self._perms[epoch][pos])

    def get(self, draw: int) -> str | None:
        """Text of draw ``draw``, or ``None`` once ``num_epochs`` epochs are used up."""
        if self.num_epochs is not None and self.epoch_of(draw) >= self.num_epochs:
            return None
        return self.documents[self.index_of(draw)]


class StreamOrder:
    """The documents of an iterable, in stream order, epoch after epoch (each epoch re-iterates it).

    Draws are best fetched in increasing order; asking for an earlier draw re-reads the stream from its start.
    """

    def __init__(self, documents: Iterable[str], num_epochs: int | None = None) -> None:
        self.documents = documents
        self.num_epochs = num_epochs
        self.num_documents: int | None = None
        self._restart()

    def _restart(self) -> None:
        self._iter = iter(self.documents)
        self._next = 0  # the draw number the iterator yields next
        self._epoch_starts = [0]
        self._end: int | None = None

    def epoch_of(self, draw: int) -> int:
        return bisect.bisect_right(self._epoch_starts, draw) - 1

    def get(self, draw: int) -> str | None:
        """Text of draw ``draw``, or ``None`` once ``num_epochs`` epochs are used up."""
        if draw < self._next:
            self._restart()
        while self._end is None or draw < self._end:
            try:
                text = next(self._iter)
            except StopIteration:
                if self._next == self._epoch_starts[-1]:
                    raise ValueError("the document stream is empty: check the data source") from None
                self.num_documents = self._next - self._epoch_starts[-1]
                if self.num_epochs is not None and len(self._epoch_starts) >= self.num_epochs:
                    self._end = self._next
                    break
                self._epoch_starts.append(self._next)
                self._iter = iter(self.documents)
                continue
            self._next += 1
            if self._next - 1 == draw:
                return text
        return None


def document_order(
    documents: Sequence[str] | Iterable[str], seed: int, shuffle: bool = True, num_epochs: int | None = None
) -> ShuffledOrder | StreamOrder:
    """A :class:`ShuffledOrder` for sequences (lists, :class:`Documents`), a :class:`StreamOrder` otherwise."""
    if isinstance(documents, str | bytes):
        raise ValueError("documents must be a collection of texts, not a single string: wrap it in a list")
    if isinstance(documents, Sequence):
        return ShuffledOrder(documents, seed, shuffle, num_epochs)
    return StreamOrder(documents, num_epochs)
