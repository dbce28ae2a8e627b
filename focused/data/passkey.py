"""Text documents mixed with short passkey prompts, for tuning a model on the passkey task (`config.data.passkey`).

A :class:`PasskeyMixture` is a random-access document sequence: the `N` text documents of a source, then
`documents` generated ones, each a passkey prompt in the published format (`focused.evals.passkey`) followed by
its answer, `"<prompt> {key}"`. The packer shuffles them together, so batches hold both. Prompt `i` is drawn from
`numpy.random.default_rng([seed, i])`: a length in tokens uniform in [min_tokens, max_tokens] (the filler budget
follows from the shipped tokenizer's characters per filler token), a key position uniform in the filler and a key
in [1, 50000), as the published generator draws them. The evaluation draws its prompts from numpy's legacy
`RandomState(seed)` stream, so a tuned model is never evaluated on the prompts it was trained on (keys may repeat:
there are only 50K of them; what is learned is to copy a key from context). Then come `drills` copy drills (random
words written twice: `PasskeyMixConfig`), drawn from `default_rng([seed, 1, i])`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from focused.config import checked_fields
from focused.data.packing import TextEncoder
from focused.evals.passkey import FILLER, build_prompt, filler


@dataclasses.dataclass(frozen=True)
class PasskeyMixConfig:
    """`config.data.passkey`: documents = passkey prompts added to the text documents (0 = none);
    min_tokens / max_tokens: the range of their lengths in tokens; seed: draws the prompts;
    drills = copy drills added as well (0 = none): 8-40 random words of the tokenizer's vocabulary (one token
    each), written twice on two lines, so that the second line is copied token by token (a small model that has
    never learnt to copy from its context learns it there: see configs/passkey_fot.py). Words, not numbers: a
    digit recurs many times in a list of numbers, so the token before it does not say which one comes next.
    drill_numbers = random numbers in [1, 50000) put among a drill's words (at random places): a pass key to copy
    among words, so that digit tokens, rare in the demo text, are learnt apart."""

    documents: int = 0
    min_tokens: int = 64
    max_tokens: int = 512
    seed: int = 0
    drills: int = 0
    drill_numbers: int = 0

    def __post_init__(self) -> None:
        for name in ("documents", "drills", "drill_numbers"):
            if getattr(self, name) < 0:
                raise ValueError(f"config.data.passkey.{name} must be >= 0, got {getattr(self, name)}")
        if not 48 <= self.min_tokens <= self.max_tokens:
            raise ValueError(
                f"config.data.passkey needs 48 <= min_tokens <= max_tokens (a prompt without filler already has "
                f"about 45 tokens), got {self.min_tokens} and {self.max_tokens}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PasskeyMixConfig:
        return cls(**checked_fields(cls, values, "config.data.passkey"))


class PasskeyMixture(Sequence[str]):
    """`texts` (any random-access sequence of documents) followed by `config.documents` passkey documents."""

    def __init__(self, texts: Sequence[str], tokenizer: TextEncoder, config: PasskeyMixConfig) -> None:
        self.texts, self.config = texts, config
        sample = filler(64 * (len(FILLER) + 1))
        self.chars_per_token = len(sample) / len(tokenizer.encode(sample))
        self.bare_tokens = len(tokenizer.encode(build_prompt(0, 0, 12345) + " 12345")) + 1  # + <bos>
        self.words = drill_words(tokenizer) if config.drills else []

    def __len__(self) -> int:
        return len(self.texts) + self.config.documents + self.config.drills

    def __getitem__(self, index: int) -> str:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"document {index} of {len(self)}")
        index %= len(self)
        if index < len(self.texts):
            return self.texts[index]
        index -= len(self.texts)
        if index < self.config.documents:
            return self.prompt(index)[0]
        return self.drill(index - self.config.documents)

    def drill(self, i: int) -> str:
        """Copy drill `i`: the same random words on two lines (drawn from `default_rng([seed, 1, i])`)."""
        rng = np.random.default_rng([self.config.seed, 1, i])
        words = list(rng.choice(self.words, size=int(rng.integers(8, 41))))
        for _ in range(self.config.drill_numbers):
            words.insert(int(rng.integers(0, len(words) + 1)), f" {int(rng.integers(1, 50000))}")
        line = "".join(words).strip()
        return f"{line}\n{line}"

    def prompt(self, i: int) -> tuple[str, int]:
        """(document text = prompt and answer, key) of generated document `i`."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, i])
        tokens = int(rng.integers(cfg.min_tokens, cfg.max_tokens + 1))
        n_chars = max(int((tokens - self.bare_tokens) * self.chars_per_token), 1)
        prefix = int(rng.integers(0, n_chars + 1))
        key = int(rng.integers(1, 50000))
        return f"{build_prompt(n_chars, prefix, key)} {key}", key


def drill_words(tokenizer: Any) -> list[str]:
    """The tokenizer's whole-word tokens (" whale": a space and 3+ letters, one token when encoded alone)."""
    if not hasattr(tokenizer, "decode") or not hasattr(tokenizer, "vocab_size"):
        raise ValueError("config.data.passkey.drills needs a tokenizer with decode and vocab_size (focused.data)")
    words = []
    for i in range(tokenizer.vocab_size):
        piece = tokenizer.decode([i])
        if piece.startswith(" ") and len(piece) > 3 and piece[1:].isalpha() and tokenizer.encode(piece) == [i]:
            words.append(piece)
    if len(words) < 100:
        raise ValueError(f"config.data.passkey.drills: the tokenizer has only {len(words)} whole-word tokens")
    return words


def mix_passkeys(texts: Sequence[str] | Any, tokenizer: TextEncoder, section: Mapping[str, Any]) -> Any:
    """`texts` with the passkey prompts of `config.data.passkey` (`section`) added, or unchanged when it asks for
    none; prompts need a random-access source."""
    config = PasskeyMixConfig.from_dict(section)
    if not config.documents and not config.drills:
        return texts
    if not isinstance(texts, Sequence):
        raise ValueError("config.data.passkey mixes prompts into a random-access source: set streaming=False")
    return PasskeyMixture(texts, tokenizer, config)
