"""Tokenizers: the shipped byte-level BPE, any HF ``tokenizer.json``, or a sentencepiece ``tokenizer.model``.

:func:`load_tokenizer` returns a :class:`Tokenizer`, one small interface over both backends. ``encode`` never adds
special tokens: the packing pipeline places ``<s>`` / ``</s>`` itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SHIPPED_TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "tokenizer"
SHIPPED_NAME = "focused"


class Tokenizer:
    """A text ↔ token-id codec with known special ids.

    Use :func:`load_tokenizer` to build one. ``backend`` is ``"hf"`` (a ``tokenizers.Tokenizer``) or
    ``"sentencepiece"`` (a ``sentencepiece.SentencePieceProcessor``).

    Attributes:
        backend: which library encodes.
        vocab_size: number of token ids (special and added tokens included).
        bos_id: id of the beginning-of-sequence token (``<s>``; 1 for LLaMA).
        eos_id: id of the end-of-sequence token (``</s>``; 2 for LLaMA).
        pad_id: id used for padding (``<unk>`` = 0 for LLaMA, which has no pad token).
        source: the file the tokenizer was read from.
    """

    def __init__(
        self, backend: str, model: Any, *, bos_id: int, eos_id: int, pad_id: int, vocab_size: int, source: str
    ) -> None:
        if backend not in ("hf", "sentencepiece"):
            raise ValueError(f"unknown tokenizer backend {backend!r}: use 'hf' or 'sentencepiece'")
        for name, value in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
            if not 0 <= value < vocab_size:
                raise ValueError(f"{name}={value} is outside the vocabulary [0, {vocab_size}) of {source}")
        self.backend = backend
        self._model = model
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.vocab_size = vocab_size
        self.source = source

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added: ``[len]``."""
        if self.backend == "hf":
            return self._model.encode(text, add_special_tokens=False).ids
        return self._model.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no special tokens), encoded in parallel by the backend."""
        texts = list(texts)
        if self.backend == "hf":
            return [enc.ids for enc in self._model.encode_batch(texts, add_special_tokens=False)]
        return self._model.encode(texts)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (``[len]``); special tokens are kept unless ``skip_special_tokens``."""
        ids = [int(i) for i in ids]
        if self.backend == "hf":
            return self._model.decode(ids, skip_special_tokens=skip_special_tokens)
        if skip_special_tokens:
            ids = [i for i in ids if not self._model.is_control(i)]
        return self._model.decode(ids)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(backend={self.backend!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
            f"eos_id={self.eos_id}, pad_id={self.pad_id}, source={self.source!r})"
        )


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """Load a tokenizer.

    Args:
        path: ``None`` or ``"focused"`` for the shipped byte-level BPE (vocab 4096); a folder holding
            ``tokenizer.json`` (HF tokenizers; preferred when both exist) or ``tokenizer.model`` (sentencepiece,
            how LLaMA / OpenLLaMA ship); or the path of one such file.

    Returns:
        A :class:`Tokenizer`.
    """
    if path is None or str(path) == SHIPPED_NAME:
        path = SHIPPED_TOKENIZER_DIR
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"tokenizer path {str(path)!r} does not exist: pass a folder with tokenizer.json or tokenizer.model, "
            f"one of those files, or None / {SHIPPED_NAME!r} for the shipped tokenizer"
        )
    if path.is_dir():
        for name in ("tokenizer.json", "tokenizer.model"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise FileNotFoundError(
                f"tokenizer folder {str(path)!r} has neither tokenizer.json (HF tokenizers) nor tokenizer.model "
                "(sentencepiece): point at a folder that has one"
            )
    if path.suffix == ".json":
        return _load_hf(path)
    if path.suffix == ".model":
        return _load_sentencepiece(path)
    raise ValueError(
        f"cannot tell the tokenizer type of {str(path)!r}: expected a .json (HF tokenizers) "
        "or .model (sentencepiece) file"
    )


def _token_content(value: Any) -> str | None:
    """The token string of a ``tokenizer_config.json`` entry (a string or an AddedToken dict)."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _load_hf(path: Path) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    try:
        model = HFTokenizer.from_file(str(path))
    except Exception as err:  # the Rust error names the broken field
        raise ValueError(f"{str(path)!r} is not a valid HF tokenizer.json file: {err}") from err
    special: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        config_path = path.parent / name
        if config_path.is_file():
            special.update(json.loads(config_path.read_text(encoding="utf-8")))

    def token_id(key: str, fallbacks: tuple[str, ...]) -> int | None:
        candidates = [_token_content(special.get(key)), *fallbacks]
        for token in candidates:
            if token is not None and model.token_to_id(token) is not None:
                return model.token_to_id(token)
        return None

    bos_id = token_id("bos_token", ("<s>", "<|begin_of_text|>", "<|endoftext|>"))
    eos_id = token_id("eos_token", ("</s>", "<|end_of_text|>", "<|endoftext|>"))
    if bos_id is None or eos_id is None:
        raise ValueError(
            f"{str(path)!r} has no bos/eos token: add bos_token and eos_token to a tokenizer_config.json next to it"
        )
    pad_id = token_id("pad_token", ("<pad>",))
    if pad_id is None:
        pad_id = token_id("unk_token", ("<unk>",))
    if pad_id is None:
        pad_id = eos_id
    vocab_size = model.get_vocab_size(with_added_tokens=True)
    return Tokenizer("hf", model, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, vocab_size=vocab_size, source=str(path))


def _load_sentencepiece(path: Path) -> Tokenizer:
    import sentencepiece

    model = sentencepiece.SentencePieceProcessor()
    try:
        model.Load(str(path))
    except (OSError, RuntimeError) as err:
        raise ValueError(f"{str(path)!r} is not a valid sentencepiece model: {err}") from err
    bos_id, eos_id = model.bos_id(), model.eos_id()
    if bos_id < 0 or eos_id < 0:
        raise ValueError(f"sentencepiece model {str(path)!r} was trained without bos/eos ids: retrain with them")
    # LLaMA's sentencepiece model has pad_id = -1 and pads with <unk> = 0.
    pad_id = model.pad_id() if model.pad_id() >= 0 else max(model.unk_id(), 0)
    return Tokenizer(
        "sentencepiece",
        model,
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
        vocab_size=model.get_piece_size(),
        source=str(path),
    )
