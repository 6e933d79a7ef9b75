"""automodel: fine-tune and pre-train Hugging Face models from a YAML config.

Importing this package stays light (no torch, no transformers): the model classes below load on first access, so
YAML targets such as `automodel.NeMoAutoModelForCausalLM.from_pretrained` resolve.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; imported on first attribute access.
_LAZY = {
    "NeMoAutoModelForCausalLM": "automodel.components._transformers",
    "NeMoAutoModelForImageTextToText": "automodel.components._transformers",
    "NeMoAutoProcessor": "automodel.components._transformers",
    "NeMoAutoTokenizer": "automodel.components._transformers",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later accesses skip this hook
        return value
    raise AttributeError(f"module 'automodel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
