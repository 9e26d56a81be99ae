"""Load a policy (or reference / critic base) and its processor from a local dir or a hub id.

Vision-language checkpoints (Qwen2.5-VL, Qwen2-VL, ...) load through
AutoModelForImageTextToText; text-only causal LMs through AutoModelForCausalLM. The caller
never has to know which: `load_policy` decides from the config.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16", "auto": "auto"}


def _torch_dtype(dtype: Any):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).replace("torch.", ""))
    if name is None:
        raise ValueError(f"dtype={dtype!r}: expected one of {sorted(_DTYPES)} or a torch.dtype")
    return name if name == "auto" else getattr(torch, name)


def is_multimodal_config(config) -> bool:
    """True when the architecture takes images (has a vision tower config or is registered as
    image-text-to-text)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return (getattr(config, "vision_config", None) is not None
            or config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def load_policy(path_or_hub_id: Union[str, Path], dtype: Any = "float32",
                trust_remote_code: bool = False, attn_implementation: str | None = "sdpa",
                **kwargs):
    """Load a causal (vision-)language model for training or scoring.

    path_or_hub_id: a local checkpoint directory or a Hugging Face hub id.
    dtype: "float32" | "bfloat16" | "float16" | "auto" | torch.dtype.
    attn_implementation: passed through ("sdpa" works on CPU and GPU; "flash_attention_2" on
        GPUs that have it). Extra kwargs go to `from_pretrained` (revision, device_map, ...).
    Returns the model in eval mode (the learner calls .train() itself).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    src = str(path_or_hub_id)
    config = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code)
    load_kwargs = dict(dtype=_torch_dtype(dtype), trust_remote_code=trust_remote_code, **kwargs)
    if attn_implementation is not None:
        load_kwargs["attn_implementation"] = attn_implementation
    if is_multimodal_config(config):
        model = AutoModelForImageTextToText.from_pretrained(src, **load_kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(src, **load_kwargs)
    model.eval()
    return model


def load_processor(path_or_hub_id: Union[str, Path], trust_remote_code: bool = False, **kwargs):
    """The processor for a multimodal checkpoint, or the tokenizer for a text-only one.

    Either way the result has `apply_chat_template`; use `get_tokenizer` for the tokenizer.
    A missing pad token is set to the EOS token (right padding is what `collate` expects).
    """
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    src = str(path_or_hub_id)
    config = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code)
    if is_multimodal_config(config):
        proc = AutoProcessor.from_pretrained(src, trust_remote_code=trust_remote_code, **kwargs)
    else:
        proc = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code, **kwargs)
    tok = get_tokenizer(proc)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return proc


def get_tokenizer(processor):
    """The tokenizer inside a processor (or the argument itself when it is a tokenizer)."""
    return getattr(processor, "tokenizer", processor)


def pad_token_id(processor) -> int:
    tok = get_tokenizer(processor)
    pid = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pid is None:
        raise ValueError("tokenizer has neither a pad nor an eos token")
    return int(pid)


def stop_token_ids(path_or_hub_id: Union[str, Path], processor=None) -> list[int]:
    """EOS ids from generation_config.json (may be several, e.g. <|im_end|> and
    <|endoftext|>) plus the tokenizer's eos; what a response's natural end looks like."""
    ids: list[int] = []
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(str(path_or_hub_id)).eos_token_id
        ids.extend(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    except OSError:
        pass  # no generation_config.json: the tokenizer's eos is all we have
    if processor is not None and get_tokenizer(processor).eos_token_id is not None:
        ids.append(get_tokenizer(processor).eos_token_id)
    return sorted(set(int(i) for i in ids))
