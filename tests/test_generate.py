"""Generation: the local cache equals full recomputation; LongLLaMA's prompt split and cache overflow into memory
equal a direct re-computation with the same window boundaries."""

import jax.numpy as jnp
import numpy as np
import pytest

from focused.generate import decode, generate, ingest, sample
from tests.memory.test_dense import build, tiny_config
from tests.reference import forward_long_reference, params_numpy


def test_greedy_with_cache_equals_full_recomputation():
    config = tiny_config(max_position_embeddings=32, last_context_length=32)
    model = build(config, seed=31)
    prompt = np.random.default_rng(32).integers(0, config.vocab_size, size=(2, 9))
    tokens = generate(model, prompt, max_new_tokens=12, progress=False)
    # one causal forward over prompt + generated tokens: the position before generated token i predicts it from the
    # tokens up to there, exactly what a step-by-step recomputation would see (the window of 32 holds all 21)
    logits = model(jnp.asarray(np.concatenate([prompt, tokens], axis=1))).logits
    np.testing.assert_array_equal(tokens, np.asarray(logits[:, prompt.shape[1] - 1 : -1].argmax(-1)))


def test_long_prompt_and_cache_overflow_follow_longllama_windows():
    """Prompt 45 tokens, W = 16, last_context_length = 8: prefix windows [0,16), [16,32), [32,37) go to memory, the
    last 8 tokens start the local cache at 37; it overflows into memory at 53 and again at 69."""
    config = tiny_config(max_position_embeddings=16, last_context_length=8, mem_layers=(0, 2))
    model = build(config, seed=33)
    rng = np.random.default_rng(34)
    ids = rng.integers(0, config.vocab_size, size=(1, 80))
    n = 45
    state = ingest(model, ids[:, :n], capacity=96, progress=False)
    logits = [np.asarray(state.logits[0])]
    for t in range(n, 80 - 1):
        state = decode(model, state, jnp.asarray(ids[:, t]))
        logits.append(np.asarray(state.logits[0]))
    ref = forward_long_reference(config, params_numpy(model), ids[0], starts=[0, 16, 32, 37, 53, 69])
    np.testing.assert_allclose(np.stack(logits), ref[n - 1 : 79], atol=3e-5, rtol=0)
    assert state.memory.stored == 37 + 16 + 16


def test_batched_prompts_with_left_padding_match_unpadded_rows():
    config = tiny_config(max_position_embeddings=16, last_context_length=8)
    model = build(config, seed=35)
    rng = np.random.default_rng(36)
    long = rng.integers(3, config.vocab_size, size=30)
    short = rng.integers(3, config.vocab_size, size=21)
    batch = np.zeros((2, 30), np.int32)
    mask = np.zeros((2, 30), np.int32)
    batch[0], mask[0] = long, 1
    batch[1, 9:], mask[1, 9:] = short, 1
    together = generate(model, batch, 6, attention_mask=mask, progress=False)
    alone_long = generate(model, long[None], 6, progress=False)
    np.testing.assert_array_equal(together[0], alone_long[0])
    # the short row is left-padded, so its windows are cut differently from an unpadded run; its padding is
    # masked in memory and cache alike, so it still generates from its own tokens only
    shifted = np.concatenate([np.full(9, 7), short])[None]
    other = generate(model, shifted, 6, attention_mask=mask[1:], progress=False)
    np.testing.assert_array_equal(together[1], other[0])


def test_sampling_respects_top_p_and_temperature():
    import jax

    logits = jnp.log(jnp.asarray([[0.6, 0.3, 0.05, 0.05]]))
    keys = jax.random.split(jax.random.key(0), 200)
    draws = np.array([int(sample(logits, k, 1.0, 0.5)[0]) for k in keys[:50]])
    assert set(draws) == {0}  # top-p 0.5 keeps only the most likely token
    draws = np.array([int(sample(logits, k, 1.0, 0.92)[0]) for k in keys])
    assert set(draws) <= {0, 1, 2} and 1 in draws
    assert int(sample(logits, keys[0])[0]) == 0  # temperature 0 = greedy


def test_prompt_beyond_capacity_is_an_error():
    config = tiny_config(max_position_embeddings=16, last_context_length=8)
    model = build(config, seed=37)
    with pytest.raises(ValueError, match="memory capacity 16 tokens exceeded"):
        ingest(model, np.ones((1, 60), np.int32), capacity=16, progress=False)
    with pytest.raises(ValueError, match="prompt is empty"):
        ingest(model, np.ones((1, 0), np.int32), progress=False)


def test_generation_with_topk_and_faiss_memory_equals_dense():
    from focused.memory.backends import MemoryConfig

    config = tiny_config(max_position_embeddings=16, last_context_length=8, mem_layers=(1,))
    model = build(config, seed=38)
    ids = np.random.default_rng(39).integers(0, config.vocab_size, size=(2, 70))
    runs = {}
    for name, memory_cfg in {
        "dense": MemoryConfig(),
        "topk": MemoryConfig(backend="topk", top_k=96),
        "faiss": MemoryConfig(backend="faiss", top_k=96, index={"index_type": "flat"}),
    }.items():
        state = ingest(model, ids[:, :40], capacity=96, memory_cfg=memory_cfg, progress=False)
        logits = [np.asarray(state.logits)]
        for t in range(40, 69):  # overflows the local cache into memory twice
            state = decode(model, state, jnp.asarray(ids[:, t]))
            logits.append(np.asarray(state.logits))
        runs[name] = np.stack(logits)
    np.testing.assert_allclose(runs["topk"], runs["dense"], atol=2e-5)
    np.testing.assert_allclose(runs["faiss"], runs["dense"], atol=2e-5)


def stepwise(model, ids, max_new, *, temperature=0.0, top_p=1.0, seed=0, eos=None, memory_cfg=None):
    """The token-by-token loop on the host (what `generate` did before its device loop): sample, then `decode`."""
    import jax

    window = model.config.max_position_embeddings
    capacity = max(-(-(ids.shape[1] + max_new + window) // window) * window, window)
    state = ingest(model, ids, capacity=capacity, memory_cfg=memory_cfg, progress=False)
    key = jax.random.key(seed)
    out, done = [], np.zeros(ids.shape[0], bool)
    for _ in range(max_new):
        key, sub = jax.random.split(key)
        token = np.asarray(sample(state.logits, sub, temperature, top_p))
        if eos is not None:
            token = np.where(done, eos, token)
            done |= token == eos
        out.append(token)
        if done.all() or len(out) == max_new:
            break
        state = decode(model, state, jnp.asarray(token))
    tokens = np.stack(out, axis=1)
    return np.pad(tokens, ((0, 0), (0, max_new - tokens.shape[1])), constant_values=eos or 0)


@pytest.mark.parametrize("temperature, top_p", [(0.0, 1.0), (0.9, 0.8)])
def test_device_decode_loop_equals_stepwise_decoding_through_cache_overflow(temperature, top_p):
    """W = 16, L = 8, prompt 30: the cache starts at 8 tokens and overflows into memory twice in 40 tokens."""
    config = tiny_config(max_position_embeddings=16, last_context_length=8, mem_layers=(0, 2))
    model = build(config, seed=41)
    ids = np.random.default_rng(42).integers(0, config.vocab_size, size=(2, 30))
    kw = dict(temperature=temperature, top_p=top_p, seed=3)
    want = stepwise(model, ids, 40, **kw)
    got = generate(model, ids, 40, progress=False, **kw)
    np.testing.assert_array_equal(got, want)
    assert len(set(got[0].tolist())) > 3  # not a degenerate repetition that would hide a misplaced token


def test_device_decode_loop_stops_at_eos_like_stepwise_decoding():
    config = tiny_config(max_position_embeddings=16, last_context_length=8)
    model = build(config, seed=43)
    ids = np.random.default_rng(44).integers(0, config.vocab_size, size=(2, 20))
    free = generate(model, ids, 24, progress=False)
    eos = int(free[0, 11])  # row 0 stops here (or earlier), row 1 whenever it samples this token
    want = stepwise(model, ids, 24, eos=eos)
    got = generate(model, ids, 24, eos_token_id=eos, progress=False)
    np.testing.assert_array_equal(got, want)
    assert (got[0, 12:] == eos).all()


def test_device_decode_loop_with_faiss_memory_equals_stepwise():
    from focused.memory.backends import MemoryConfig

    config = tiny_config(max_position_embeddings=16, last_context_length=8, mem_layers=(1,))
    model = build(config, seed=45)
    ids = np.random.default_rng(46).integers(0, config.vocab_size, size=(1, 40))
    memory_cfg = MemoryConfig(backend="faiss", top_k=4, index={"index_type": "flat"})
    want = stepwise(model, ids, 30, memory_cfg=memory_cfg)
    got = generate(model, ids, 30, memory_cfg=memory_cfg, progress=False)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mem_layers", [(1,), (0, 2)])
def test_memory_kv_equals_the_full_forward(mem_layers):
    """What ingest runs for a prefix window (layers up to the last memory layer's keys/values, that layer's memory
    read skipped) equals the keys/values of the full forward, with a padded window over a non-empty memory."""
    from focused.memory.dense import append_window, init_memory, memory_blocks

    config = tiny_config(max_position_embeddings=16, mem_layers=mem_layers, num_hidden_layers=4)
    model = build(config, seed=41)
    rng = np.random.default_rng(42)
    state = init_memory(config, 2, 32)
    for _ in range(2):
        ids = jnp.asarray(rng.integers(0, config.vocab_size, size=(2, 16)))
        state = append_window(state, model.model(ids, None, None, memory_blocks(state))[1], jnp.ones((2, 16), bool))
    ids = jnp.asarray(rng.integers(0, config.vocab_size, size=(2, 16)))
    valid = jnp.asarray(np.arange(16)[None, :] >= np.array([[0], [5]]))
    full = model.model(ids, valid, None, memory_blocks(state))[1]
    short = model.model.memory_kv(ids, valid, memory_blocks(state))
    assert len(short) == len(full) == len(mem_layers)
    for a, b in zip(short, full, strict=True):
        np.testing.assert_allclose(np.asarray(a.keys), np.asarray(b.keys), atol=1e-6, rtol=0)
        np.testing.assert_allclose(np.asarray(a.values), np.asarray(b.values), atol=1e-6, rtol=0)
