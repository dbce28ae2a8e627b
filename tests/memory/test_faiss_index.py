"""The host kNN memory against numpy brute force: exact flat retrieval, IVF/HNSW recall, eviction, save/load."""

import dataclasses
import warnings

import faiss
import numpy as np
import pytest

from focused.memory.faiss_index import KnnMemoryStore
from focused.memory.index_config import KnnIndexConfig

LAYERS, BATCH, KV_HEADS, HEADS, DIM = 2, 2, 2, 4, 16


def random_windows(rng, n_windows, seq, layers=LAYERS, batch=BATCH, kv_heads=KV_HEADS, dim=DIM, pad=0.25):
    """Windows of random keys/values `[layers, batch, seq, kv_heads, dim]` and valid `[batch, seq]` with padding."""
    shape = (layers, batch, seq, kv_heads, dim)
    return [
        (
            rng.standard_normal(shape).astype(np.float32),
            rng.standard_normal(shape).astype(np.float32),
            rng.random((batch, seq)) > pad,
        )
        for _ in range(n_windows)
    ]


def brute_force(windows, queries, k, first_id=0):
    """numpy top-k over the valid keys of all windows (ids counted from the first window, `first_id` evicts).

    Returns ids `[layers, batch, seq, heads, k]` (-1 padded) and scores (-inf padded), decreasing score.
    """
    keys = np.concatenate([w[0] for w in windows], axis=2)  # [L, B, n, kvh, d]
    valid = np.concatenate([w[2] for w in windows], axis=1)  # [B, n]
    layers, batch, seq, heads, _ = queries.shape
    group = heads // keys.shape[3]
    ids = np.full((layers, batch, seq, heads, k), -1, np.int64)
    scores = np.full(ids.shape, -np.inf, np.float32)
    for l in range(layers):
        for b in range(batch):
            kept = np.flatnonzero(valid[b])
            kept = kept[kept >= first_id]
            for h in range(heads):
                s = queries[l, b, :, h] @ keys[l, b, kept, h // group].T  # [seq, n]
                order = np.argsort(-s, axis=1)[:, :k]
                ids[l, b, :, h, : order.shape[1]] = kept[order]
                scores[l, b, :, h, : order.shape[1]] = np.take_along_axis(s, order, 1)
    return ids, scores


def fill(config, windows, **shape):
    store = KnnMemoryStore(shape.get("layers", LAYERS), shape.get("batch", BATCH), KV_HEADS, DIM, config)
    for keys, values, valid in windows:
        store.add(keys, values, valid)
    return store


def test_flat_equals_numpy_brute_force():
    rng = np.random.default_rng(0)
    windows = random_windows(rng, 3, 24)
    store = fill(KnnIndexConfig(capacity=128), windows)
    queries = rng.standard_normal((LAYERS, BATCH, 5, HEADS, DIM)).astype(np.float32)
    for k in (8, 80):  # 80 is more than the ~54 valid entries per row: padded with mask False
        keys, values, mask, ids = store.search(queries, k)
        ref_ids, ref_scores = brute_force(windows, queries, k)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(mask, ref_ids >= 0)
        scores = np.einsum("lbshd,lbshkd->lbshk", queries, keys)
        np.testing.assert_allclose(scores[mask], ref_scores[mask], rtol=1e-5, atol=1e-5)
        all_values = np.concatenate([w[1] for w in windows], axis=2)
        for l, b, s, h, j in zip(*np.nonzero(mask), strict=True):
            np.testing.assert_array_equal(values[l, b, s, h, j], all_values[l, b, ids[l, b, s, h, j], h // 2])
        assert not keys[~mask].any() and not values[~mask].any()
    valid = np.concatenate([w[2] for w in windows], axis=1)
    assert all(valid[b, ids[:, b][mask[:, b]]].all() for b in range(BATCH))  # padding is never returned
    assert store.size == 72 and store.search_calls == 2


def test_flat_fp16_is_exact_search_over_float16_rounded_keys():
    rng = np.random.default_rng(5)
    windows = random_windows(rng, 3, 24)
    rounded = [(k.astype(np.float16).astype(np.float32), v, m) for k, v, m in windows]
    store = fill(KnnIndexConfig(index_type="flat_fp16", capacity=128), windows)
    queries = rng.standard_normal((LAYERS, BATCH, 5, HEADS, DIM)).astype(np.float32)
    ids = store.search(queries, 8)[3]
    ref_ids, ref_scores = brute_force(rounded, queries, 8)
    # the same neighbours as numpy over the rounded keys, up to ties closer than FAISS's float16 decoding error
    agree = ids == ref_ids
    assert agree.mean() > 0.99
    for l, b, s, h, j in zip(*np.nonzero(~agree), strict=True):
        assert abs(ref_scores[l, b, s, h, j] - ref_scores[l, b, s, h, max(j - 1, 0)]) < 1e-2


def clustered(rng, n, dim, centers, noise=0.8):
    return (centers[rng.integers(0, len(centers), n)] + noise * rng.standard_normal((n, dim))).astype(np.float32)


@pytest.mark.parametrize("index_type", ["ivf_flat", "ivf_sq8", "ivf_fp16", "hnsw"])
def test_approximate_recall_on_clustered_keys(index_type, tmp_path):
    rng = np.random.default_rng(1)
    dim, n, window = 32, 4000, 500
    centers = rng.standard_normal((64, dim)).astype(np.float32)
    config = KnnIndexConfig(index_type=index_type, nlist=32, nprobe=4, train_size=1500, ef_search=16, capacity=n)
    store = KnnMemoryStore(1, 1, 1, dim, config)
    queries = clustered(rng, 64, dim, centers)[None, None, :, None]
    for start in range(0, n, window):
        keys = clustered(rng, window, dim, centers)[None, None, :, None]
        store.add(keys, rng.standard_normal(keys.shape), np.ones((1, window), bool))
        if start + window < config.train_size and index_type != "hnsw":  # still the exact training buffer
            assert store.recall_at_k(queries, 16) == 1.0
    recall = store.recall_at_k(queries, 16)
    print(f"{index_type}: recall@16 = {recall:.3f}")
    assert recall >= 0.8
    if index_type == "ivf_flat":  # reloaded with nprobe = nlist it scans every list: exact
        store.save(tmp_path / "ivf")
        exact = KnnMemoryStore(1, 1, 1, dim, dataclasses.replace(config, nprobe=config.nlist))
        exact.load(tmp_path / "ivf")
        assert recall < 1.0 and exact.recall_at_k(queries, 16) == 1.0


@pytest.mark.parametrize("index_type", ["flat", "flat_fp16", "ivf_fp16"])
def test_drop_oldest_keeps_the_last_capacity_tokens(index_type):
    rng = np.random.default_rng(2)
    windows = random_windows(rng, 7, 20)
    config = KnnIndexConfig(index_type=index_type, nlist=4, nprobe=4, train_size=40, capacity=50, policy="drop_oldest")
    store = KnnMemoryStore(LAYERS, BATCH, KV_HEADS, DIM, config)
    queries = rng.standard_normal((LAYERS, BATCH, 3, HEADS, DIM)).astype(np.float32)
    for i, window in enumerate(windows):
        store.add(*window)
        written = 20 * (i + 1)
        assert store.size == min(written, 50) and store.oldest == max(0, written - 50)
        ids = store.search(queries, 64)[3]
        ref = brute_force(windows[: i + 1], queries, 64, first_id=store.oldest)[0]
        if index_type == "flat":
            np.testing.assert_array_equal(ids, ref)
        else:  # approximate once trained: only the set of live ids is checked
            assert ids.max() < written and ids[ids >= 0].min() >= store.oldest
    long_window = random_windows(rng, 1, 130)[0]  # longer than the capacity: only its tail is kept
    store.add(*long_window)
    ids = store.search(queries, 64)[3]
    assert store.oldest == store.written - 50 and ids[ids >= 0].min() >= store.oldest
    if index_type == "flat":
        np.testing.assert_array_equal(ids, brute_force([*windows, long_window], queries, 64, first_id=store.oldest)[0])


def test_save_load_roundtrip_and_config_mismatch(tmp_path):
    rng = np.random.default_rng(3)
    windows = random_windows(rng, 3, 30)
    queries = rng.standard_normal((LAYERS, BATCH, 4, HEADS, DIM)).astype(np.float32)
    for index_type in ("flat", "ivf_fp16", "hnsw"):
        config = KnnIndexConfig(index_type=index_type, nlist=4, nprobe=2, train_size=40, capacity=128)
        store = fill(config, windows[:2])  # ivf: some indexes trained (>= 40 valid), some maybe not
        path = tmp_path / index_type
        store.save(path)
        loaded = KnnMemoryStore(LAYERS, BATCH, KV_HEADS, DIM, config)
        loaded.load(path)
        for got, want in zip(loaded.search(queries, 12), store.search(queries, 12), strict=True):
            np.testing.assert_array_equal(got, want)
        store.add(*windows[2])  # a loaded store keeps growing like the original
        loaded.add(*windows[2])
        np.testing.assert_array_equal(loaded.search(queries, 12)[3], store.search(queries, 12)[3])
    other = KnnMemoryStore(LAYERS, BATCH, KV_HEADS, DIM, KnnIndexConfig(index_type="flat", capacity=128))
    with pytest.raises(ValueError, match=r"config\.index_type='hnsw'"):
        other.load(tmp_path / "hnsw")
    with pytest.raises(ValueError, match=r"config\.capacity=128"):
        KnnMemoryStore(LAYERS, BATCH, KV_HEADS, DIM, KnnIndexConfig(capacity=64)).load(tmp_path / "flat")
    with pytest.raises(ValueError, match="head_dim=16"):
        KnnMemoryStore(LAYERS, BATCH, KV_HEADS, 8, KnnIndexConfig(capacity=128)).load(tmp_path / "flat")
    with pytest.raises(ValueError, match="no saved kNN memory"):
        other.load(tmp_path / "missing")
    relaxed = KnnMemoryStore(LAYERS, BATCH, KV_HEADS, DIM, KnnIndexConfig(capacity=128, ef_search=7, use_gpu=False))
    relaxed.load(tmp_path / "flat")  # search-time knobs may differ
    assert relaxed.written == 60


def test_memmap_payload_matches_ram(tmp_path):
    rng = np.random.default_rng(4)
    windows = random_windows(rng, 2, 20)
    queries = rng.standard_normal((LAYERS, BATCH, 3, HEADS, DIM)).astype(np.float32)
    ram = fill(KnnIndexConfig(capacity=64, payload_dtype="float16"), windows)
    mapped = fill(KnnIndexConfig(capacity=64, payload_dtype="float16", values_path=str(tmp_path / "mm")), windows)
    assert isinstance(mapped.values, np.memmap) and mapped.values.nbytes == ram.values.nbytes
    for got, want in zip(mapped.search(queries, 10), ram.search(queries, 10), strict=True):
        np.testing.assert_array_equal(got, want)
    assert mapped.search(queries, 10)[1].dtype == np.float16
    # a second store on the same directory maps files of its own: the first one's payload is untouched
    before = np.array(mapped.values)
    fill(KnnIndexConfig(capacity=64, payload_dtype="float16", values_path=str(tmp_path / "mm")), windows[:1])
    np.testing.assert_array_equal(np.asarray(mapped.values), before)
    assert not list((tmp_path / "mm").iterdir())  # nothing left in the directory


def test_bad_inputs_raise_clear_errors():
    rng = np.random.default_rng(5)
    store = KnnMemoryStore(LAYERS, BATCH, KV_HEADS, DIM, KnnIndexConfig(capacity=40))
    keys, values, valid = random_windows(rng, 1, 30)[0]
    store.add(keys, values, valid)
    with pytest.raises(ValueError, match=r"capacity 40 tokens exceeded \(30 stored \+ 30 new\)"):
        store.add(keys, values, valid)
    with pytest.raises(ValueError, match="must both be"):
        store.add(keys[:, :, :, :1], values, valid)
    with pytest.raises(ValueError, match="valid has shape"):
        store.add(keys[:, :, :5], values[:, :, :5], valid)
    with pytest.raises(ValueError, match="3 query heads cannot share 2"):
        store.search(np.zeros((LAYERS, BATCH, 1, 3, DIM), np.float32), 4)
    with pytest.raises(ValueError, match="queries have shape"):
        store.search(np.zeros((LAYERS, 1, 1, 4, DIM), np.float32), 4)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        store.search(np.zeros((LAYERS, BATCH, 1, 4, DIM), np.float32), 0)
    assert store.written == 30  # failed adds change nothing


def test_gpu_request_without_faiss_gpu_falls_back_with_one_warning():
    has_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = KnnMemoryStore(LAYERS, BATCH, KV_HEADS, DIM, KnnIndexConfig(capacity=32, use_gpu=True))
    assert len([w for w in caught if "GPU" in str(w.message)]) == (0 if has_gpu else 1)
    rng = np.random.default_rng(6)
    windows = random_windows(rng, 1, 16)
    store.add(*windows[0])
    queries = rng.standard_normal((LAYERS, BATCH, 2, HEADS, DIM)).astype(np.float32)
    np.testing.assert_array_equal(store.search(queries, 4)[3], brute_force(windows, queries, 4)[0])
