"""MESS networks, data and training.

Public names are re-exported lazily so that `import training.errors` (used by the CLI to map
errors) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FINAL_EXIT": "training.heads",
    "HeadSpec": "training.heads",
    "ExitSpec": "training.heads",
    "PositionInfo": "training.heads",
    "default_head_space": "training.heads",
    "parse_head_space": "training.heads",
    "MessNetwork": "training.network",
    "CascadeConfig": "training.network",
    "CascadeResult": "training.network",
    "ExitDecision": "training.policy",
    "ExitPolicy": "training.policy",
    "CascadeModule": "training.cascade",
    "build_cascade_module": "training.cascade",
    "confidence_map": "training.policy",
    "image_confidence": "training.policy",
    "Component": "training.flops",
    "build_network": "training.adapters",
    "list_architectures": "training.adapters",
    "describe_positions": "training.adapters",
    "build_traced_network": "training.adapters",
    "export_components": "training.onnx_components",
    "ComponentGraph": "training.onnx_components",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'training' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
