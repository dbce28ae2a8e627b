"""KnnIndexConfig validation and the FAISS indexes it builds (focused/memory/index_config.py)."""

import faiss
import numpy as np
import pytest

from focused.memory.index_config import INDEX_TYPES, KnnIndexConfig, empty_index, flat_contents, trained_ivf


def test_bad_configs_raise_one_line_errors():
    with pytest.raises(ValueError, match=r"unknown index_type 'ivfpq'.*'flat', 'flat_fp16', 'ivf_flat'"):
        KnnIndexConfig(index_type="ivfpq")
    assert set(INDEX_TYPES) == {"flat", "flat_fp16", "ivf_flat", "ivf_sq8", "ivf_fp16", "hnsw"}
    with pytest.raises(ValueError, match="unknown memory capacity policy"):
        KnnIndexConfig(policy="keep")
    with pytest.raises(ValueError, match="unknown payload_dtype"):
        KnnIndexConfig(payload_dtype="int8")
    with pytest.raises(ValueError, match="HNSW lacks"):
        KnnIndexConfig(index_type="hnsw", policy="drop_oldest")
    with pytest.raises(ValueError, match="smaller than nlist"):
        KnnIndexConfig(index_type="ivf_flat", nlist=64, train_size=10)
    with pytest.raises(ValueError, match="use_gpu"):
        KnnIndexConfig(use_gpu="yes")
    with pytest.raises(ValueError, match="capacity must be positive, got 0"):
        KnnIndexConfig(capacity=0)
    with pytest.raises(ValueError, match="num_threads must be positive"):
        KnnIndexConfig(num_threads=0)
    with pytest.raises(ValueError, match="set use_gpu=False"):
        KnnIndexConfig(index_type="flat_fp16", use_gpu=True)


@pytest.mark.parametrize("index_type", ["flat", "flat_fp16", "hnsw", "ivf_flat"])
def test_empty_index_returns_the_given_ids(index_type):
    rng = np.random.default_rng(11)
    keys = rng.standard_normal((50, 8)).astype(np.float32)
    ids = np.arange(100, 150, dtype=np.int64)
    index = empty_index(KnnIndexConfig(index_type=index_type, nlist=4, train_size=16), 8)
    index.add_with_ids(keys, ids)
    found = index.search(keys[:5], 1)[1][:, 0]  # a key is its own best match (up to ties, absent with random keys)
    np.testing.assert_array_equal(found, ids[np.argmax(keys[:5] @ keys.T, axis=1)])


def test_flat_contents_and_trained_ivf_keep_every_key_and_id():
    rng = np.random.default_rng(12)
    keys = rng.standard_normal((64, 8)).astype(np.float32)
    ids = rng.permutation(1000)[:64].astype(np.int64)
    config = KnnIndexConfig(index_type="ivf_flat", nlist=4, nprobe=4, train_size=32)
    buffer = empty_index(config, 8)
    buffer.add_with_ids(keys, ids)
    got_keys, got_ids = flat_contents(buffer)
    np.testing.assert_array_equal(got_keys, keys)
    np.testing.assert_array_equal(got_ids, ids)
    ivf = trained_ivf(config, got_keys, got_ids)
    assert ivf.is_trained and ivf.ntotal == 64
    exact = ids[np.argmax(keys @ keys.T, axis=1)]
    np.testing.assert_array_equal(ivf.search(keys, 1, params=faiss.SearchParametersIVF(nprobe=4))[1][:, 0], exact)
