"""Data: prompt datasets (JSONL / Parquet / saved HF datasets), images, synthetic tasks, templates.

The public entry points are re-exported here; see each module's docstring for details:
  media      decode_image, smart_resize, to_media_item, MediaCache
  templates  R1_SYSTEM_PROMPT, build_messages, format_response, prompt_text
  synthetic  generate_task_rows, write_synthetic_dataset, demonstration, Difficulty, FAMILIES
  datasets   load_prompts, LoadResult, SkippedRow, read_rows, rows_to_parquet (and the schema)
"""
from __future__ import annotations

from typing import Optional


class DataError(ValueError):
    """A bad dataset row, image or file.

    The message always names where the problem is and why, e.g.
    ``data/train.jsonl row 17 field 'images[0]': image file 'x.png' not found``.
    The parts are kept as attributes so callers (skip mode, logs) can use them separately.
    """

    def __init__(
        self,
        reason: str,
        *,
        source: Optional[str] = None,
        row: Optional[int] = None,
        field: Optional[str] = None,
    ):
        self.reason = reason
        self.source = source
        self.row = row
        self.field = field
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.source is not None:
            where.append(str(self.source))
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return f"{' '.join(where)}: {self.reason}" if where else self.reason

    def located(
        self, source: Optional[str] = None, row: Optional[int] = None, field: Optional[str] = None
    ) -> "DataError":
        """A copy with missing location parts filled in (inner helpers don't know the row)."""
        return DataError(
            self.reason,
            source=self.source if self.source is not None else source,
            row=self.row if self.row is not None else row,
            field=self.field if self.field is not None else field,
        )


# Imported after DataError so the submodules can `from rlsys.data import DataError`.
from rlsys.data.media import MediaCache, decode_image, smart_resize, to_media_item  # noqa: E402
from rlsys.data.templates import (  # noqa: E402
    R1_SYSTEM_PROMPT,
    build_messages,
    format_response,
    prompt_text,
)
from rlsys.data.synthetic import (  # noqa: E402
    FAMILIES,
    Difficulty,
    demonstration,
    generate_task_rows,
    write_synthetic_dataset,
)
from rlsys.data.datasets import (  # noqa: E402
    LoadResult,
    SkippedRow,
    approx_prompt_tokens,
    load_prompts,
    read_rows,
    rows_to_parquet,
)

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
