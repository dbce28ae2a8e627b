"""Passkey prompts mixed into text documents (config.data.passkey): the documents are the published format with
the answer appended, of the asked lengths, drawn deterministically and apart from the evaluation's prompts."""

import numpy as np
import pytest

from focused.data import load_tokenizer
from focused.data.passkey import PasskeyMixConfig, PasskeyMixture
from focused.evals.passkey import QUESTION, TASK, filler, passkey_prompt


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("focused")


def test_prompts_follow_the_published_format_with_their_answer(tok):
    texts = ["first text document", "second one"]
    mix = PasskeyMixture(texts, tok, PasskeyMixConfig(documents=50, min_tokens=64, max_tokens=512, seed=3))
    assert len(mix) == 52 and mix[0] == texts[0] and mix[1] == texts[1] and mix[-1] == mix[51]
    lengths = []
    for i in range(50):
        text, key = mix.prompt(i)
        assert mix[2 + i] == text and 1 <= key < 50000
        lines = text.split("\n")
        assert len(lines) == 5 and lines[0] == TASK
        assert lines[2] == f"The pass key is {key}. Remember it. {key} is the pass key."
        assert lines[4] == f"{QUESTION} {key}"
        assert lines[1] == filler(len(lines[1])) and lines[3] == filler(len(lines[3]))
        lengths.append(len(tok.encode(text)) + 1)
    assert min(lengths) >= 56 and max(lengths) <= 520 and np.std(lengths) > 80  # spread over the asked range
    again = PasskeyMixture(texts, tok, PasskeyMixConfig(documents=50, min_tokens=64, max_tokens=512, seed=3))
    assert [again[i] for i in range(52)] == [mix[i] for i in range(52)]
    other = PasskeyMixture(texts, tok, PasskeyMixConfig(documents=50, min_tokens=64, max_tokens=512, seed=4))
    assert [other.prompt(i)[1] for i in range(50)] != [mix.prompt(i)[1] for i in range(50)]
    with pytest.raises(IndexError):
        mix[52]


def test_training_keys_are_not_the_evaluation_draws(tok):
    """The eval draws (prefix, key) from RandomState(seed); the mixture from default_rng([seed, i]): the first
    prompts' keys differ from the eval's for the same seeds."""
    mix = PasskeyMixture([], tok, PasskeyMixConfig(documents=20, seed=1000))
    train_keys = [mix.prompt(i)[1] for i in range(20)]
    eval_keys = [passkey_prompt(1000, 1000 + i)[1] for i in range(20)]
    assert train_keys != eval_keys and len(set(train_keys) & set(eval_keys)) <= 1


def test_copy_drills_follow_the_prompts_and_repeat_their_words(tok):
    mix = PasskeyMixture(["text"], tok, PasskeyMixConfig(documents=3, drills=40, seed=2))
    assert len(mix) == 44 and mix[1] == mix.prompt(0)[0]
    counts = []
    for i in range(40):
        first, second = mix[4 + i].split("\n")
        words = first.split()
        assert first == second and all(f" {w}" in mix.words for w in words)
        assert len(tok.encode(" " + first)) == len(words)  # one token a word: each is copied by one lookup
        counts.append(len(words))
    assert min(counts) >= 8 and max(counts) <= 40 and len(set(counts)) > 10
    assert len(mix.words) > 1000 and all(len(tok.encode(w)) == 1 for w in mix.words[:50])
    assert PasskeyMixture([], tok, PasskeyMixConfig(drills=2, seed=2)).drill(1) == mix.drill(1)
    assert PasskeyMixture([], tok, PasskeyMixConfig(drills=2, seed=3)).drill(1) != mix.drill(1)
    with_numbers = PasskeyMixture([], tok, PasskeyMixConfig(drills=40, drill_numbers=1, seed=2))
    for i in range(40):
        first, second = with_numbers.drill(i).split("\n")
        numbers = [int(w) for w in first.split() if w.isdigit()]
        assert first == second and len(numbers) == 1 and 1 <= numbers[0] < 50000
        assert [w for w in first.split() if not w.isdigit()] == mix.drill(i).split("\n")[0].split()  # same words


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="documents must be >= 0"):
        PasskeyMixConfig(documents=-1)
    with pytest.raises(ValueError, match="drills must be >= 0"):
        PasskeyMixConfig(drills=-2)
    with pytest.raises(ValueError, match="drill_numbers must be >= 0"):
        PasskeyMixConfig(drill_numbers=-1)
    with pytest.raises(ValueError, match="48 <= min_tokens <= max_tokens"):
        PasskeyMixConfig(documents=1, min_tokens=600, max_tokens=512)
    with pytest.raises(ValueError, match="unknown"):
        PasskeyMixConfig.from_dict({"documnets": 3})


def test_mixing_leaves_a_source_without_prompts_alone_and_needs_random_access(tok):
    from focused.data.passkey import mix_passkeys

    texts = ["a document"]
    assert mix_passkeys(texts, tok, {}) is texts
    mixed = mix_passkeys(texts, tok, {"documents": 3})
    assert len(mixed) == 4 and mixed[0] == "a document"
    with pytest.raises(ValueError, match="random-access source: set streaming=False"):
        mix_passkeys(iter(texts), tok, {"documents": 3})
