"""Data: prompt datasets (JSONL / Parquet / saved HF datasets), images, synthetic tasks, templates.

The public entry points are re-exported here; see each module's docstring for details:
  media      decode_image, smart_resize, to_media_item, MediaCache
  templates  R1_SYSTEM_PROMPT, build_messages, format_response, prompt_text
  synthetic  generate_task_rows, write_synthetic_dataset, demonstration, Difficulty, FAMILIES
  datasets   load_prompts, LoadResult, SkippedRow, rows_to_parquet (and the schema)
  readers    read_rows (rows of a JSONL / JSON / Parquet / HF datasets file)
  errors     DataError
"""
from __future__ import annotations

from rlsys.data.errors import DataError
from rlsys.data.media import MediaCache, decode_image, smart_resize, to_media_item
from rlsys.data.templates import (
    R1_SYSTEM_PROMPT,
    build_messages,
    format_response,
    prompt_text,
)
from rlsys.data.synthetic import (
    FAMILIES,
    Difficulty,
    demonstration,
    generate_task_rows,
    write_synthetic_dataset,
)
from rlsys.data.datasets import (
    LoadResult,
    SkippedRow,
    approx_prompt_tokens,
    load_prompts,
    rows_to_parquet,
)
from rlsys.data.readers import read_rows

__all__ = [
    "DataError",
    "MediaCache",
    "decode_image",
    "smart_resize",
    "to_media_item",
    "R1_SYSTEM_PROMPT",
    "build_messages",
    "format_response",
    "prompt_text",
    "FAMILIES",
    "Difficulty",
    "demonstration",
    "generate_task_rows",
    "write_synthetic_dataset",
    "LoadResult",
    "SkippedRow",
    "approx_prompt_tokens",
    "load_prompts",
    "read_rows",
    "rows_to_parquet",
]
