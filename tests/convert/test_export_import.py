"""Export → import round trips (bit-identical), config fields, sharding, bf16/fp16, and the error paths."""

import json
import os
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import focused.convert.export as export_module
from focused.convert import config_from_hf, export_hf, hf_config_dict, import_hf
from focused.training.checkpoint import params_dict
from tests.convert.helpers import random_model, tiny_config

TOKENIZER = Path(__file__).parents[2] / "focused" / "data" / "assets" / "tokenizer"


def leaves(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(params_dict(model))]


def assert_params_equal(a, b) -> None:
    for x, y in zip(leaves(a), leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def assert_no_leftovers(parent: Path, *keep: str) -> None:
    assert sorted(p.name for p in parent.iterdir()) == sorted(keep)


@pytest.fixture(scope="module")
def model():
    config = tiny_config(
        mem_layers=(0, 2),
        mem_dtype="bfloat16",
        mem_attention_grouping=(2, 16),
        last_context_length=24,
        rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32},
    )
    return random_model(config, seed=7)


def test_round_trip_is_bit_identical(tmp_path, model):
    export_hf(model, model.config, tmp_path / "hf")
    back = import_hf(tmp_path / "hf")
    assert back.config == model.config
    assert_params_equal(back, model)
    assert_no_leftovers(tmp_path, "hf")


def test_longllama_and_llama_config_fields(tmp_path, model):
    export_hf(model, model.config, tmp_path / "long", tokenizer_dir=TOKENIZER)
    cfg = json.loads((tmp_path / "long" / "config.json").read_text())
    assert cfg["model_type"] == "longllama" and cfg["architectures"] == ["LongLlamaForCausalLM"]
    assert cfg["mem_layers"] == [0, 2] and cfg["mem_dtype"] == "bfloat16" and cfg["mem_positionals"] is True
    assert cfg["last_context_length"] == 24 and cfg["mem_attention_grouping"] == [2, 16]
    assert cfg["torch_attention"] is False and cfg["gradient_checkpoint_every_ith"] == 1
    assert cfg["hidden_act"] == "silu" and cfg["num_key_value_heads"] == 2 and cfg["head_dim"] == 12
    assert cfg["torch_dtype"] == "float32" and cfg["tie_word_embeddings"] is False
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 0)
    assert cfg["rope_scaling"] == {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32}
    generation = json.loads((tmp_path / "long" / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (1, 2, 0)
    for path in TOKENIZER.iterdir():
        assert (tmp_path / "long" / path.name).read_bytes() == path.read_bytes()

    plain = hf_config_dict(model.config, format="llama")
    assert plain["model_type"] == "llama" and plain["architectures"] == ["LlamaForCausalLM"]
    assert not {"mem_layers", "mem_dtype", "last_context_length", "torch_attention"} & set(plain)
    assert plain["attention_bias"] is False and plain["mlp_bias"] is False


def test_key_norm_is_written_only_when_set_and_read_back(tmp_path):
    normed = random_model(tiny_config(mem_key_norm=True), seed=8)
    export_hf(normed, normed.config, tmp_path / "normed")
    assert json.loads((tmp_path / "normed" / "config.json").read_text())["mem_key_norm"] is True
    assert import_hf(tmp_path / "normed").config.mem_key_norm is True
    assert "mem_key_norm" not in hf_config_dict(tiny_config())
    with pytest.raises(ValueError, match="format='longllama'"):
        hf_config_dict(normed.config, format="llama")


def test_sharded_export_round_trips(tmp_path, model):
    limit = 40_000
    export_hf(model, model.config, tmp_path / "hf", max_shard_size="40KB")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    shards = sorted(p for p in (tmp_path / "hf").iterdir() if p.suffix == ".safetensors")
    assert len(shards) > 3 and shards[0].name == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    stored = {}
    for shard in shards:
        tensors = load_file(shard)
        assert sum(t.nbytes for t in tensors.values()) <= limit or len(tensors) == 1
        stored.update(tensors)
    assert set(stored) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in stored.values())
    assert_params_equal(import_hf(tmp_path / "hf"), model)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_export_round_trips(tmp_path, model, dtype):
    export_hf(model, model.config, tmp_path / "hf", dtype=dtype)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == dtype
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), framework="flax") as f:
        assert {f.get_slice(n).get_dtype() for n in f.keys()} == {"BF16" if dtype == "bfloat16" else "F16"}  # noqa: SIM118
    half = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
    as_f32, as_half = import_hf(tmp_path / "hf"), import_hf(tmp_path / "hf", param_dtype=dtype)
    for original, x32, xh in zip(leaves(model), leaves(as_f32), leaves(as_half), strict=True):
        rounded = original.astype(half)
        assert x32.dtype == np.float32 and xh.dtype == half
        np.testing.assert_array_equal(x32, rounded.astype(np.float32))
        np.testing.assert_array_equal(xh, rounded)
    assert not np.array_equal(leaves(as_f32)[0], leaves(model)[0])  # the rounding did happen


def test_identical_reexport_is_a_no_op(tmp_path, model):
    export_hf(model, model.config, tmp_path / "hf")
    before = {p.name: os.stat(p).st_mtime_ns for p in (tmp_path / "hf").iterdir()}
    export_hf(model, model.config, tmp_path / "hf")
    assert {p.name: os.stat(p).st_mtime_ns for p in (tmp_path / "hf").iterdir()} == before
    assert_no_leftovers(tmp_path, "hf")
    # with an extra file (a dictionary task layout) too: the same file again is no difference, another one is
    task = tmp_path / "dictionary_task.json"
    task.write_text('{"key_len": 3}')
    export_hf(model, model.config, tmp_path / "extra", extra_files=[task])
    export_hf(model, model.config, tmp_path / "extra", extra_files=[task])
    task.write_text('{"key_len": 2}')
    with pytest.raises(FileExistsError, match="dictionary_task.json differ"):
        export_hf(model, model.config, tmp_path / "extra", extra_files=[task])


def test_different_checkpoint_is_refused_unless_overwrite(tmp_path, model):
    export_hf(model, model.config, tmp_path / "hf")
    old = snapshot(tmp_path / "hf")
    other = random_model(model.config, seed=8)  # same config, other weights: refused after comparing bytes
    renamed = random_model(model.config.replace(rope_theta=5e5), seed=7)  # other config: refused up front
    for candidate in (other, renamed):
        with pytest.raises(FileExistsError, match="different checkpoint") as error:
            export_hf(candidate, candidate.config, tmp_path / "hf")
        assert "\n" not in str(error.value) and "overwrite" in str(error.value)
        assert snapshot(tmp_path / "hf") == old
        assert_no_leftovers(tmp_path, "hf")
    export_hf(other, other.config, tmp_path / "hf", overwrite=True)
    assert_params_equal(import_hf(tmp_path / "hf"), other)
    assert_no_leftovers(tmp_path, "hf")


def test_unrelated_folder_is_refused(tmp_path, model):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        export_hf(model, model.config, tmp_path / "hf")
    assert snapshot(tmp_path / "hf") == {"notes.txt": b"mine"}


def test_failure_mid_write_leaves_nothing(tmp_path, model, monkeypatch):
    calls = []

    def failing_save(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(export_module, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export_hf(model, model.config, tmp_path / "new" / "hf", max_shard_size="40KB")
    assert_no_leftovers(tmp_path)  # neither the target, the staging folder nor the parent created for it


def test_params_not_matching_config_are_refused(tmp_path, model):
    with pytest.raises(ValueError, match=r"q_proj\.kernel has shape \(96, 96\) but the config expects \(96, 120\)"):
        export_hf(model, model.config.replace(num_attention_heads=8, head_dim=15), tmp_path / "hf")
    assert_no_leftovers(tmp_path)


def corrupt(folder: Path, name: str, value: np.ndarray | None) -> None:
    """Replaces (or, with None, deletes) one tensor of a single-file export."""
    tensors = load_file(folder / "model.safetensors")
    if value is None:
        del tensors[name]
    else:
        tensors[name] = value
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_tensor_shape_mismatch_names_the_tensor(tmp_path, model):
    export_hf(model, model.config, tmp_path / "hf")
    corrupt(
        tmp_path / "hf",
        "model.layers.2.self_attn.k_proj.weight",
        0.02 * np.random.default_rng(0).normal(size=(20, 96)).astype(np.float32),
    )
    with pytest.raises(ValueError) as error:
        import_hf(tmp_path / "hf")
    message = str(error.value)
    assert "model.layers.2.self_attn.k_proj.weight" in message and "(20, 96)" in message and "(24, 96)" in message
    assert "\n" not in message


def test_missing_and_unexpected_tensors_are_named(tmp_path, model):
    export_hf(model, model.config, tmp_path / "hf")
    corrupt(tmp_path / "hf", "model.layers.1.mlp.up_proj.weight", None)
    corrupt(
        tmp_path / "hf",
        "model.layers.1.mlp.extra.weight",
        1 + 0.1 * np.random.default_rng(1).normal(size=(3,)).astype(np.float32),
    )
    with pytest.raises(ValueError, match=r"missing model\.layers\.1\.mlp\.up_proj\.weight; unexpected model\.layers"):
        import_hf(tmp_path / "hf")


def test_missing_folder_config_or_weights(tmp_path, model):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        import_hf(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        import_hf(tmp_path / "empty")
    export_hf(model, model.config, tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"holds no model\.safetensors"):
        import_hf(tmp_path / "hf")
    with pytest.raises(FileNotFoundError, match="tokenizer directory"):
        export_hf(model, model.config, tmp_path / "other", tokenizer_dir=tmp_path / "absent")
    assert not (tmp_path / "other").exists()


def test_config_from_hf_reads_both_rope_layouts():
    base = hf_config_dict(tiny_config(), format="llama")
    legacy = {**base, "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 4.0}}
    current = {k: v for k, v in base.items() if k not in ("rope_theta", "rope_scaling")}
    current["rope_parameters"] = {"rope_type": "linear", "factor": 4.0, "rope_theta": 5e5}
    assert config_from_hf(legacy) == config_from_hf(current)
    assert config_from_hf(current).rope_scaling == {"rope_type": "linear", "factor": 4.0}
    openllama = {k: v for k, v in base.items() if k not in ("rope_theta", "rope_scaling", "head_dim")}
    assert config_from_hf(openllama).rope_theta == 10000.0 and config_from_hf(openllama).rope_scaling is None


def test_export_refuses_rope_keys_transformers_would_read_differently(tmp_path, model):
    config = model.config.replace(rope_scaling={**model.config.rope_scaling, "mscale": 0.7})
    with pytest.raises(ValueError, match=r"rope_scaling keys \['mscale'\]"):
        export_hf(model, config, tmp_path / "hf")
    assert_no_leftovers(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"model_type": "mistral"}, "model_type 'mistral'"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "RoPE type 'llama3'"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0, "mscale": 0.7}}, "mscale"),
        ({"hidden_size": None}, "lacks"),
    ],
)
def test_config_from_hf_rejects_what_it_cannot_compute(change, message):
    with pytest.raises(ValueError, match=message):
        config_from_hf({**hf_config_dict(tiny_config(), format="llama"), **change})
