"""Passkey eval: the published prompt format token for token, filler length in tokens, exact-match scoring, padding
layout that leaves generation unchanged, and clear errors (capacity, lengths, backend)."""

import jax
import numpy as np
import pytest

import focused.evals.passkey as passkey
from focused.data import load_tokenizer
from focused.evals.passkey import (
    PasskeyConfig,
    answer_tokens,
    encode_prompt,
    filler_chars,
    layout,
    memory_needed,
    passkey_prompt,
    run_passkey,
    score,
)
from focused.generate import generate
from focused.memory.backends import MemoryConfig
from focused.model.config import LlamaConfig
from focused.model.llama import LlamaForCausalLM
from focused.training.checkpoint import abstract_model, model_from_params, params_dict

CAPACITY = 512  # one memory shape for every prompt in these tests: one compilation


def tiny_config(**changes) -> LlamaConfig:
    """The eval tests' model: the shipped tokenizer's vocabulary, a 64-token window, one memory layer."""
    base = dict(
        vocab_size=4096,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        last_context_length=32,
        mem_layers=(0,),
        mem_dtype="float32",
    )
    base.update(changes)
    return LlamaConfig(**base)


def tiny_model(seed: int = 0, **changes) -> LlamaForCausalLM:
    """Random weights (N(0, 0.15) matrices, 1 + N(0, 0.1) norms) set on an abstract model: no init compiles."""
    config = tiny_config(**changes)
    rng = np.random.default_rng(seed)

    def fill(path, leaf) -> jax.Array:
        noise = rng.normal(size=leaf.shape)
        value = np.asarray(1 + 0.1 * noise if path[-1].key == "weight" else 0.15 * noise, leaf.dtype)
        return jax.device_put(value, jax.devices()[0])  # committed, like restored checkpoints: shared jit caches

    return model_from_params(config, jax.tree_util.tree_map_with_path(fill, params_dict(abstract_model(config))))


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("focused")


def published_prompt(n_garbage: int, seed: int) -> tuple[str, int]:
    """The LongLLaMA / landmark-attention generator, written out independently of focused.evals.passkey."""
    rnd = np.random.RandomState(seed)
    n_prefix = rnd.randint(0, n_garbage)
    n_suffix = n_garbage - n_prefix
    task = (
        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there."
    )
    garbage = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    garbage_inf = " ".join([garbage] * 5000)
    key = rnd.randint(1, 50000)
    info = f"The pass key is {key}. Remember it. {key} is the pass key."
    lines = [task, garbage_inf[:n_prefix], info, garbage_inf[:n_suffix], "What is the pass key? The pass key is"]
    return "\n".join(lines), int(key)


@pytest.mark.parametrize("length, seed", [(200, 0), (1000, 7), (4000, 123)])
def test_prompt_matches_the_published_format_token_for_token(tok, length, seed):
    n_chars = filler_chars(tok, length)
    text, key, prefix_chars = passkey_prompt(n_chars, seed)
    expected, expected_key = published_prompt(n_chars, seed)
    assert key == expected_key and 1 <= key < 50000
    assert text == expected
    ids = encode_prompt(tok, text)
    assert ids.tolist() == [tok.bos_id, *tok.encode(expected)]
    lines = text.split("\n")
    assert len(lines) == 5 and len(lines[1]) == prefix_chars and len(lines[1]) + len(lines[3]) == n_chars
    assert lines[2] == f"The pass key is {key}. Remember it. {key} is the pass key."


@pytest.mark.parametrize("target", [256, 1000, 8192, 65536])
def test_filler_reaches_the_requested_token_length(tok, target):
    n_chars = filler_chars(tok, target)
    for seed in range(3):
        assert abs(len(encode_prompt(tok, passkey_prompt(n_chars, seed)[0])) - target) <= 4


def test_answer_tokens_are_what_follows_the_question(tok):
    answer = answer_tokens(tok, 40213)
    assert tok.decode(answer) == " 40213"
    question = tok.encode("What is the pass key? The pass key is")
    assert question + answer == tok.encode("What is the pass key? The pass key is 40213")


def test_scorer_counts_exact_matches_only():
    answers = [[5, 6, 7], [5, 6, 7], [5, 6, 7], [9], [9, 8]]
    outputs = np.array([[5, 6, 7], [5, 6, 8], [7, 6, 5], [9, 1, 1], [9, 0, 8]])
    assert score(outputs, answers) == [True, False, False, True, False]
    assert score(np.array([[1]]), [[]]) == [False]
    with pytest.raises(ValueError, match="2 outputs for 1 answers"):
        score(np.zeros((2, 3), int), [[1]])


def test_memory_needed_follows_the_generation_rules():
    # 100 tokens, W 64, L 32: 68 prefix tokens go to memory, 32 to the local cache
    assert memory_needed(100, 64, 32, 5) == 68
    # the cache reaches 64 tokens after 32 fed-back tokens; the 33rd moves it to memory
    assert memory_needed(100, 64, 32, 33) == 68
    assert memory_needed(100, 64, 32, 34) == 68 + 64
    assert memory_needed(20, 64, 32, 3) == 0


def test_layout_keeps_each_prompt_on_its_own_window_boundaries():
    window, last = 8, 4
    prompts = [np.arange(1, 23), np.arange(100, 111), np.arange(200, 203)]  # prefixes 18, 7, 0
    ids, mask = layout(prompts, window, last, pad_id=0)
    assert ids.shape == (3, 3 * window + last)
    assert ids[0, :18].tolist() == list(range(1, 19)) and mask[0, 18:24].sum() == 0
    assert mask[1, :16].sum() == 0 and ids[1, 16:23].tolist() == list(range(100, 107))
    assert ids[0, -4:].tolist() == [19, 20, 21, 22] and ids[1, -4:].tolist() == [107, 108, 109, 110]
    assert mask[2].sum() == 3 and ids[2, -3:].tolist() == [200, 201, 202]
    short_ids, short_mask = layout([np.arange(1, 4)], window, last, pad_id=0)  # shorter than the cache: as is
    assert short_ids.tolist() == [[1, 2, 3]] and short_mask.all()


def test_layout_gives_the_same_generation_as_the_prompt_alone():
    model = tiny_model(seed=1)
    prompt = np.random.default_rng(4).integers(3, 4096, size=150).astype(np.int32)  # windows 64 + 54, cache 32
    ids, mask = layout([prompt], 64, 32, pad_id=0)
    assert ids.shape == (1, 2 * 64 + 32) and mask.sum() == 150
    padded = generate(model, ids, 6, attention_mask=mask, capacity=CAPACITY, progress=False)
    alone = generate(model, prompt[None], 6, capacity=CAPACITY, progress=False)
    np.testing.assert_array_equal(padded, alone)


def test_run_passkey_on_a_tiny_model(tok):
    model = tiny_model(seed=1)
    cfg = PasskeyConfig(lengths=(120, 150), trials=2, batch_size=1, seed=5)  # both 2 windows + cache
    points = run_passkey(model, tok, cfg, MemoryConfig(capacity=CAPACITY))
    assert [p["length"] for p in points] == [120, 150]
    for p in points:
        assert [t["seed"] for t in p["trials"]] == [5, 6]
        for t in p["trials"]:
            assert len(t["output"]) == len(t["answer"]) and abs(t["prompt_tokens"] - p["length"]) <= 4
            assert t["correct"] == (t["output"] == t["answer"])
        assert p["accuracy"] == np.mean([t["correct"] for t in p["trials"]])
    assert model.config.last_context_length == 32  # the caller's model is left as it was


def test_accuracy_is_the_fraction_of_exact_answers(tok, monkeypatch):
    """With generation replaced by an oracle, every trial is right; one wrong digit makes it wrong."""
    model = tiny_model(seed=1)
    cfg = PasskeyConfig(lengths=(200,), trials=4, batch_size=2)
    prompts = [passkey_prompt(filler_chars(tok, 200), seed)[1] for seed in range(4)]
    answers = iter([answer_tokens(tok, key) for key in prompts])

    def oracle(model, ids, max_new_tokens, **kwargs):
        rows = [next(answers) for _ in range(len(ids))]
        return np.array([r + [0] * (max_new_tokens - len(r)) for r in rows])

    monkeypatch.setattr(passkey, "generate", oracle)
    assert run_passkey(model, tok, cfg)[0]["accuracy"] == 1.0

    def off_by_one(model, ids, max_new_tokens, **kwargs):
        out = oracle(model, ids, max_new_tokens)
        out[0, 0] += 1
        return out

    answers = iter([answer_tokens(tok, key) for key in prompts])
    monkeypatch.setattr(passkey, "generate", off_by_one)
    assert run_passkey(model, tok, cfg)[0]["accuracy"] == 0.5


def test_prompt_beyond_the_memory_capacity_is_a_clear_error(tok):
    model = tiny_model()
    cfg = PasskeyConfig(lengths=(128, 1024), trials=1)
    with pytest.raises(ValueError, match=r"\(length 1024\) needs 1024 memory tokens, more than config.memory.capa"):
        run_passkey(model, tok, cfg, MemoryConfig(capacity=256))


def test_bad_settings_are_clear_errors(tok):
    model = tiny_model()
    with pytest.raises(ValueError, match="passkey length 40 tokens is too short"):
        run_passkey(model, tok, PasskeyConfig(lengths=(40,), trials=1))
    with pytest.raises(ValueError, match="last_context_length=100 exceeds the checkpoint's window 64"):
        run_passkey(model, tok, PasskeyConfig(lengths=(128,), last_context_length=100))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['length'\] in config.passkey"):
        PasskeyConfig.from_dict({"length": 5})
    with pytest.raises(ValueError, match="config.passkey.trials must be >= 1"):
        PasskeyConfig(trials=0)


def test_a_model_without_memory_layers_gets_its_whole_window_as_local_context(tok, monkeypatch):
    """Everything before the local cache would be lost: the prompt is cut to the window minus the answer."""
    model = tiny_model(mem_layers=(), max_position_embeddings=128, last_context_length=16)
    seen = []

    def record(model, ids, max_new_tokens, attention_mask=None, **kwargs):
        seen.append((ids.shape, int(attention_mask.sum()), model.config.last_context_length, max_new_tokens))
        return np.zeros((len(ids), max_new_tokens), np.int32)

    monkeypatch.setattr(passkey, "generate", record)
    run_passkey(model, tok, PasskeyConfig(lengths=(400,), trials=1))
    ((shape, real, last, new),) = seen
    assert last == 128 - new + 1 and shape == (1, last) and real == last
    assert model.config.last_context_length == 16


def test_faiss_and_topk_memories_give_the_dense_answers(tok):
    """k covering the whole memory: every backend generates exactly the dense outputs."""
    model = tiny_model(seed=3)
    cfg = PasskeyConfig(lengths=(256,), trials=2)
    dense = run_passkey(model, tok, cfg, MemoryConfig())
    for memory in (MemoryConfig(backend="topk", top_k=512), MemoryConfig(backend="faiss", top_k=512)):
        other = run_passkey(model, tok, cfg, memory)
        assert [t["output"] for t in other[0]["trials"]] == [t["output"] for t in dense[0]["trials"]]
