"""Rows of a dataset file as (row number, raw value): JSONL / JSON arrays, Parquet, HF datasets
directories. Errors name the file and, for JSON, the line and column. rlsys/data/datasets.py
turns the rows into Prompts."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from rlsys.data.errors import DataError


def read_rows(
    path: Union[str, os.PathLike], split: Optional[str] = None
) -> Iterator[tuple[int, Any]]:
    """Yield (row index, row dict) — or (row index, DataError) for a row that cannot be parsed,
    so that skip mode can skip it. File-level problems raise DataError at once. In a JSONL file
    (`is_jsonl`) row i is line i+1."""
    p, src = Path(path), str(path)
    if p.is_dir():
        yield from _hf_rows(p, src, split)
    elif not p.exists():
        raise DataError("dataset file not found", source=src)
    elif p.suffix == ".parquet":
        yield from _parquet_rows(p, src)
    elif p.suffix in (".jsonl", ".json"):
        yield from _json_rows(p, src)
    else:
        raise DataError(f"unsupported dataset format '{p.suffix}'; expected .jsonl, .json, "
                        ".parquet or a directory saved by datasets.save_to_disk", source=src)


def is_jsonl(path: Union[str, os.PathLike]) -> bool:
    """True for a file read as JSONL (one row per line): *.jsonl, or *.json not holding an array."""
    p = Path(path)
    if p.suffix == ".jsonl":
        return True
    if p.suffix != ".json" or not p.is_file():
        return False
    with open(p, "rb") as f:
        return not f.read(4096).lstrip().startswith(b"[")


def _json_rows(p: Path, src: str) -> Iterator[tuple[int, Any]]:
    if not is_jsonl(p):
        try:
            rows = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:  # a JSON array is one document: its line and column
            raise DataError(f"invalid JSON ({e.msg} at column {e.colno})", source=src, line=e.lineno) from e
        except UnicodeDecodeError as e:
            raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", source=src) from e
        yield from enumerate(rows)
        return
    # Streamed (JSONL with base64 images can be big), as bytes: each line is decoded and parsed
    # on its own, so a bad one is one bad row whose positions count from its own start.
    with open(p, "rb") as f:
        for i, raw in enumerate(f):
            if not raw.strip():
                continue  # blank lines are not rows, but still count: row i = line i+1
            try:
                yield i, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield i, DataError(f"not UTF-8 text ({e.reason} at byte {e.start + 1} of the line)")
            except json.JSONDecodeError as e:
                yield i, DataError(f"invalid JSON ({e.msg} at column {e.colno})")


def _parquet_rows(p: Path, src: str) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(p).iter_batches(batch_size=256)
        i = 0
        for batch in batches:  # batches keep memory flat for big image datasets
            for row in batch.to_pylist():
                yield i, row
                i += 1
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"unreadable Parquet file ({e})", source=src) from e


def _hf_rows(p: Path, src: str, split: Optional[str]) -> Iterator[tuple[int, Any]]:
    try:
        import datasets as hf
    except ImportError as e:  # pragma: no cover - datasets is a dependency of the env
        raise DataError("a dataset directory needs the `datasets` package", source=src) from e
    try:
        ds = hf.load_from_disk(str(p))
    except Exception as e:  # datasets raises FileNotFoundError / ValueError variants
        raise DataError(f"not a dataset saved by datasets.save_to_disk ({e})", source=src) from e
    if isinstance(ds, hf.DatasetDict):
        if split is None and len(ds) == 1:
            split = next(iter(ds))
        if split not in ds:
            raise DataError(f"split {split!r} not in {sorted(ds)}; pass split=", source=src)
        ds = ds[split]
    yield from enumerate(ds)


