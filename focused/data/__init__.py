"""Data pipeline: document sources (HF ``datasets``), tokenizers, and document-aware CrossBatch packing."""

from focused.data.packing import (
    DocumentPacker,
    PackingConfig,
    TextEncoder,
)
from focused.data.sources import (
    DEMO_SOURCES,
    DataSourceConfig,
    Documents,
    ShuffledOrder,
    StreamingDocuments,
    StreamOrder,
    document_order,
    load_documents,
    wrap_dataset,
)
from focused.data.tokenizer import Tokenizer, load_tokenizer
from focused.data.windows import Batch, eval_windows, split_microbatches

__all__ = [
    "DEMO_SOURCES",
    "Batch",
    "DataSourceConfig",
    "DocumentPacker",
    "Documents",
    "PackingConfig",
    "ShuffledOrder",
    "StreamOrder",
    "StreamingDocuments",
    "TextEncoder",
    "Tokenizer",
    "document_order",
    "eval_windows",
    "load_documents",
    "load_tokenizer",
    "split_microbatches",
    "wrap_dataset",
]
