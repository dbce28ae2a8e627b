"""Hugging Face import and export: `export_hf` writes a `LlamaForCausalLM` / `LongLlamaForCausalLM` folder
(config.json + safetensors) without torch; `import_hf` reads LLaMA, OpenLLaMA and LongLLaMA folders back.

Command line: `python -m focused.convert export|import ...` (see `focused/convert/__main__.py`).
"""

from focused.convert.export import export_hf, hf_state_dict
from focused.convert.hf import config_from_hf, hf_config_dict, tensor_specs
from focused.convert.load import import_hf, read_hf_config

__all__ = [
    "config_from_hf",
    "export_hf",
    "hf_config_dict",
    "hf_state_dict",
    "import_hf",
    "read_hf_config",
    "tensor_specs",
]
