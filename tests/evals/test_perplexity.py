"""Perplexity vs memory: PPL is exp of the mean token loss (computed here independently), every memory size m
equals a window-by-window re-computation with an m-window memory, the distractor streams are laid out as
documented, and bad input is a clear error."""

import json
import math

import numpy as np
import pytest

from focused.config import load_config
from focused.data import load_tokenizer
from focused.evals.perplexity import PerplexityConfig, document_spans, evaluate, run_perplexity, streams
from focused.memory.backends import MemoryConfig
from focused.memory.dense import forward_long
from tests.evals.test_passkey import tiny_model

W = 64


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("focused")


def random_documents(count: int, words: int, seed: int = 0) -> list[str]:
    vocab = ["whale", "ship", "sea", "captain", "harpoon", "deck", "sail", "wind", "storm", "night", "oil", "crew"]
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(vocab, size=words)) for _ in range(count)]


def token_nll(logits, labels) -> np.ndarray:
    """-log p(label) in float64: logits `[b, t, vocab]`, labels `[b, t]` → `[b, t]`."""
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, np.asarray(labels)[..., None], -1)[..., 0]


def test_ppl_of_a_window_is_exp_of_its_mean_token_loss(tok):
    model = tiny_model(seed=2)
    docs = random_documents(3, 120)
    cfg = PerplexityConfig(memory_windows=(0,), score_windows=1, num_documents=2, settings=("single",), batch_size=2)
    (point,) = run_perplexity(model, tok, docs, cfg)["single"]
    spans, indices = document_spans(docs, tok, W + 1, 2)
    assert spans[0, 0] == tok.bos_id and spans[0, 1:].tolist() == tok.encode(docs[0])[:W]
    logits, _ = forward_long(model, spans[:, :W])  # one window: nothing in memory
    nll = token_nll(logits, spans[:, 1:])
    assert point["scored_tokens"] == 2 * W and indices == [0, 1] == point["documents"]
    np.testing.assert_allclose(point["ppl"], math.exp(nll.mean()), rtol=1e-5)
    np.testing.assert_allclose(point["document_ppl"], np.exp(nll.mean(axis=1)), rtol=1e-5)


def test_each_memory_size_equals_a_window_by_window_recomputation(tok):
    model = tiny_model(seed=2)
    docs = random_documents(2, 400, seed=1)
    cfg = PerplexityConfig(
        memory_windows=(2, 0, 1), score_windows=2, num_documents=2, settings=("single",), batch_size=2
    )
    points = run_perplexity(model, tok, docs, cfg)["single"]
    assert [p["m"] for p in points] == [0, 1, 2] and {p["scored_tokens"] for p in points} == {2 * 2 * W}
    assert [p["context_tokens"] for p in points] == [W, 2 * W, 3 * W]
    spans, _ = document_spans(docs, tok, 4 * W + 1, 2)
    inputs, labels = spans[:, :-1], spans[:, 1:]
    scored = slice(2 * W, 4 * W)  # the last two windows
    alone = np.concatenate([forward_long(model, inputs[:, s : s + W])[0] for s in (2 * W, 3 * W)], axis=1)
    np.testing.assert_allclose(points[0]["ppl"], math.exp(token_nll(alone, labels[:, scored]).mean()), rtol=1e-5)
    for point in points[1:]:
        logits, _ = forward_long(model, inputs, capacity=point["m"] * W, policy="drop_oldest")
        expected = math.exp(token_nll(logits[:, scored], labels[:, scored]).mean())
        np.testing.assert_allclose(point["ppl"], expected, rtol=1e-5)
    assert len({round(p["ppl"], 6) for p in points}) == 3  # the memory changes the result


def test_distractor_streams_interleave_other_documents_before_each_target_window():
    n_windows, window = 3, 4
    spans = np.arange(3)[:, None] * 1000 + np.arange(n_windows * window + 1)[None, :]  # doc d, position t
    inputs, labels, weights = streams(spans, targets=2, distractors=2, window=window, n_windows=n_windows, scored=1)
    assert inputs.shape == (2, 3 * n_windows * window)
    blocks = inputs.reshape(2, 3 * n_windows, window)
    # row 0: target 0, distractors 1 and 2; row 1: target 1, distractors 2 and 0 (cyclic)
    assert [b[0] // 1000 for b in blocks[0]] == [1, 2, 0] * n_windows
    assert [b[0] // 1000 for b in blocks[1]] == [2, 0, 1] * n_windows
    assert [b[0] % 1000 for b in blocks[0]] == [0, 0, 0, 4, 4, 4, 8, 8, 8]
    np.testing.assert_array_equal(labels, inputs + 1)
    w = weights.reshape(2, 3 * n_windows, window)
    assert w.sum() == 2 * window and w[0, -1].all() and w[1, -1].all()
    single, single_labels, single_weights = streams(spans, 1, 0, window, n_windows, scored=2)
    np.testing.assert_array_equal(single[0], spans[0, :-1])
    np.testing.assert_array_equal(single_labels[0], spans[0, 1:])
    np.testing.assert_array_equal(single_weights[0], np.arange(12) >= 4)
    with pytest.raises(ValueError, match="3 distractors need 4 documents, only 3 are long enough"):
        streams(spans, 1, 3, window, n_windows, 1)


def test_distractor_ppl_equals_a_recomputation_of_the_interleaved_input(tok):
    model = tiny_model(seed=2)
    docs = random_documents(3, 300, seed=2)
    cfg = PerplexityConfig(memory_windows=(1,), score_windows=1, num_documents=2, distractors=2, batch_size=2)
    found = run_perplexity(model, tok, docs, cfg)
    spans, _ = document_spans(docs, tok, 2 * W + 1, 3)
    orders = [[1, 2, 0], [2, 0, 1]]  # per target: its distractors first, itself last, window by window
    stream = np.stack([np.concatenate([spans[d, j * W : (j + 1) * W] for j in range(2) for d in o]) for o in orders])
    logits, _ = forward_long(model, stream, capacity=3 * W, policy="drop_oldest")
    expected = math.exp(token_nll(logits[:, -W:], spans[:2, W + 1 :]).mean())
    (point,) = found["distractors"]
    assert point["memory_tokens"] == 3 * W and point["distractors"] == 2 and point["scored_tokens"] == 2 * W
    np.testing.assert_allclose(point["ppl"], expected, rtol=1e-5)
    assert abs(point["ppl"] - found["single"][0]["ppl"]) > 1e-3


def test_faiss_backend_gives_the_dense_ppl(tok):
    model = tiny_model(seed=2)
    docs = random_documents(2, 400, seed=1)
    cfg = PerplexityConfig(memory_windows=(1,), score_windows=2, num_documents=2, settings=("single",), batch_size=2)
    dense = run_perplexity(model, tok, docs, cfg)["single"][0]["ppl"]
    faiss = MemoryConfig(backend="faiss", top_k=W, index={"index_type": "flat"})
    np.testing.assert_allclose(run_perplexity(model, tok, docs, cfg, faiss)["single"][0]["ppl"], dense, rtol=1e-5)


def test_a_model_without_memory_layers_has_one_ppl_for_every_size(tok):
    model = tiny_model(seed=4, mem_layers=())
    docs = random_documents(1, 400, seed=3)
    cfg = PerplexityConfig(memory_windows=(0, 1, 2), score_windows=1, num_documents=1, settings=("single",))
    points = run_perplexity(model, tok, docs, cfg)["single"]
    assert len({p["ppl"] for p in points}) == 1 and points[2]["memory_tokens"] == 2 * W


def test_a_longer_local_window_reads_the_memory_span_as_local_context(tok):
    """A context-extension baseline (no memory layers, window 3W) evaluated at W: memory size m puts the m·W tokens
    (distractors interleaved: (D+1)·m·W) before each scored window into its local window, up to 2W; the scored
    tokens are the same as for a memory model."""
    model = tiny_model(seed=5, mem_layers=(), max_position_embeddings=3 * W)
    docs = random_documents(3, 500, seed=6)
    cfg = PerplexityConfig(memory_windows=(0, 1, 2, 3), score_windows=1, num_documents=2, distractors=1, window=W)
    found = run_perplexity(model, tok, docs, cfg)
    spans, _ = document_spans(docs, tok, 4 * W + 1, 2)
    labels = spans[:, 3 * W + 1 :]
    for m, point in enumerate(found["single"]):
        local = min(m, 2) * W
        logits = model(spans[:, 3 * W - local : 4 * W]).logits[:, local:]
        assert point["local_context_tokens"] == local and point["scored_tokens"] == 2 * W
        np.testing.assert_allclose(point["ppl"], math.exp(token_nll(logits, labels).mean()), rtol=1e-5)
    stream = np.stack(
        [np.concatenate([spans[d, j * W : (j + 1) * W] for j in range(4) for d in o]) for o in [[1, 0], [0, 1]]]
    )
    for m, point in enumerate(found["distractors"]):
        local = min(2 * m, 2) * W
        logits = model(stream[:, 8 * W - W - local :]).logits[:, local:]
        assert point["local_context_tokens"] == local and point["memory_tokens"] == 2 * m * W
        np.testing.assert_allclose(point["ppl"], math.exp(token_nll(logits, labels).mean()), rtol=1e-5)
    assert found["single"][2]["ppl"] == found["single"][3]["ppl"] != found["single"][0]["ppl"]


def test_empty_or_short_documents_are_clear_errors(tok, tmp_path):
    with pytest.raises(ValueError, match="holds no documents with text"):
        document_spans([], tok, 10, 1)
    with pytest.raises(ValueError, match="holds no documents with text"):
        document_spans(["", ""], tok, 10, 1)
    with pytest.raises(ValueError, match=r"only 1 of 2 documents have the 65 tokens needed and 2 are needed"):
        document_spans(["short", random_documents(1, 200)[0]], tok, 65, 2)
    empty = tmp_path / "empty_texts.jsonl"
    empty.write_text("".join(json.dumps({"text": ""}) + "\n" for _ in range(3)))
    argv = ["eval.py", "--config", "configs/eval_perplexity.py", f"--config.source.path={empty}"]
    argv.append("--config.source.split=train")
    with pytest.raises(ValueError, match="holds no documents with text"):
        run_perplexity(tiny_model(), tok, ["", ""], PerplexityConfig(memory_windows=(0,), score_windows=1))
    with pytest.raises(ValueError, match=r"config.source '.*empty_texts.jsonl' \(split 'train'\) holds no documents"):
        evaluate(load_config(argv), [])  # before any checkpoint is loaded


def test_bad_settings_are_clear_errors(tok):
    model = tiny_model()
    docs = random_documents(2, 200)
    with pytest.raises(ValueError, match="leave config.memory.capacity at 0"):
        run_perplexity(model, tok, docs, PerplexityConfig(), MemoryConfig(capacity=128))
    with pytest.raises(ValueError, match="config.perplexity.window=128 exceeds the checkpoint's window 64"):
        run_perplexity(model, tok, docs, PerplexityConfig(window=128))
    with pytest.raises(ValueError, match="must be a non-empty subset of"):
        PerplexityConfig(settings=("multi",))
    with pytest.raises(ValueError, match="memory_windows must be sizes >= 0"):
        PerplexityConfig(memory_windows=(-1, 2))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['m'\] in config.perplexity"):
        PerplexityConfig.from_dict({"m": (1, 2)})
