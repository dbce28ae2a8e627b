"""The dictionary-lookup eval: streamed scoring equals a plain long forward pass, every backend runs end to end,
configs load, and bad inputs are one-line errors."""

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

TASK = DictionaryTaskConfig(query_len=64)  # 6 queries per document keeps the tiny runs short


def tiny_model(mem_layers=(0, 1), vocab_size=71, seed=0):
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        last_context_length=32,
        mem_layers=mem_layers,
        mem_positionals=False,
        mem_dtype="float32",
    )
    return LlamaForCausalLM(config, rngs=nnx.Rngs(seed))


@pytest.mark.parametrize(("backend", "memory"), [("dense", "dense"), ("faiss:flat", "faiss")])
def test_streamed_scoring_equals_argmax_of_the_full_forward_pass(backend, memory):
    """Filling the memory without the last memory layer's read, and keeping only query argmaxes, changes nothing."""
    model = tiny_model()
    docs = [make_document(TASK, 200, np.random.default_rng(i)) for i in range(2)]  # 264 tokens: left pad of 56
    cfg = MemoryConfig(backend=memory, top_k=8, index={"index_type": "flat"})
    predictions, targets = score_documents(model, docs, cfg, backend=backend)
    assert predictions.shape == targets.shape == (2, 6, 4)
    pos = np.arange(-56, docs[0].length)
    ids = np.stack([d.tokens(pos) for d in docs])
    logits = run_long(model, ids, np.broadcast_to(pos >= 0, ids.shape), cfg)
    scored = np.stack([d.is_query_value(pos + 1) for d in docs])
    np.testing.assert_array_equal(predictions.reshape(2, -1), logits.argmax(-1)[scored].reshape(2, -1))
    truth = np.stack([d.tokens(pos + 1) for d in docs])[scored]
    np.testing.assert_array_equal(targets.reshape(2, -1), truth.reshape(2, -1))


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
        for row in report["results"]:
            assert row["queries"] == 2 * 6
            assert 0.0 <= row["accuracy"] <= row["token_accuracy"] <= 1.0
            assert 0.0 <= row["token_accuracy"] <= 1.0 and row["peak_rss_gib"] > 0
    assert [r["definitions"] for r in mixed["results"]] == [102, 409]


def test_baseline_without_memory_layers_sees_only_its_window():
    baseline = tiny_model(mem_layers=())
    report = evaluate_dictionary(baseline, [1024], trials=1, task=TASK, window=128)
    (row,) = report["results"]
    assert row["backend"] == "local" and report["window"] == 128 and report["model_window"] == 64
    assert 0.0 <= row["accuracy"] <= 1.0


def test_eval_config_file_drives_the_eval():
    config = runpy.run_path(os.path.join("configs", "eval_dictionary.py"))["get_config"]()
    assert DictionaryEvalConfig.from_dict(config.dictionary).sizes[-1] == 2**24
    assert MemoryConfig.from_dict(config.memory).top_k == 32
    config.dictionary.sizes = (200,)  # the shapes of the streamed-scoring test: its compiled steps are reused
    config.dictionary.trials = 2
    config.dictionary.task.query_len = 64
    config.memory.backend = "dense"
    report = evaluate_dictionary_from_config(tiny_model(), config.dictionary, config.memory)
    assert report["results"][0]["memory_tokens"] == 200 and report["results"][0]["backend"] == "dense"
    for name in ("dict_lookup_fot.py", "dict_lookup_baseline.py"):
        train_config = runpy.run_path(os.path.join("configs", name))["get_config"]()
        assert train_config.data.source.path == "synthetic:dictionary"
        assert train_config.model.vocab_size >= DictionaryTaskConfig().vocab_size
    fot = runpy.run_path(os.path.join("configs", "dict_lookup_fot.py"))["get_config"]()
    assert (fot.fot.initial_range, fot.fot.switch_accuracy) == (1, 0.98) and fot.model.mem_layers


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match="the model has vocab_size 64, but the dictionary task needs 71 ids"):
        evaluate_dictionary(tiny_model(vocab_size=64), [1024], task=TASK)
    model = tiny_model()
    with pytest.raises(ValueError, match="memory size 8 cannot hold one definition"):
        evaluate_dictionary(model, [8], task=TASK)
    with pytest.raises(ValueError, match="trials must be a positive int"):
        evaluate_dictionary(model, [1024], trials=0, task=TASK)
    with pytest.raises(ValueError, match="at least one memory size"):
        evaluate_dictionary(model, [], task=TASK)
    with pytest.raises(ValueError, match="unknown key"):
        DictionaryEvalConfig.from_dict({"size": [1024]})
    with pytest.raises(ValueError, match="unknown memory backend 'annoy'"):
        evaluate_dictionary_from_config(model, {"sizes": [1024]}, {"backend": "annoy"})
    docs = [make_document(TASK, 200, np.random.default_rng(0))]
    with pytest.raises(ValueError, match="unknown dictionary eval backend 'lsh'"):
        score_documents(model, docs, MemoryConfig(), backend="lsh")
