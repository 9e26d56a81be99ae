"""Build a tiny Qwen2.5-VL checkpoint from nothing (no hub), deterministically from a seed.

The directory it writes is an ordinary Hugging Face checkpoint (config, safetensors weights,
tokenizer, processor, chat template), so transformers (`from_pretrained`) and vLLM (`LLM(model=
dir)`) load it exactly like a real Qwen2.5-VL model. Tests and the embedded default run use it.

    python -m rlsys.models.tiny OUT_DIR [--size tiny|small] [--seed 0]
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any, Union

from rlsys.models.tokenizer import build_hf_tokenizer, special_token_ids

# Image budget of the tiny processor: 56x56 .. 112x112 pixels, i.e. 4..16 visual tokens per
# image after the 2x2 merge (patch 14). Small enough for CPU tests, big enough to be non-trivial.
PATCH_SIZE = 14
MERGE_SIZE = 2
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112

# Named sizes. Text head_dim = hidden/heads must be one vLLM's CPU attention supports
# (32, 64, 80, ...); mrope_section sums to head_dim/2 (temporal, height, width split as Qwen).
SIZES: dict[str, dict[str, Any]] = {
    # ~1M parameters: unit/integration tests and the embedded default.
    "tiny": dict(
        max_vocab=1024,
        # At the usual 0.02 the 64-wide model never learned to read the image (single-shape
        # colour stayed at chance after 400 SFT steps: attention from the answer to the 4 image
        # tokens stays uniform); at 0.1 it reaches 99% in 100 steps.
        initializer_range=0.1,
        text=dict(hidden_size=64, intermediate_size=384, num_hidden_layers=6,
                  num_attention_heads=2, num_key_value_heads=1, mrope_section=[4, 6, 6]),
        vision=dict(hidden_size=64, intermediate_size=128, depth=4, num_heads=2,
                    fullatt_block_indexes=[1, 3]),
    ),
    # ~25M parameters: benchmarks and the longer CPU runs.
    "small": dict(
        max_vocab=1024,
        text=dict(hidden_size=384, intermediate_size=1152, num_hidden_layers=9,
                  num_attention_heads=6, num_key_value_heads=2, mrope_section=[8, 12, 12]),
        vision=dict(hidden_size=256, intermediate_size=768, depth=8, num_heads=4,
                    fullatt_block_indexes=[3, 7]),
    ),
}


def tiny_config(tokenizer, size: str = "tiny"):
    """A Qwen2_5_VLConfig whose special-token ids are the tokenizer's and whose vision tower
    projects straight into the text hidden size (out_hidden_size == hidden_size)."""
    from transformers import Qwen2_5_VLConfig

    if size not in SIZES:
        raise ValueError(f"size={size!r}: expected one of {sorted(SIZES)}")
    spec = SIZES[size]
    ids = special_token_ids(tokenizer)
    text = dict(spec["text"])
    mrope = text.pop("mrope_section")
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    assert sum(mrope) * 2 == head_dim, (size, mrope, head_dim)
    text_config = dict(
        text,
        vocab_size=len(tokenizer),  # exactly the tokenizer: no sampled id without a token
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
        use_sliding_window=False,
    )
    vision_config = dict(
        spec["vision"],
        hidden_act="silu",
        in_channels=3,
        patch_size=PATCH_SIZE,
        spatial_merge_size=MERGE_SIZE,
        temporal_patch_size=2,
        tokens_per_second=2,
        window_size=112,
        out_hidden_size=text["hidden_size"],
    )
    cfg = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    # Top-level copies: several readers (vLLM, generation utils) look for them at the root.
    cfg.bos_token_id = ids["<|endoftext|>"]
    cfg.eos_token_id = ids["<|im_end|>"]
    cfg.pad_token_id = ids["<|endoftext|>"]
    cfg.vocab_size = len(tokenizer)
    cfg.hidden_size = text["hidden_size"]
    init = spec.get("initializer_range", 0.02)
    cfg.initializer_range = cfg.text_config.initializer_range = cfg.vision_config.initializer_range = init
    return cfg


def tiny_processor(tokenizer):
    """Qwen2_5_VLProcessor with the tiny pixel budget (also used for video, unused so far)."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE, temporal_patch_size=2,
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE, temporal_patch_size=2, cap_pixels_per_frame=True,
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer,
        video_processor=video_processor, chat_template=tokenizer.chat_template,
    )


def build_tiny_model(out_dir: Union[str, Path], size: str = "tiny", seed: int = 0) -> Path:
    """Write a randomly initialised Qwen2.5-VL checkpoint to `out_dir`; returns the path.

    Same (size, seed) -> byte-identical files; a different seed -> different weights (the
    tokenizer depends only on its corpus). Weights are float32.
    """
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_hf_tokenizer(vocab_size=SIZES[size]["max_vocab"] if size in SIZES else 1024)
    config = tiny_config(tokenizer, size)
    ids = special_token_ids(tokenizer)

    # Seed a private generator state: initialisation must not depend on (or disturb) the
    # caller's global RNG, and must not change with the number of threads.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )
    model.save_pretrained(out, safe_serialization=True)
    tiny_processor(tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)  # also at top level for tokenizer-only readers
    (out / "rlsys_tiny.json").write_text(json.dumps(
        {"size": size, "seed": seed, "num_parameters": count_parameters(model)}, indent=1))
    return out


def default_cache_dir() -> Path:
    """Where `ensure_tiny_model` keeps built checkpoints ($RLSYS_CACHE or ~/.cache/rlsys)."""
    import os

    return Path(os.environ.get("RLSYS_CACHE", Path.home() / ".cache" / "rlsys")) / "models"


def ensure_tiny_model(size: str = "tiny", seed: int = 0,
                      cache_dir: Union[str, Path, None] = None) -> Path:
    """Return a cached build of (size, seed), building it once if missing.

    The cache key includes a hash of the builder's source and the transformers version, so an
    edited builder never serves a stale checkpoint. Safe under concurrent callers (separate
    pytest runs, Ray actors): each builds into a private temp dir and renames it into place.
    """
    import os
    import shutil
    import tempfile

    import transformers

    from rlsys.models import tokenizer as _tok

    src = Path(__file__).read_bytes() + Path(_tok.__file__).read_bytes()
    key = hashlib.sha256(src + transformers.__version__.encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / f"{size}-seed{seed}-{key}"
    if (final / "rlsys_tiny.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        build_tiny_model(tmp, size, seed)
        try:
            os.rename(tmp, final)  # atomic; loses the race harmlessly if another caller won
        except OSError:
            if not (final / "rlsys_tiny.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def count_parameters(model) -> int:
    """Unique parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def directory_digest(path: Union[str, Path]) -> dict[str, str]:
    """sha256 of every file in a checkpoint directory (for determinism checks)."""
    root = Path(path)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--size", default="tiny", choices=sorted(SIZES))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    path = build_tiny_model(a.out_dir, a.size, a.seed)
    print(json.loads((path / "rlsys_tiny.json").read_text()))


if __name__ == "__main__":
    main()
