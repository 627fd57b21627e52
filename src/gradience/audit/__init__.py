"""LoRA adapter audit: exact factored spectra, rank suggestions, UDR, compression.

The core never imports torch: safetensors adapters (fp32/fp16/bf16) are parsed directly.
"""

from .adapter_config import AdapterConfig, load_adapter_config
from .core import AuditResult, audit_adapter, open_adapter
from .rows import AuditLayer
from .spectrum import factored_svd, singular_values

__all__ = [
    "AdapterConfig",
    "AuditLayer",
    "AuditResult",
    "audit_adapter",
    "factored_svd",
    "load_adapter_config",
    "open_adapter",
    "singular_values",
]
