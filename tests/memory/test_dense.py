"""Window-by-window processing with dense memory against a direct numpy re-computation of DESIGN §3."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from focused.memory.core import MemoryBlock
from focused.memory.dense import forward_long, init_memory
from focused.model.config import LlamaConfig
from focused.model.llama import LlamaForCausalLM
from tests.reference import forward_long_reference, params_numpy, randomize


def tiny_config(**changes) -> LlamaConfig:
    base = dict(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=72,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
        last_context_length=8,
        mem_layers=(1,),
        mem_dtype="float32",
    )
    base.update(changes)
    return LlamaConfig(**base)


def build(config: LlamaConfig, seed: int = 0) -> LlamaForCausalLM:
    model = LlamaForCausalLM(config, rngs=nnx.Rngs(seed))
    randomize(model, seed, scale=0.15)  # large enough that memory visibly changes the logits
    return model


@pytest.mark.parametrize("positionals, key_norm", [(True, False), (False, False), (True, True)])
def test_windows_with_memory_match_direct_recomputation(positionals, key_norm):
    config = tiny_config(mem_positionals=positionals, mem_layers=(0, 2), mem_key_norm=key_norm)
    model = build(config, seed=1)
    rng = np.random.default_rng(2)
    ids = rng.integers(0, config.vocab_size, size=(2, 4 * 16 + 5))  # four full windows and a short one
    logits, memory = forward_long(model, ids)
    p = params_numpy(model)
    for row in range(2):
        ref = forward_long_reference(config, p, ids[row])
        np.testing.assert_allclose(np.asarray(logits[row]), ref, atol=2e-5, rtol=0)
    assert int(memory.length) == ids.shape[1]


def test_memory_changes_the_output():
    """Guards the test above: memory layers must actually use the memory."""
    config = tiny_config()
    model = build(config, seed=3)
    ids = np.random.default_rng(4).integers(0, config.vocab_size, size=(1, 32))
    with_memory, _ = forward_long(model, ids)
    second_alone, _ = forward_long(model, ids[:, 16:])
    assert np.abs(np.asarray(with_memory[:, 16:] - second_alone)).max() > 1e-3


def test_padding_is_remembered_as_masked():
    config = tiny_config()
    model = build(config, seed=5)
    rng = np.random.default_rng(6)
    ids = rng.integers(0, config.vocab_size, size=(2, 40))
    valid = np.ones((2, 40), bool)
    valid[0, :7] = False  # left padding in the first window of row 0
    valid[1, 20:23] = False  # a hole in the second window of row 1
    logits, _ = forward_long(model, ids, valid.astype(np.int32))
    p = params_numpy(model)
    for row in range(2):
        ref = forward_long_reference(config, p, ids[row], valid[row])
        np.testing.assert_allclose(np.asarray(logits[row])[valid[row]], ref[valid[row]], atol=2e-5, rtol=0)


def test_empty_memory_layer_equals_plain_attention():
    with_mem = tiny_config(mem_layers=(0, 1, 2))
    model = build(with_mem, seed=7)
    plain = LlamaForCausalLM(with_mem.replace(mem_layers=()), rngs=nnx.Rngs(0))
    nnx.update(plain, nnx.state(model, nnx.Param))
    ids = jnp.asarray(np.random.default_rng(8).integers(0, 97, size=(2, 16)))
    empty = init_memory(with_mem, batch=2, capacity=32)
    blocks = tuple(MemoryBlock(empty.keys[i], empty.values[i], empty.mask, heads_major=True) for i in range(3))
    got, want = model(ids, memory=blocks).logits, plain(ids).logits
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


def test_mem_positionals_false_removes_rope_from_memory_layers():
    """With NoPE memory layers, a single window equals the reference without RoPE there, and differs from RoPE."""
    nope = tiny_config(mem_positionals=False, mem_layers=(0, 1, 2))
    model = build(nope, seed=9)
    ids = np.random.default_rng(10).integers(0, 97, size=(1, 16))
    logits = np.asarray(model(jnp.asarray(ids)).logits[0])
    p = params_numpy(model)
    np.testing.assert_allclose(logits, forward_long_reference(nope, p, ids[0]), atol=2e-5, rtol=0)
    with_rope = forward_long_reference(nope.replace(mem_positionals=True), p, ids[0])
    assert np.abs(logits - with_rope).max() > 1e-3


def test_drop_oldest_keeps_the_last_windows():
    config = tiny_config()
    model = build(config, seed=11)
    ids = np.random.default_rng(12).integers(0, 97, size=(1, 5 * 16))
    logits, memory = forward_long(model, ids, capacity=2 * 16, policy="drop_oldest")
    ref = forward_long_reference(config, params_numpy(model), ids[0], memory_windows=2)
    np.testing.assert_allclose(np.asarray(logits[0]), ref, atol=2e-5, rtol=0)
    assert int(memory.length) == 80 and bool(memory.mask.all())


def test_capacity_error_policy():
    config = tiny_config()
    model = build(config, seed=13)
    ids = np.zeros((1, 48), np.int32) + 5
    with pytest.raises(ValueError, match="memory capacity 32 tokens exceeded"):
        forward_long(model, ids, capacity=32, policy="error")
    with pytest.raises(ValueError, match="unknown memory capacity policy"):
        forward_long(model, ids, capacity=64, policy="fifo")


def test_longllama_split_matches_a_hand_computed_split():
    """n = 45, W = 16, L = 8: the official forward reads [0,16) [16,32) [32,37) into memory, then [37,45)."""
    from focused.memory.dense import window_starts

    assert window_starts(45, 16, 8, "longllama") == [0, 16, 32, 37]
    assert window_starts(40, 16, 8, "longllama") == [0, 16, 32]  # n - L a multiple of W: same as "windows"
    assert window_starts(5, 16, 8, "longllama") == [0]
    assert window_starts(45, 16, 8) == [0, 16, 32]
    config = tiny_config(max_position_embeddings=16, last_context_length=8, mem_layers=(0, 2))
    model = build(config, seed=14)
    ids = np.random.default_rng(15).integers(0, config.vocab_size, size=(2, 45))
    logits, memory = forward_long(model, ids, split="longllama")
    p = params_numpy(model)
    for row in range(2):
        ref = forward_long_reference(config, p, ids[row], starts=[0, 16, 32, 37])
        np.testing.assert_allclose(np.asarray(logits[row]), ref, atol=2e-5, rtol=0)
    assert int(memory.length) == 45
    default, _ = forward_long(model, ids)
    assert np.abs(np.asarray(default[:, 37:] - logits[:, 37:])).max() > 1e-3  # the split matters at the tail


def test_logits_last_positions_and_none_equal_the_full_logits():
    config = tiny_config()
    model = build(config, seed=16)
    ids = np.random.default_rng(17).integers(0, config.vocab_size, size=(2, 45))
    full, memory = forward_long(model, ids)
    last, _ = forward_long(model, ids, logits="last")
    assert last.shape == (2, config.vocab_size)
    np.testing.assert_allclose(np.asarray(last), np.asarray(full[:, -1]), atol=1e-5, rtol=0)
    wanted = [44, 3, 17, 17, 0, 31, 32]
    picked, _ = forward_long(model, ids, logits=wanted)
    assert picked.shape == (2, len(wanted), config.vocab_size)
    np.testing.assert_allclose(np.asarray(picked), np.asarray(full[:, wanted]), atol=1e-5, rtol=0)
    nothing, same_memory = forward_long(model, ids, logits=None)
    assert nothing is None
    for a, b in zip(memory, same_memory, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="logit positions must lie in"):
        forward_long(model, ids, logits=[45])
    with pytest.raises(ValueError, match="logits must be"):
        forward_long(model, ids, logits="first")


@pytest.mark.parametrize("top_k", [None, 5])
def test_a_heads_major_memory_block_gives_the_same_attention(top_k):
    """`heads_major` (the layout decoding reads memory in) changes the layout, not the numbers: dense and top-k."""
    from focused.memory.core import heads_major, memory_attention

    rng = np.random.default_rng(41)
    b, t, heads, kvh, d, m, s = 2, 3, 4, 2, 8, 11, 5
    q = jnp.asarray(rng.normal(size=(b, t, heads, d)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(b, s, kvh, d)), jnp.float32) for _ in range(2))
    mk, mv = (jnp.asarray(rng.normal(size=(b, m, kvh, d)), jnp.float32) for _ in range(2))
    block = MemoryBlock(mk, mv, jnp.asarray(rng.random((b, m)) > 0.3), top_k)
    local = jnp.asarray(rng.random((b, t, s)) > 0.2)
    want = memory_attention(q, k, v, local, block)
    turned = heads_major(block)
    assert turned.keys.shape == (b, kvh, m, d) and turned.values.shape == (b, kvh, d, m) and turned.kv_heads == kvh
    got = jax.jit(lambda block: memory_attention(q, k, v, local, block, impl="flash"))(turned)  # flash: falls back
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=0)
    assert float(jnp.abs(want - memory_attention(q, k, v, local, None)).max()) > 1e-2  # memory matters here


def test_memory_view_grows_in_powers_of_two_and_jumps_to_the_whole_buffer_at_one_flash_chunk():
    from focused.memory.dense import memory_view, read_chunk

    assert [memory_view(w, 256, 16) for w in (0, 16, 17, 40, 129, 256, 300)] == [16, 16, 32, 64, 256, 256, 256]
    assert [memory_view(w, 256, 16, whole_from=64) for w in (0, 17, 33, 65)] == [16, 32, 256, 256]
    config = tiny_config(attention_chunk=8)
    assert read_chunk(config, batch=2, queries=16) == max(8, (1 << 21) // (2 * 4 * 16))
    assert read_chunk(config, batch=2, queries=16, top_k=4) is None  # exact top-k reads every slot of the view
    assert read_chunk(config.replace(memory_read_impl="reference"), batch=2, queries=16) is None


def test_forward_long_with_flash_compiles_one_window_program_past_the_first_chunk(monkeypatch):
    """The flash read skips empty chunks (`MemoryBlock.filled`), so once the filled slots reach one chunk every window
    reads the whole buffer: one program for small views, one for the whole, instead of one per power of two; the
    logits equal the reference kernel's."""
    import focused.memory.core as core
    import focused.memory.dense as dense

    for module in (core, dense):  # chunks of attention_chunk keys, not grown for few queries
        monkeypatch.setattr(module, "flash_chunk", lambda kv_chunk, batch, heads, queries: kv_chunk)
    config = tiny_config(attention_chunk=32)
    flash = build(config, seed=41)
    ref = nnx.merge(nnx.graphdef(build(config.replace(memory_read_impl="reference"))), nnx.state(flash))
    ids = np.random.default_rng(42).integers(0, config.vocab_size, size=(1, 16 * 12))
    views = []
    real_view = dense.memory_view
    monkeypatch.setattr(dense, "memory_view", lambda *a: views.append(real_view(*a)) or views[-1])
    got, _ = forward_long(flash, ids, windows_per_call=1)
    assert sorted(set(views)) == [16, 192]  # capacity 192: from 32 filled slots on, every window reads it whole
    views.clear()
    want, _ = forward_long(ref, ids)  # the reference kernel reads one window a call
    assert sorted(set(views)) == [16, 32, 64, 128, 192]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=0)
