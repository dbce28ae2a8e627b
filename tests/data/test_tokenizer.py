"""Tests for focused.data.tokenizer: the shipped BPE, HF tokenizer.json folders, sentencepiece models."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from focused.data import Tokenizer, load_tokenizer
from focused.data.tokenizer import SHIPPED_TOKENIZER_DIR

ASSETS = Path(SHIPPED_TOKENIZER_DIR).parent


@pytest.fixture(scope="module")
def moby_text() -> str:
    with gzip.open(ASSETS / "moby_dick.txt.gz", "rt", encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def shipped() -> Tokenizer:
    return load_tokenizer(None)


def random_slices(text: str, count: int, length: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(text) - length, size=count)
    return [text[s : s + int(rng.integers(1, length))] for s in starts]


def test_shipped_tokenizer_special_ids(shipped: Tokenizer) -> None:
    assert shipped.backend == "hf"
    assert (shipped.vocab_size, shipped.bos_id, shipped.eos_id, shipped.pad_id) == (4096, 1, 2, 0)
    assert shipped.decode([1, 2, 0]) == "<s></s><unk>"
    named = load_tokenizer("focused")
    assert named.encode("Call me Ishmael.") == shipped.encode("Call me Ishmael.")
    by_file = load_tokenizer(SHIPPED_TOKENIZER_DIR / "tokenizer.json")
    assert by_file.encode("Call me Ishmael.") == shipped.encode("Call me Ishmael.")
    assert "vocab_size=4096" in repr(shipped)


def test_round_trip_on_moby_dick(shipped: Tokenizer, moby_text: str) -> None:
    excerpt = moby_text[200_000:400_000]
    ids = shipped.encode(excerpt)
    assert 1 not in ids and 2 not in ids  # no special tokens added
    assert all(0 <= i < shipped.vocab_size for i in ids)
    assert len(ids) < len(excerpt) / 2.5  # the BPE actually compresses English
    assert shipped.decode(ids) == excerpt
    pieces = random_slices(moby_text, 20, 3000, seed=0)
    batch = shipped.encode_batch(pieces)
    assert batch == [shipped.encode(p) for p in pieces]
    assert [shipped.decode(b) for b in batch] == pieces


def test_round_trip_unicode_and_specials(shipped: Tokenizer) -> None:
    text = "Ahab — “the whale!” naïve 鯨 🐋\n\ttabs  and   spaces"
    assert shipped.decode(shipped.encode(text)) == text
    ids = [shipped.bos_id, *shipped.encode("Queequeg"), shipped.eos_id]
    assert shipped.decode(ids, skip_special_tokens=True) == "Queequeg"


def test_autotokenizer_matches(shipped: Tokenizer, moby_text: str) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(SHIPPED_TOKENIZER_DIR))
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (1, 2, 0, 0)
    assert len(hf) == shipped.vocab_size
    for piece in random_slices(moby_text, 10, 2000, seed=1):
        ids = shipped.encode(piece)
        assert hf(piece, add_special_tokens=False)["input_ids"] == ids
        assert hf(piece)["input_ids"] == [1, *ids]  # LLaMA-style: bos in front, no eos
        assert hf.decode(ids) == piece


def train_sentencepiece(folder: Path, text: str) -> Path:
    import sentencepiece

    folder.mkdir(parents=True, exist_ok=True)
    lines = [line for line in text.splitlines() if line.strip()]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=600,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        byte_fallback=True,  # LLaMA-style settings: exact round trips
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    return folder / "tokenizer.model"


def test_sentencepiece_model(tmp_path: Path, moby_text: str) -> None:
    model_file = train_sentencepiece(tmp_path / "sp", moby_text[50_000:110_000])
    for source in (model_file.parent, model_file):
        tok = load_tokenizer(source)
        assert tok.backend == "sentencepiece"
        assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (600, 1, 2, 0)  # LLaMA: pad = <unk>
    text = moby_text[300_000:302_000].lstrip() + "\n  naïve 鯨"
    ids = tok.encode(text)
    assert ids and tok.bos_id not in ids and tok.eos_id not in ids
    assert tok.decode(ids) == text
    pieces = random_slices(moby_text, 5, 500, seed=2)
    assert tok.encode_batch(pieces) == [tok.encode(p) for p in pieces]
    assert tok.decode([tok.bos_id, *tok.encode("whale"), tok.eos_id], skip_special_tokens=True) == "whale"


def test_json_preferred_over_model(tmp_path: Path, moby_text: str) -> None:
    folder = tmp_path / "both"
    train_sentencepiece(folder, moby_text[:40_000])
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).write_bytes((SHIPPED_TOKENIZER_DIR / name).read_bytes())
    assert load_tokenizer(folder).backend == "hf"


def word_level_tokenizer(folder: Path, vocab: dict[str, int], config: dict | None) -> Path:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    tok = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_hf_special_tokens_from_config(tmp_path: Path) -> None:
    vocab = {"[UNK]": 0, "[PAD]": 1, "[BOS]": 2, "[EOS]": 3, "whale": 4, "ship": 5}
    config = {"bos_token": {"content": "[BOS]"}, "eos_token": "[EOS]", "pad_token": "[PAD]"}
    tok = load_tokenizer(word_level_tokenizer(tmp_path / "cfg", vocab, config))
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (2, 3, 1, 6)
    assert tok.encode("ship whale ship") == [5, 4, 5]
    defaults = {"<unk>": 0, "<s>": 1, "</s>": 2, "sea": 3}
    tok = load_tokenizer(word_level_tokenizer(tmp_path / "defaults", defaults, None))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 0)


def test_error_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"neither tokenizer\.json"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="cannot tell the tokenizer type"):
        load_tokenizer(tmp_path / "vocab.txt")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(ValueError, match=r"not a valid HF tokenizer\.json"):
        load_tokenizer(tmp_path / "broken")
    (tmp_path / "bad.model").write_bytes(b"\x00not a model")
    with pytest.raises(ValueError, match="not a valid sentencepiece model"):
        load_tokenizer(tmp_path / "bad.model")
    no_specials = word_level_tokenizer(tmp_path / "nospecial", {"[UNK]": 0, "a": 1}, None)
    with pytest.raises(ValueError, match="no bos/eos token"):
        load_tokenizer(no_specials)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Tokenizer("hf", None, bos_id=1, eos_id=9, pad_id=0, vocab_size=5, source="x")
    with pytest.raises(ValueError, match="unknown tokenizer backend"):
        Tokenizer("bpe", None, bos_id=1, eos_id=2, pad_id=0, vocab_size=5, source="x")
