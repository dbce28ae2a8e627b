"""Config files, command-line overrides and their errors."""

import runpy

import pytest

from focused.config import ConfigError, load_config
from focused.model.config import LlamaConfig


def test_overrides_apply_with_types():
    config = load_config(
        ["train.py", "--config", "configs/tiny.py", "--config.train.steps=7", "--config.model.mem_layers=(1,3)"]
    )
    assert config.train.steps == 7
    assert tuple(config.model.mem_layers) == (1, 3)
    model = LlamaConfig.from_dict(config.model.to_dict())
    assert model.mem_layers == (1, 3) and model.hidden_size == 256


def test_unknown_key_names_it_and_lists_valid_ones():
    with pytest.raises(ConfigError) as info:
        load_config(["train.py", "--config", "configs/tiny.py", "--config.model.hiden_size=3"])
    message = str(info.value)
    assert "model.hiden_size" in message and "hidden_size" in message and "\n" not in message


def test_bad_value_and_missing_file():
    with pytest.raises(ConfigError, match="bad config override"):
        load_config(["train.py", "--config", "configs/tiny.py", "--config.train.learning_rate=fast"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(["train.py", "--config", "configs/nope.py"])
    with pytest.raises(ConfigError, match=r"no config given: .*--help lists the configs"):
        load_config(["train.py"])


def test_model_config_rejects_unknown_and_inconsistent_fields():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \[.n_layers.\] in the model config"):
        LlamaConfig.from_dict({"hidden_size": 8, "n_layers": 2})
    with pytest.raises(ValueError, match="mem_layers"):
        LlamaConfig(num_hidden_layers=2, mem_layers=(5,))
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        LlamaConfig(hidden_size=96, num_attention_heads=6, num_key_value_heads=4)


def test_parameter_count_of_longllama_3b():
    config = runpy.run_path("configs/longllama_3b.py")["get_config"]()
    model = LlamaConfig.from_dict(config.model.to_dict())
    assert model.head_size == 100 and model.mem_layers == (6, 12, 18)
    assert abs(model.num_parameters() - 3.43e9) < 0.01e9


def test_model_config_with_rope_scaling_is_hashable():
    """The config rides in the model graph, a static jit argument: it must hash even with a rope_scaling dict."""
    a = LlamaConfig(rope_scaling={"rope_type": "linear", "factor": 4.0})
    assert hash(a) == hash(a.replace()) and a == a.replace()
    assert hash(a) != hash(a.replace(rope_scaling={"rope_type": "linear", "factor": 2.0}))
