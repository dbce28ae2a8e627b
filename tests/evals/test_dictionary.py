"""The dictionary-lookup eval: streamed (and batch-filled) scoring equals a plain long forward pass, every backend
runs end to end, configs load, and bad inputs are one-line errors."""

import os
import runpy

import numpy as np
import pytest
from flax import nnx

from focused.data.synthetic import DictionaryTaskConfig, make_document
from focused.evals.dictionary import (
    DictionaryEvalConfig,
    evaluate_dictionary,
    evaluate_dictionary_from_config,
    score_documents,
)
from focused.memory.backends import MemoryConfig, run_long
from focused.model.config import LlamaConfig
from focused.model.llama import LlamaForCausalLM

TASK = DictionaryTaskConfig(key_letters=16, value_letters=16, page_len=32)  # 8 items of 4 tokens per page


def tiny_model(mem_layers=(0, 1), vocab_size=39, seed=0, window=64):
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=window,
        last_context_length=window // 2,
        mem_layers=mem_layers,
        mem_positionals=False,
        mem_dtype="float32",
    )
    return LlamaForCausalLM(config, rngs=nnx.Rngs(seed))


def reference_argmax(model, docs, cfg, window):
    """Argmax and truth at the scored positions from one plain window-by-window forward over the whole document."""
    pad = (-docs[0].length) % window
    pos = np.arange(-pad, docs[0].length)
    ids = np.stack([d.tokens(pos) for d in docs])
    logits = run_long(model, ids, np.broadcast_to(pos >= 0, ids.shape), cfg)
    scored = np.stack([d.is_query_value(pos + 1) for d in docs])
    truth = np.stack([d.tokens(pos + 1) for d in docs])
    return logits.argmax(-1)[scored].reshape(len(docs), -1), truth[scored].reshape(len(docs), -1)


@pytest.mark.parametrize(
    ("mem_layers", "backend", "memory"),
    [
        ((0, 1), "dense", "dense"),
        ((0, 1), "faiss:flat", "faiss"),
        ((1,), "topk", "dense"),
        ((1,), "faiss:flat", "faiss"),
    ],
)
def test_streamed_scoring_equals_argmax_of_the_full_forward_pass(mem_layers, backend, memory):
    """Filling without the last memory layer's read (batched for one memory layer), and keeping only query
    argmaxes, changes nothing; 7 + 1 pages of 32 are 4 windows of 64 (batched filling of 3), 4 + 1 pages start
    with a left-padded window (filled one by one)."""
    cfg = MemoryConfig(backend=memory, top_k=8, index={"index_type": "flat"})
    for pages, window in ((7, 64), (4, 64), (5, 32)):
        model = tiny_model(mem_layers, window=window)
        docs = [make_document(TASK, pages, np.random.default_rng(i)) for i in range(2)]
        predictions, targets = score_documents(model, docs, cfg, backend=backend, fill_tokens=64)
        assert [p.shape for p in predictions] == [(8, 1)] * 2  # a full query page
        ref_cfg = cfg if backend != "topk" else MemoryConfig(backend="topk", top_k=8)
        want, truth = reference_argmax(model, docs, ref_cfg, window)
        np.testing.assert_array_equal(np.stack(predictions).reshape(2, -1), want)
        np.testing.assert_array_equal(np.stack(targets).reshape(2, -1), truth)


def test_eval_end_to_end_on_every_backend():
    model = tiny_model(mem_layers=(1,))
    faiss = MemoryConfig(backend="faiss", top_k=8, index={"index_type": "flat"})
    # 1K on the device as exact top-k (device_up_to), 4K in a flat FAISS index
    mixed = evaluate_dictionary(model, [1024, 4096], faiss, seed=1, trials=2, task=TASK, device_up_to=2048)
    dense = evaluate_dictionary(model, [1024], MemoryConfig(backend="dense"), trials=2, task=TASK)
    assert [r["backend"] for r in mixed["results"]] == ["topk", "faiss:flat"]
    assert [r["backend"] for r in dense["results"]] == ["dense"]
    for report in (mixed, dense):
        assert report["task"] == "dictionary" and report["window"] == 64 and report["trials"] == 2
        assert report["layout"]["page_len"] == 32
        for row in report["results"]:
            assert row["queries"] == 2 * 8
            assert 0.0 <= row["accuracy"] <= row["token_accuracy"] <= 1.0
            assert row["peak_rss_gib"] > 0 and 0 < row["key_free_accuracy"] < 0.5
    assert [r["definitions"] for r in mixed["results"]] == [256, 1024]


def test_baseline_without_memory_layers_sees_only_its_window():
    baseline = tiny_model(mem_layers=())
    report = evaluate_dictionary(baseline, [1024], trials=1, task=TASK, window=128)
    (row,) = report["results"]
    assert row["backend"] == "local" and report["window"] == 128 and report["model_window"] == 64
    assert 0.0 <= row["accuracy"] <= 1.0


def test_trial_tokens_caps_the_documents_of_large_sizes_and_keeps_the_first_ones():
    model = tiny_model(mem_layers=(1,))
    dense = MemoryConfig(backend="dense")
    capped = evaluate_dictionary(model, [256, 1024], dense, trials=4, task=TASK, trial_tokens=2048)
    assert [r["trials"] for r in capped["results"]] == [4, 2]  # 2048 // 1024 documents of 1024 tokens
    assert [r["queries"] for r in capped["results"]] == [4 * 8, 2 * 8]
    full = evaluate_dictionary(model, [1024], dense, trials=2, task=TASK)
    assert capped["results"][1]["accuracy"] == full["results"][0]["accuracy"]  # the same two documents
    with pytest.raises(ValueError, match="trial_tokens must be a non-negative int"):
        evaluate_dictionary(model, [1024], trials=1, task=TASK, trial_tokens=-1)


def test_eval_config_file_drives_the_eval():
    config = runpy.run_path(os.path.join("configs", "eval_dictionary.py"))["get_config"]()
    assert DictionaryEvalConfig.from_dict(config.dictionary).sizes[-1] == 2**24
    assert MemoryConfig.from_dict(config.memory).top_k == 32
    config.dictionary.sizes = (224,)  # 7 pages: the shapes of the streamed-scoring test
    config.dictionary.trials = 2
    config.memory.backend = "dense"
    with pytest.raises(ValueError, match="carries no dictionary task layout"):
        evaluate_dictionary_from_config(tiny_model(), config.dictionary, config.memory)
    report = evaluate_dictionary_from_config(tiny_model(), config.dictionary, config.memory, task=TASK)
    assert report["results"][0]["memory_tokens"] == 224 and report["results"][0]["backend"] == "dense"
    config.dictionary.task = {"key_letters": 16, "value_letters": 16, "page_len": 32, "queries": 2}
    report = evaluate_dictionary_from_config(tiny_model(), config.dictionary, config.memory, task=TASK)
    assert report["results"][0]["queries"] == 2 * 2  # an explicit config.dictionary.task wins


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match="the model has vocab_size 30, but the dictionary task needs 39 ids"):
        evaluate_dictionary(tiny_model(vocab_size=30), [1024], task=TASK)
    model = tiny_model()
    with pytest.raises(ValueError, match="memory size 40 is not a positive multiple of the task's page_len 32"):
        evaluate_dictionary(model, [40], task=TASK)
    with pytest.raises(ValueError, match="needs more distinct keys than 16\\*\\*3"):
        evaluate_dictionary(model, [32 * 1024], task=TASK)
    with pytest.raises(ValueError, match="trials must be a positive int"):
        evaluate_dictionary(model, [1024], trials=0, task=TASK)
    with pytest.raises(ValueError, match="sizes is empty"):
        evaluate_dictionary(model, [], task=TASK)
    with pytest.raises(ValueError, match="window 48 is not a multiple of the task's page_len 32"):
        evaluate_dictionary(model, [1024], task=TASK, window=48)
    with pytest.raises(ValueError, match="unknown key"):
        DictionaryEvalConfig.from_dict({"size": [1024]})
    with pytest.raises(ValueError, match="unknown memory backend 'annoy'"):
        evaluate_dictionary_from_config(model, {"sizes": [1024]}, {"backend": "annoy"}, task=TASK)
    docs = [make_document(TASK, 2, np.random.default_rng(0))]
    with pytest.raises(ValueError, match="unknown dictionary eval backend 'lsh'"):
        score_documents(model, docs, MemoryConfig(), backend="lsh")
