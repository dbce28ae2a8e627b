"""The key-rank diagnostic reads the same keys and queries as the model's memory layer, and ranks the shipped FoT
model's right keys first at a memory size it answers perfectly."""

import json
import runpy
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import focused.evals.key_ranks as key_ranks_module
import focused.model.attention as attention
from focused.convert import import_hf
from focused.data.synthetic import DictionaryTaskConfig, load_task, make_document
from focused.evals.dictionary import EVAL_STREAM
from focused.evals.key_ranks import definition_of_position, key_ranks, memory_keys, memory_queries, summary
from focused.model.config import LlamaConfig
from focused.model.llama import LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[2]
TASK = DictionaryTaskConfig(page_len=32)


def tiny(mem_layers=(1,), mem_positionals=False, seed=0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=TASK.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TASK.page_len,
        last_context_length=TASK.page_len // 2,
        mem_layers=mem_layers,
        mem_positionals=mem_positionals,
        mem_dtype="float32",
    )
    return LlamaForCausalLM(config, rngs=nnx.Rngs(seed))


def test_keys_and_queries_are_the_memory_layers_own(monkeypatch):
    model = tiny()
    doc = make_document(TASK, 3, np.random.default_rng(5))
    keys = memory_keys(model, doc)
    window = TASK.page_len
    ids = doc.tokens(np.arange(doc.length)).reshape(-1, window)  # definition pages, then the query page
    seen = []
    real = attention.memory_attention

    def spy(q, *args, **kwargs):
        seen.append(q)
        return real(q, *args, **kwargs)

    monkeypatch.setattr(attention, "memory_attention", spy)
    out = model(jnp.asarray(ids))
    assert len(seen) == 2  # layer 0, then the memory layer
    q_memory_layer = seen[1]
    (kv,) = out.memory_kv
    expected = np.asarray(kv.keys[:-1]).reshape(-1, *kv.keys.shape[2:])  # the definition pages' windows
    np.testing.assert_allclose(keys, expected, rtol=1e-5, atol=1e-6)
    queries = memory_queries(model, doc)
    np.testing.assert_allclose(queries, np.asarray(q_memory_layer[-1]), rtol=1e-5, atol=1e-6)


def test_positions_map_to_their_definition_and_offset():
    doc = make_document(TASK, 2, np.random.default_rng(1))
    owner, offset = definition_of_position(doc)
    items = TASK.items_per_page
    assert owner[: TASK.item_len].tolist() == [0] * TASK.item_len
    assert owner[TASK.page_len + TASK.item_len] == items + 1  # page 2, item 1
    assert offset[: 2 * TASK.item_len].tolist() == list(range(TASK.item_len)) * 2
    filler = owner < 0
    assert filler.sum() == 2 * (TASK.page_len - items * TASK.item_len)


def test_the_shipped_fot_model_ranks_the_right_key_first_where_it_answers_everything():
    folder = ROOT / "models" / "dict_lookup_fot"
    result = key_ranks(import_hf(folder), load_task(folder), 4096, seed=3000)
    row = summary(result)
    assert result["ranks"].shape == (16, 4)
    assert row["top32"] == 1.0 and row["first"] >= 0.9, row


def test_other_models_get_a_one_line_error():
    for model in (tiny(mem_layers=(0, 1)), tiny(mem_positionals=True)):
        with pytest.raises(ValueError, match="one memory layer without positional encoding") as error:
            key_ranks(model, TASK, 64, seed=0)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="multiple of the page length"):
        key_ranks(tiny(), TASK, 100, seed=0)


def test_the_script_writes_its_table(tmp_path):
    script = runpy.run_path(str(ROOT / "experiments" / "dictionary_key_ranks.py"))
    out = tmp_path / "ranks"
    assert script["main"](["--sizes", "1024", "--out", str(out)]) == 0
    (row,) = json.loads(out.with_suffix(".json").read_text())
    assert row["memory_tokens"] == 1024 and row["pairs"] == 64
    assert "| 1024 | 64 |" in out.with_suffix(".md").read_text()


def test_summary_counts_pairs_and_queries_as_defined():
    ranks = np.array([[0, 0, 3, 0], [1, 0, 0, 5], [2, 40, 7, 1], [0, 0, 0, 0], [33, 0, 1, 2]])
    outranking = {(0, 3): 6, (1, 3): 2, (-1, 0): 2}
    direction = np.where(ranks > 1, ranks - 2, 0)
    result = {"memory_tokens": 64, "ranks": ranks, "outranking": outranking, "direction_ranks": direction}
    row = summary({**result, "outranking_norm": np.array([0.5, 0.9, 0.99])})
    first_per_query = [3, 2, 0, 4, 1]
    assert row["pairs"] == 20 and row["first"] == 10 / 20 and row["top32"] == 18 / 20
    assert row["query_first_in_a_head"] == np.mean([n > 0 for n in first_per_query]) == 0.8
    assert row["query_first_in_most_heads"] == np.mean([n > 2 for n in first_per_query]) == 0.4
    assert row["median_rank"] == 0.5 and row["max_rank"] == 40
    assert row["outranking_keys"] == 10 and row["outranking_no_shared_letter"] == 0.6
    assert row["first_by_direction"] == 15 / 20 and row["outranking_norm_median"] == 0.9
    assert summary({**result, "outranking": {}, "outranking_norm": np.zeros(0)})["outranking_norm_median"] is None


def test_a_long_unrelated_key_outranks_by_dot_product_but_not_by_direction(monkeypatch):
    """Hand-made keys: definition d's tokens have key e_d and its query is e_d (dot product 1); one filler token has
    key 1.5 · (1, …, 1), which scores 1.5 with every query but is at cosine 1/√8 from each."""
    task = DictionaryTaskConfig(page_len=34)  # 8 items of 4 tokens and 2 filler tokens a page
    doc = make_document(task, 1, np.random.default_rng([0, EVAL_STREAM, task.page_len, 0]))  # key_ranks' document
    owner, offset = definition_of_position(doc)
    heads, kv_heads, dim = 4, 2, 8
    eye = np.eye(dim, dtype=np.float32)
    keys = np.zeros((doc.defs_len, kv_heads, dim), np.float32)
    keys[owner >= 0] = eye[owner[owner >= 0], None]
    long_key = np.flatnonzero(owner < 0)[0]
    keys[long_key] = 1.5
    asked = doc.queried[: task.items_per_page]
    queries = np.zeros((task.page_len, heads, dim), np.float32)
    queries[np.arange(len(asked)) * task.item_len + task.key_len - 1] = eye[asked, None]
    monkeypatch.setattr(key_ranks_module, "memory_keys", lambda *_: keys)
    monkeypatch.setattr(key_ranks_module, "memory_queries", lambda *_: queries)
    result = key_ranks(tiny(), task, task.page_len, seed=0)
    assert (result["ranks"] == 1).all() and (result["direction_ranks"] == 0).all()
    assert result["outranking"] == {(-1, int(offset[long_key])): result["ranks"].size}
    np.testing.assert_allclose(result["outranking_norm"], (doc.defs_len - 1) / doc.defs_len)
