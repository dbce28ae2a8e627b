"""The dictionary-lookup generator and its packed, resumable batches; a few training steps through the trainer."""

import json

import numpy as np
import pytest

from focused.config import load_config
from focused.data.synthetic import (
    BOS,
    FILL,
    KEY,
    NUM_SPECIALS,
    QUERY,
    VALUE,
    DictionaryBatches,
    DictionaryTaskConfig,
    make_document,
)
from focused.training.loop import build_data, train

TASK = DictionaryTaskConfig()


def parse(tokens: np.ndarray, task: DictionaryTaskConfig) -> tuple[dict, list, np.ndarray]:
    """Reads a document's tokens independently of the generator: (definitions {key: value}, queries [(key,
    value)], `[len]` bool flags on the query value tokens)."""
    local = np.asarray(tokens) - task.offset
    defs, queries, flags = {}, [], np.zeros(len(local), bool)
    i = 0
    while i < len(local):
        if local[i] in (KEY, QUERY):
            item = local[i : i + task.item_len]
            key = tuple(item[1 : 1 + task.key_len])
            assert item[1 + task.key_len] == VALUE
            value = tuple(item[2 + task.key_len :])
            assert min(key + value) >= NUM_SPECIALS
            if local[i] == KEY:
                assert key not in defs, "a key is defined twice in one document"
                defs[key] = value
            else:
                queries.append((key, value))
                flags[i + 2 + task.key_len : i + task.item_len] = True
            i += task.item_len
        else:
            assert local[i] in (BOS, FILL)
            i += 1
    return defs, queries, flags


@pytest.mark.parametrize("defs_len", [256, 4096])
def test_keys_never_repeat_and_queries_ask_defined_keys(defs_len):
    for seed in range(3):
        doc = make_document(TASK, defs_len, np.random.default_rng(seed))
        assert doc.length == defs_len + TASK.query_len
        pos = np.arange(doc.length)
        tokens = doc.tokens(pos)
        assert tokens[0] == BOS and tokens.min() >= 0 and tokens.max() < TASK.vocab_size
        defs, queries, flags = parse(tokens, TASK)
        assert len(defs) == (defs_len - 1) // TASK.item_len == doc.n_defs
        assert len(queries) == TASK.query_len // TASK.item_len == 25
        assert len({k for k, _ in queries}) == len(queries)  # distinct definitions asked
        for key, value in queries:
            assert defs[key] == value
        np.testing.assert_array_equal(doc.is_query_value(pos), flags)
        assert (flags[:defs_len] == 0).all()  # definitions are never scored


def test_batches_mask_only_query_values_and_follow_the_packing_convention():
    batches = DictionaryBatches(TASK, batch_size=4, window=256, k=2, seed=3)
    rows = [next(batches) for _ in range(3)]
    for batch in rows:
        assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
            "inputs": ((4, 256), "int32"),
            "targets": ((4, 256), "int32"),
            "loss_mask": ((4, 256), "float32"),
            "doc_ids": ((4, 256), "int32"),
        }
        np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])  # inputs[t] -> targets[t]
        np.testing.assert_array_equal(batch["targets"][0::2, -1], batch["inputs"][1::2, 0])  # rows of a group
    for lane in range(2):  # a lane's stream, read back from consecutive windows, parses as whole documents
        stream = np.concatenate([b["inputs"][lane * 2 + j] for b in rows for j in range(2)])
        targets = np.concatenate([b["targets"][lane * 2 + j] for b in rows for j in range(2)])
        mask = np.concatenate([b["loss_mask"][lane * 2 + j] for b in rows for j in range(2)])
        np.testing.assert_array_equal(targets[:-1], stream[1:])  # also across batches
        for d in range(3):
            doc = stream[d * 512 : (d + 1) * 512]
            defs, queries, flags = parse(doc, TASK)
            assert len(defs) == 25 and len(queries) == 25
            assert all(defs[k] == v for k, v in queries)
            # loss_mask[t] is 1 exactly where targets[t] = the token at t + 1 is a query value
            np.testing.assert_array_equal(mask[d * 512 : (d + 1) * 512 - 1], flags[1:])
        assert mask.sum() == 3 * 25 * 4


@pytest.mark.parametrize(("window", "k"), [(256, 2), (128, 4)])
def test_k_packing_puts_consecutive_windows_of_a_document_in_consecutive_rows(window, k):
    batch = next(DictionaryBatches(TASK, batch_size=2 * k, window=window, k=k, seed=1))
    ids = batch["doc_ids"]
    for g in range(2):
        group = ids[g * k : (g + 1) * k]
        assert (group == group[0, 0]).all()  # k windows = one 512-token document
        for j in range(k - 1):  # row j + 1 continues row j
            assert batch["targets"][g * k + j, -1] == batch["inputs"][g * k + j + 1, 0]
        assert batch["inputs"][g * k, 0] == BOS
        assert batch["inputs"][g * k + 256 // window, 0] == QUERY  # the second half starts with a query
    assert ids[0, 0] != ids[k, 0]


def test_iterator_is_deterministic_and_resumes_exactly():
    a = DictionaryBatches(TASK, batch_size=4, window=256, k=2, seed=5)
    b = DictionaryBatches(TASK, batch_size=4, window=256, k=2, seed=5)
    for _ in range(2):
        x, y = next(a), next(b)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    state = json.loads(json.dumps(a.get_state()))
    expected = [next(a) for _ in range(2)]
    resumed = DictionaryBatches(TASK, batch_size=4, window=256, k=2, seed=5)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    other_seed = next(DictionaryBatches(TASK, batch_size=4, window=256, k=2, seed=6))
    held_out = next(DictionaryBatches(TASK, batch_size=4, window=256, k=2, seed=5, split="validation"))
    first = next(DictionaryBatches(TASK, batch_size=4, window=256, k=2, seed=5))
    assert not np.array_equal(other_seed["inputs"], first["inputs"])
    assert not np.array_equal(held_out["inputs"], first["inputs"])
    with pytest.raises(ValueError, match=r"different \['seed'\]"):
        DictionaryBatches(TASK, batch_size=4, window=256, k=2, seed=7).set_state(state)
    with pytest.raises(ValueError, match="not a dictionary-task iterator state"):
        resumed.set_state({"batches": 1})


def test_vocabulary_offset_and_bad_task_settings():
    task = DictionaryTaskConfig(offset=100)
    tokens = next(DictionaryBatches(task, batch_size=2, window=256, k=2))["inputs"]
    assert tokens.min() >= 100 and tokens.max() < 100 + task.vocab_size == 171
    task.check_vocab(171)
    with pytest.raises(ValueError, match="vocab_size 170, but the dictionary task needs 171 ids"):
        task.check_vocab(170)
    with pytest.raises(ValueError, match="cannot hold one query"):
        DictionaryTaskConfig(query_len=5)
    with pytest.raises(ValueError, match="leaves no room"):
        DictionaryTaskConfig(doc_len=260)
    with pytest.raises(ValueError, match="unknown key"):
        DictionaryTaskConfig.from_dict({"letters": 64})
    with pytest.raises(ValueError, match="distinct keys"):
        make_document(DictionaryTaskConfig(num_letters=2, key_len=2), 100, np.random.default_rng(0))
    with pytest.raises(ValueError, match="not divisible by k=2"):
        DictionaryBatches(TASK, batch_size=3, window=256, k=2)


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
            "--config.model.max_position_embeddings=64",
            "--config.model.last_context_length=32",
            "--config.model.mem_layers=(1,)",
            "--config.data.batch_size=4",
            "--config.data.synthetic.doc_len=128",
            "--config.data.synthetic.query_len=64",
            f"--config.train.steps={steps}",
            "--config.train.warmup_steps=1",
            "--config.train.log_every=1",
            "--config.train.save_every=0",
            "--config.train.eval_every=0",
            "--config.train.async_checkpointing=False",
            "--config.fot.cross_batch_range=3",
            "--config.fot.switch_step=2",
            *extra,
        ]
    )


def test_a_few_fot_training_steps_on_the_dictionary_task(tmp_path):
    last = train(tiny_dict_config(tmp_path / "run"))
    assert np.isfinite(last["loss"]) and 0.0 <= last["accuracy"] <= 1.0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["cross_batch_range"] for r in lines] == [1, 1, 3]  # d curriculum: C_prev only, then all rows
    assert all(r["tokens"] == 2 * 6 * 4 for r in lines)  # 2 documents x 6 queries x 4 values per step


def test_build_data_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"unknown synthetic task 'synthetic:sorting'.*known: synthetic:dictionary"):
        build_data(tiny_dict_config(tmp_path, 3, "--config.data.source.path=synthetic:sorting"))
    with pytest.raises(ValueError, match="config.model has vocab_size 64, but the dictionary task needs 71"):
        build_data(tiny_dict_config(tmp_path, 3, "--config.model.vocab_size=64"))
