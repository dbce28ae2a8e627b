"""focused: the Focused Transformer (FoT / LongLLaMA) in JAX + Flax NNX."""

from focused.memory.core import MemoryBlock, memory_attention
from focused.model.config import LlamaConfig
from focused.model.llama import CausalLMOutput, LlamaForCausalLM

__all__ = ["CausalLMOutput", "LlamaConfig", "LlamaForCausalLM", "MemoryBlock", "memory_attention"]
__version__ = "0.1.0"
