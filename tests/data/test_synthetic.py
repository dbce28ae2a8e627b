"""The dictionary-lookup generator and its packed, resumable batches; a few training steps through the trainer."""

import json

import numpy as np
import pytest

from focused.config import load_config
from focused.data.synthetic import (
    FILL,
    KEY,
    NUM_SPECIALS,
    QUERY,
    VALUE,
    DictionaryBatches,
    DictionaryTaskConfig,
    key_free_accuracy,
    load_task,
    make_document,
    save_task,
)
from focused.training.loop import train
from focused.training.setup import build_data

TASK = DictionaryTaskConfig()  # the default layout: 3-letter keys over 256 letters, 1 value of 64, pages of 64
PAPER = DictionaryTaskConfig(
    key_letters=64, key_len=4, value_letters=64, value_len=4, markers=True, value_marker=True, page_len=256
)


def parse(tokens: np.ndarray, task: DictionaryTaskConfig, first_query: int) -> tuple[dict, list, np.ndarray]:
    """Reads a document's tokens independently of the generator: (definitions {key: value}, queries [(key,
    value)], `[len]` bool flags on the query value tokens). Tokens from `first_query` on are queries. Checks that
    no item straddles a page."""
    local = np.asarray(tokens) - task.offset
    first_key = NUM_SPECIALS + task.value_letters  # values first, then key letters
    defs, queries, flags = {}, [], np.zeros(len(local), bool)
    i = 0
    while i < len(local):
        if local[i] == FILL:
            i += 1
            continue
        assert i // task.page_len == (i + task.item_len - 1) // task.page_len, "an item straddles a page"
        item = list(local[i : i + task.item_len])
        if task.markers:
            assert item.pop(0) == (QUERY if i >= first_query else KEY)
        key = tuple(item[: task.key_len])
        if task.value_marker:
            assert item[task.key_len] == VALUE
        value = tuple(item[len(item) - task.value_len :])
        assert all(first_key <= x < first_key + task.key_letters for x in key)
        assert all(NUM_SPECIALS <= x < first_key for x in value)
        if i < first_query:
            assert key not in defs, "a key is defined twice in one document"
            defs[key] = value
        else:
            queries.append((key, value))
            flags[i + task.item_len - task.value_len : i + task.item_len] = True
        i += task.item_len
    return defs, queries, flags


@pytest.mark.parametrize("task", [TASK, PAPER], ids=["default", "paper"])
@pytest.mark.parametrize("pages", [1, 16])
def test_keys_never_repeat_and_queries_ask_distinct_defined_keys(task, pages):
    for seed in range(3):
        doc = make_document(task, pages, np.random.default_rng(seed))
        assert doc.length == (pages + task.query_pages) * task.page_len
        pos = np.arange(doc.length)
        tokens = doc.tokens(pos)
        assert tokens.min() >= 0 and tokens.max() < task.vocab_size
        defs, queries, flags = parse(tokens, task, doc.defs_len)
        assert len(defs) == pages * task.items_per_page == doc.n_defs
        assert len(queries) == task.num_queries(doc.n_defs) < len(defs)  # fewer queries than definitions
        assert len({k for k, _ in queries}) == len(queries)  # asked without replacement
        for key, value in queries:
            assert defs[key] == value
        np.testing.assert_array_equal(doc.is_query_value(pos), flags)
        assert (flags[: doc.defs_len] == 0).all()  # definitions are never scored


def test_key_free_guessing_is_at_most_an_eighth_for_the_default_layout():
    """The best strategy that ignores keys: name the value of a definition that can still be asked. Simulated on
    training documents (queries with replacement: any definition) and evaluation documents (without replacement:
    one not asked yet); both are within 1/8 and match `key_free_accuracy`."""
    rng = np.random.default_rng(0)
    for training in (True, False):
        level = key_free_accuracy(TASK, training=training)
        assert level <= 1 / 8
        hits = []
        for _ in range(400):
            doc = make_document(TASK, TASK.def_pages, rng, training=training)
            remaining = list(range(doc.n_defs))
            for asked in doc.queried:
                guess = remaining[rng.integers(len(remaining))]
                hits.append(doc.values[guess, 0] == doc.values[asked, 0])
                if not training:
                    remaining.remove(asked)  # the answer is seen once the query is over
        assert abs(np.mean(hits) - level) < 0.02
    assert key_free_accuracy(TASK, training=True) == 1 / 16
    # values are distinct inside a document, so no value is a safer guess than another
    assert all(len(set(make_document(TASK, 1, rng).values[:, 0])) == TASK.items_per_page for _ in range(10))


def test_training_documents_vary_definitions_and_share_key_letters():
    task = DictionaryTaskConfig(min_defs=2, key_groups=4)
    rng = np.random.default_rng(1)
    counts = set()
    for _ in range(50):
        doc = make_document(task, 2, rng, training=True)
        counts.add(int(doc.n_defs))
        defs, queries, _ = parse(doc.tokens(np.arange(doc.length)), task, doc.defs_len)
        assert len(defs) == doc.n_defs and len(queries) == task.items_per_page  # the query page is full
        letters = {letter for key in defs for letter in key}
        assert len(letters) <= 4  # all keys from one group of key_groups letters ...
        if len(defs) >= 8:  # ... shared by the positions: letters change places between keys
            assert all(len({key[j] for key in defs}) >= 2 for j in range(task.key_len))
            assert len({letter for key in defs for letter in key[:1]} & {letter for key in defs for letter in key[1:]})
    assert min(counts) < 2 * task.items_per_page and max(counts) > 4
    full = make_document(task, 2, rng)  # evaluation documents: full pages, keys from the whole alphabet
    assert full.n_defs == 2 * task.items_per_page


def test_batches_mask_only_query_values_and_follow_the_packing_convention():
    batches = DictionaryBatches(TASK, batch_size=4, window=64, k=2, seed=3)
    rows = [next(batches) for _ in range(3)]
    for batch in rows:
        assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
            "inputs": ((4, 64), "int32"),
            "targets": ((4, 64), "int32"),
            "loss_mask": ((4, 64), "float32"),
            "doc_ids": ((4, 64), "int32"),
        }
        np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])  # inputs[t] -> targets[t]
        np.testing.assert_array_equal(batch["targets"][0::2, -1], batch["inputs"][1::2, 0])  # rows of a group
        key_letter = batch["inputs"] >= NUM_SPECIALS + TASK.value_letters
        assert key_letter[:, 0].all()  # every page starts with an item
    for lane in range(2):  # a lane's stream, read back from consecutive windows, parses as whole documents
        stream = np.concatenate([b["inputs"][lane * 2 + j] for b in rows for j in range(2)])
        targets = np.concatenate([b["targets"][lane * 2 + j] for b in rows for j in range(2)])
        mask = np.concatenate([b["loss_mask"][lane * 2 + j] for b in rows for j in range(2)])
        np.testing.assert_array_equal(targets[:-1], stream[1:])  # also across batches
        for d in range(3):
            doc = stream[d * 128 : (d + 1) * 128]
            defs, queries, flags = parse(doc, TASK, 64)
            assert len(defs) == 16 and len(queries) == 16  # queries drawn with replacement fill their page
            assert all(defs[k] == v for k, v in queries)
            # loss_mask[t] is 1 exactly where targets[t] = the token at t + 1 is a query value
            np.testing.assert_array_equal(mask[d * 128 : (d + 1) * 128 - 1], flags[1:])
        assert mask.sum() == 3 * 16


@pytest.mark.parametrize(("window", "k"), [(64, 2), (128, 1)])
def test_k_packing_puts_consecutive_windows_of_a_document_in_consecutive_rows(window, k):
    batch = next(DictionaryBatches(TASK, batch_size=2 * k, window=window, k=k, seed=1))
    ids = batch["doc_ids"]
    for g in range(2):
        group = ids[g * k : (g + 1) * k]
        assert (group == group[0, 0]).all()  # k windows = one 128-token document
        for j in range(k - 1):  # row j + 1 continues row j
            assert batch["targets"][g * k + j, -1] == batch["inputs"][g * k + j + 1, 0]
    assert ids[0, 0] != ids[k, 0]


def test_iterator_is_deterministic_and_resumes_exactly():
    a = DictionaryBatches(TASK, batch_size=4, window=64, k=2, seed=5)
    b = DictionaryBatches(TASK, batch_size=4, window=64, k=2, seed=5)
    for _ in range(2):
        x, y = next(a), next(b)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    state = json.loads(json.dumps(a.get_state()))
    expected = [next(a) for _ in range(2)]
    resumed = DictionaryBatches(TASK, batch_size=4, window=64, k=2, seed=5)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    other_seed = next(DictionaryBatches(TASK, batch_size=4, window=64, k=2, seed=6))
    held_out = next(DictionaryBatches(TASK, batch_size=4, window=64, k=2, seed=5, split="validation"))
    first = next(DictionaryBatches(TASK, batch_size=4, window=64, k=2, seed=5))
    assert not np.array_equal(other_seed["inputs"], first["inputs"])
    assert not np.array_equal(held_out["inputs"], first["inputs"])
    with pytest.raises(ValueError, match=r"different \['seed'\]"):
        DictionaryBatches(TASK, batch_size=4, window=64, k=2, seed=7).set_state(state)
    with pytest.raises(ValueError, match="not a dictionary-task iterator state"):
        resumed.set_state({"batches": 1})


def test_vocabulary_offset_and_bad_task_settings(tmp_path):
    task = DictionaryTaskConfig(offset=100)
    tokens = next(DictionaryBatches(task, batch_size=2, window=64, k=2))["inputs"]
    assert tokens.min() >= 100 and tokens.max() < 100 + task.vocab_size == 427
    task.check_vocab(427)
    with pytest.raises(ValueError, match="vocab_size 426, but the dictionary task needs 427 ids"):
        task.check_vocab(426)
    with pytest.raises(ValueError, match="queries=16 must be fewer than the 16 definitions"):
        DictionaryTaskConfig(queries=16, repeat_queries=False)
    assert (
        make_document(DictionaryTaskConfig(queries=16), 1, np.random.default_rng(0), training=True).queried.size == 16
    )
    with pytest.raises(ValueError, match="page_len=6 holds 1 item"):
        DictionaryTaskConfig(page_len=6)
    with pytest.raises(ValueError, match="key_groups=2 gives 2\\*\\*3 keys, fewer than the 16"):
        DictionaryTaskConfig(key_groups=2)
    with pytest.raises(ValueError, match="key_len must be a positive int"):
        DictionaryTaskConfig(key_len=0)
    with pytest.raises(ValueError, match="unknown key"):
        DictionaryTaskConfig.from_dict({"letters": 64})
    with pytest.raises(ValueError, match="distinct keys but only 4\\*\\*2 exist"):
        make_document(DictionaryTaskConfig(key_letters=4, key_len=2), 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="not divisible by config.data.k=2"):
        DictionaryBatches(TASK, batch_size=3, window=64, k=2)
    with pytest.raises(ValueError, match="window 96 is not a multiple of config.data.synthetic.page_len=64"):
        DictionaryBatches(TASK, batch_size=2, window=96, k=2)
    save_task(PAPER, tmp_path)
    assert load_task(tmp_path) == PAPER and load_task(tmp_path / "missing") is None
    (tmp_path / "dictionary_task.json").write_text("{not json")
    with pytest.raises(ValueError, match="dictionary_task.json is not a valid task layout"):
        load_task(tmp_path)


def tiny_dict_config(workdir, steps=3, *extra):
    return load_config(
        [
            "train.py",
            "--config",
            "configs/dict_lookup_fot.py",
            f"--config.workdir={workdir}",
            "--config.model.hidden_size=32",
            "--config.model.intermediate_size=64",
            "--config.model.num_hidden_layers=2",
            "--config.model.num_attention_heads=2",
            "--config.model.num_key_value_heads=1",
            "--config.model.mem_layers=(1,)",
            "--config.data.batch_size=8",
            f"--config.train.steps={steps}",
            "--config.train.warmup_steps=1",
            "--config.train.log_every=1",
            "--config.train.save_every=0",
            "--config.train.eval_every=0",
            "--config.train.async_checkpointing=False",
            "--config.fot.cross_batch_range=3",
            "--config.fot.initial_range=1",
            "--config.fot.switch_step=2",
            "--config.fot.switch_accuracy=-1",
            *extra,
        ]
    )


def test_a_few_fot_training_steps_on_the_dictionary_task(tmp_path):
    last = train(tiny_dict_config(tmp_path / "run"))
    assert np.isfinite(last["loss"]) and 0.0 <= last["accuracy"] <= 1.0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["cross_batch_range"] for r in lines] == [1, 1, 3]  # d curriculum: C_prev only, then all rows
    assert all(r["tokens"] == 4 * 16 for r in lines)  # 4 documents x a full page of 16 single-letter queries
    assert load_task(tmp_path / "run") == DictionaryTaskConfig.from_dict(tiny_dict_config(tmp_path).data.synthetic)


def test_build_data_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"unknown synthetic task 'synthetic:sorting'.*known: synthetic:dictionary"):
        build_data(tiny_dict_config(tmp_path, 3, "--config.data.source.path=synthetic:sorting"))
    with pytest.raises(ValueError, match="config.model has vocab_size 64, but the dictionary task needs"):
        build_data(tiny_dict_config(tmp_path, 3, "--config.model.vocab_size=64"))
