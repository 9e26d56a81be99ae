"""Models: tiny Qwen2.5-VL builder, loading, multimodal log-probs, the vLLM engine wrapper.

Importing this package is cheap: submodules import torch/transformers/vllm only when used.

    from rlsys.models.tiny import build_tiny_model, ensure_tiny_model
    from rlsys.models.loading import load_policy, load_processor
    from rlsys.models.forward import render_prompt, image_inputs, collate, token_logprobs
    from rlsys.models.engine import VLLMEngine
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "build_tiny_model": "rlsys.models.tiny",
    "ensure_tiny_model": "rlsys.models.tiny",
    "SIZES": "rlsys.models.tiny",
    "load_policy": "rlsys.models.loading",
    "load_processor": "rlsys.models.loading",
    "render_prompt": "rlsys.models.forward",
    "image_inputs": "rlsys.models.forward",
    "collate": "rlsys.models.forward",
    "token_logprobs": "rlsys.models.forward",
    "VLLMEngine": "rlsys.models.engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rlsys.models' has no attribute {name!r}")
