"""Prompt datasets: load JSONL / JSON / Parquet / saved HF `datasets`, validate every row.

Dataset schema (one row = one prompt; row indices are 0-based; in JSONL row i is line i+1,
blank lines counted)
------------------------------------------------------------------------------------------
  messages  list of {"role": str, "content": str | list[part]}, part = {"type": "text",
            "text": str} or {"type": "image"}. Image parts refer, in order, to the images.
     - or -
  prompt    str: the user's question (a list is read as `messages`, TRL's conversational form).
            Becomes one user turn; images go before the text.
            In either form, "<image>" inside text marks where an image goes (LLaVA/verl style);
            without any image marker all images are put first in the first user turn.
  images    list of images, each: a file path (relative to the dataset file's folder), encoded
            bytes (PNG/JPEG/...), a base64 string or data: URI, an HF Image value ({"bytes",
            "path"} or a PIL image).   - or -   image: one such value.   Optional.
  answer    str or number (stored as str; integral floats lose their ".0"). Optional.
  metadata  dict or JSON-object string, handed to reward functions. Optional.
  id        str or int: Prompt.uid (must be unique). Optional; default "<file stem>:<row>".
  Any other column is copied into metadata under its own name (unless metadata has that key),
  so reward functions can read e.g. a `solution` column.

Demonstrations (supervised fine-tuning, `rlsys sft`: load_prompts(..., demonstrations=True)):
each row also carries its target response, Prompt.response, taken from
  response  str: the demonstrated assistant reply to the prompt above.   - or -
  messages  ending with an assistant turn: that turn is the target (text only) and the turns
            before it are the prompt.
A row with neither (or both) is a bad row (field `response`); an empty response too.

Preference pairs (reward-model training, `rlsys train-rm`: load_prompts(..., pairs=True)): each
row is a prompt as above plus
  chosen    str: the preferred response (non-empty).
  rejected  str: the other response (non-empty).
  margin    number (int or float, finite): how much more `chosen` is preferred. Optional,
            default 0.
A row missing `chosen` or `rejected`, with an empty one or one that is not a string, or a
margin that is not a finite number (a bool is not a number), is a bad row naming that field.
LoadResult.pairs then holds one rlsys.protocol.PreferencePair per good row (LoadResult.prompts
their prompts, in the same order); the three columns do not go into metadata.

Formats, chosen by path: *.jsonl (one JSON object per line), *.json (a JSON array of rows,
else JSONL), *.parquet, or a directory written by `datasets.Dataset.save_to_disk` (a
DatasetDict needs `split`, unless it holds one split).

Validation: a row with invalid JSON, a missing image file, corrupt image bytes, invalid
base64, an empty prompt, a prompt over `max_prompt_tokens`, a duplicate id, a column of the
wrong type, (demonstrations) a missing or empty response, or (pairs) a bad chosen/rejected/margin raises DataError("<file>: line <n>: <field>: <reason>") (JSONL: the 1-based line;
Parquet, JSON arrays and HF datasets: "row <i>", 0-based), or with on_bad_row="skip" is logged
(logging.warning, same message), counted and returned in LoadResult.skipped.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from rlsys.data.errors import DataError
from rlsys.data.readers import is_jsonl, read_rows
from rlsys.data.media import (
    DEFAULT_FACTOR, DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, MediaCache, to_media_item,
)
from rlsys.data.templates import (
    build_messages, count_image_parts, prompt_text, text_to_parts, with_system_prompt,
)
from rlsys.protocol import PreferencePair, Prompt

logger = logging.getLogger(__name__)

SCHEMA_COLUMNS = ("messages", "prompt", "images", "image", "answer", "metadata", "id")
PAIR_COLUMNS = ("chosen", "rejected", "margin")


@dataclass
class SkippedRow:
    """A row left out in skip mode: where it is (DataError.where: file, line or row, field)
    and why."""

    row: int
    reason: str
    field: Optional[str] = None
    line: Optional[int] = None  # JSONL only: the 1-based line
    where: str = ""

    @property
    def message(self) -> str:
        """The full DataError text, as logged."""
        return f"{self.where}: {self.reason}"


@dataclass
class LoadResult:
    """What load_prompts returns: the good rows as Prompts, the skipped rows, and the cache
    holding each distinct image once (pass it to the next load to dedupe across files)."""

    prompts: list[Prompt]
    skipped: list[SkippedRow]
    source: str = ""
    num_rows: int = 0  # rows read, good and skipped
    media: MediaCache = field(default_factory=MediaCache)
    pairs: list[PreferencePair] = field(default_factory=list)  # pairs=True: one per good row

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def skip_count(self) -> int:
        """Rows left out with on_bad_row="skip" (their reasons: `skipped`)."""
        return len(self.skipped)


@dataclass
class _Ctx:
    """What row conversion needs besides the row itself."""

    stem: str
    base_dir: Path
    cache: MediaCache
    system_prompt: Optional[str]
    min_pixels: int
    max_pixels: int
    factor: int
    max_prompt_tokens: Optional[int] = None
    count_tokens: Optional[Callable[[Prompt], int]] = None
    demonstrations: bool = False
    pairs: bool = False


# ---- one row -> Prompt -------------------------------------------------------------------------

def _expect(value: Any, types: Any, field_name: str, expected: str) -> Any:
    if not isinstance(value, types):
        raise DataError(f"expected {expected}, got {type(value).__name__}", field=field_name)
    return value


def _answer(value: Any) -> Optional[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None  # pandas/Arrow spell a missing answer as null or NaN
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(_expect(value, (str, int, float), "answer", "a string or number"))


def _metadata(value: Any) -> dict:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON string ({e.msg})", field="metadata") from e
    return dict(_expect(value, dict, "metadata", "a dict or a JSON object string"))


def _image_sources(raw: dict) -> list[tuple[str, Any]]:
    many, one = raw.get("images"), raw.get("image")
    if many is not None and one is not None:
        raise DataError("both 'image' and 'images' are set; use one", field="image")
    if one is not None:
        return [("image", one)]
    if many is None:
        return []
    _expect(many, (list, tuple), "images", "a list of images")
    for j, v in enumerate(many):
        if v is None:
            raise DataError("image is null", field=f"images[{j}]")
    return [(f"images[{j}]", v) for j, v in enumerate(many)]


def _check_part(part: Any, where: str) -> dict:
    _expect(part, dict, where, "a content part dict")
    kind = part.get("type")
    if kind == "image":  # the image itself lives in the images column, not in the part
        return {"type": "image"}
    if kind == "text":
        return {"type": "text", "text": _expect(part.get("text"), str, f"{where}.text", "a string")}
    raise DataError(f"unknown content part type {kind!r} (expected 'text' or 'image')", field=where)


def _user_messages(raw: dict, n_images: int) -> tuple[str, list[dict]]:
    """(field name, validated messages) from the `messages` or `prompt` column."""
    msgs = raw.get("messages")
    if msgs is None and isinstance(raw.get("prompt"), list):
        msgs, name = raw["prompt"], "prompt"
    else:
        name = "messages"
    if msgs is None:
        if "prompt" not in raw or raw["prompt"] is None:
            raise DataError("row has neither 'messages' nor 'prompt'", field="prompt")
        text = _expect(raw["prompt"], str, "prompt", "a string or a list of messages")
        return "prompt", build_messages(text, n_images, system_prompt=None)
    _expect(msgs, (list, tuple), name, "a list of messages")
    out = []
    for k, m in enumerate(msgs):
        where = f"{name}[{k}]"
        _expect(m, dict, where, "a message dict")
        role = _expect(m.get("role"), str, f"{where}.role", "a string")
        content = m.get("content")
        if isinstance(content, str):
            parts_or_text: Any = text_to_parts(content, 0) if "<image>" in content else content
        else:
            _expect(content, (list, tuple), f"{where}.content", "a string or a list of parts")
            parts_or_text = [_check_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]
        out.append({"role": role, "content": parts_or_text})
    return name, out


def _place_images(messages: list[dict], n_images: int, name: str) -> list[dict]:
    """Put image parts first in the first user turn if the row marks none; check the count."""
    marked = count_image_parts(messages)
    if marked == 0 and n_images:
        for m in messages:
            if m["role"] == "user":
                text = m["content"]
                m["content"] = text_to_parts(text, n_images) if isinstance(text, str) else \
                    [{"type": "image"}] * n_images + list(text)
                marked = n_images
                break
    if marked != n_images:
        raise DataError(f"{marked} image placeholders but {n_images} images", field=name)
    return messages


def _demonstration(raw: dict, name: str, messages: list[dict]) -> tuple[list[dict], str]:
    """(prompt messages, target response) of a demonstration row: the `response` column, or
    the final assistant turn of `messages` (then dropped from the prompt)."""
    column = raw.get("response")
    if isinstance(column, float) and math.isnan(column):
        column = None  # pandas/Arrow spell a missing value as null or NaN
    trailing = bool(messages) and messages[-1]["role"] == "assistant"
    if column is not None:
        if trailing:
            raise DataError(f"both a 'response' column and a final assistant turn in '{name}'; use one",
                            field="response")
        return messages, _nonempty(_expect(column, str, "response", "a string"), "response")
    if not trailing:
        raise DataError(f"no target response: a demonstration row needs a 'response' column or '{name}' "
                        "ending with an assistant turn", field="response")
    where = f"{name}[{len(messages) - 1}].content"
    content = messages[-1]["content"]
    if not isinstance(content, str):
        if any(part["type"] == "image" for part in content):
            raise DataError("an image in the demonstrated assistant turn (the target must be text)", field=where)
        content = "".join(part["text"] for part in content)
    return messages[:-1], _nonempty(content, where)


def _nonempty(text: str, field_name: str) -> str:
    if not text.strip():
        raise DataError("empty response", field=field_name)
    return text


def _pair_fields(raw: dict) -> tuple[str, str, float]:
    """(chosen, rejected, margin) of a preference-pair row, checked before the prompt (cheap)."""
    texts = []
    for name in ("chosen", "rejected"):
        value = raw.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise DataError(f"missing: a preference pair row needs '{name}'", field=name)
        texts.append(_nonempty(_expect(value, str, name, "a string"), name))
    margin = raw.get("margin")
    if margin is None or (isinstance(margin, float) and math.isnan(margin)):
        return texts[0], texts[1], 0.0
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise DataError(f"expected a finite number, got {margin!r}", field="margin")
    return texts[0], texts[1], float(margin)


def _row_to_pair(raw: Any, i: int, ctx: _Ctx) -> PreferencePair:
    if not isinstance(raw, dict):
        raise DataError(f"expected a JSON object / record, got {type(raw).__name__}")
    chosen, rejected, margin = _pair_fields(raw)
    return PreferencePair(_row_to_prompt(raw, i, ctx), chosen, rejected, margin)


def _row_to_prompt(raw: Any, i: int, ctx: _Ctx) -> Prompt:
    if not isinstance(raw, dict):
        raise DataError(f"expected a JSON object / record, got {type(raw).__name__}")
    uid = raw.get("id")
    uid = f"{ctx.stem}:{i}" if uid is None or uid == "" else str(
        _expect(uid, (str, int), "id", "a string or integer"))
    answer, metadata = _answer(raw.get("answer")), _metadata(raw.get("metadata"))
    sources = _image_sources(raw)
    name, messages = _user_messages(raw, len(sources))
    response = None
    if ctx.demonstrations:
        messages, response = _demonstration(raw, name, messages)
    if not prompt_text(messages, include_system=False).strip():
        raise DataError("empty prompt (no text outside the system turn)", field=name)
    messages = with_system_prompt(_place_images(messages, len(sources), name), ctx.system_prompt)
    images = []
    for where, src in sources:  # decoded last: the expensive part, after the cheap checks
        try:
            images.append(to_media_item(src, min_pixels=ctx.min_pixels, max_pixels=ctx.max_pixels,
                                        factor=ctx.factor, base_dir=ctx.base_dir, cache=ctx.cache))
        except DataError as e:
            raise e.located(field=where) from e
    for key, value in raw.items():  # extra columns reach reward functions via metadata
        if key not in SCHEMA_COLUMNS and not isinstance(value, (bytes, bytearray)) and \
                not (ctx.demonstrations and key == "response") and not (ctx.pairs and key in PAIR_COLUMNS):
            metadata.setdefault(key, value)
    prompt = Prompt(uid=uid, messages=messages, images=images, answer=answer, metadata=metadata,
                    response=response)
    if ctx.max_prompt_tokens is not None:
        n = int((ctx.count_tokens or approx_prompt_tokens)(prompt))
        if n > ctx.max_prompt_tokens:
            limit = ctx.max_prompt_tokens
            raise DataError(f"prompt has {n} tokens, over max_prompt_tokens={limit}", field=name)
    return prompt


def approx_prompt_tokens(prompt: Prompt, factor: int = DEFAULT_FACTOR) -> int:
    """Rough token count when no tokenizer is given: words and punctuation of all turns, plus
    one token per factor x factor image patch (Qwen2.5-VL's visual-token count)."""
    text_tokens = len(re.findall(r"\w+|[^\w\s]", prompt_text(prompt)))
    return text_tokens + sum(im.width * im.height // (factor * factor) for im in prompt.images)


# ---- public entry points -----------------------------------------------------------------------

def load_prompts(
    path: Union[str, os.PathLike],
    *,
    on_bad_row: str = "error",
    max_prompt_tokens: Optional[int] = None,
    count_tokens: Optional[Callable[[Prompt], int]] = None,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    factor: int = DEFAULT_FACTOR,
    system_prompt: Optional[str] = None,
    split: Optional[str] = None,
    cache: Optional[MediaCache] = None,
    demonstrations: bool = False,
    pairs: bool = False,
) -> LoadResult:
    """Load and validate a prompt dataset (schema: module docstring).

    on_bad_row:    "error" raises the first bad row's DataError; "skip" logs, counts and
                   returns them in LoadResult.skipped.
    count_tokens:  called with the built Prompt (images already resized, so a counter can add
                   visual tokens); default `approx_prompt_tokens`. Used only with max_prompt_tokens.
    system_prompt: added as the system turn of rows that have none (None: add nothing; pass
                   templates.R1_SYSTEM_PROMPT for R1-style training).
    cache:         share one MediaCache across loads (e.g. train and test) to dedupe across them.
    demonstrations: SFT rows: each Prompt gets its target in `response` (schema: module
                   docstring); a row without one is a bad row.
    pairs:         preference pairs (schema: module docstring): LoadResult.pairs gets one
                   PreferencePair per good row.
    """
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if demonstrations and pairs:
        raise ValueError("load_prompts: demonstrations and pairs are different schemas; ask for one")
    src = str(path)
    p = Path(path)
    ctx = _Ctx(stem=p.stem if p.is_file() else p.name, base_dir=p.parent if p.is_file() else p,
               cache=cache if cache is not None else MediaCache(), system_prompt=system_prompt,
               min_pixels=min_pixels, max_pixels=max_pixels, factor=factor,
               max_prompt_tokens=max_prompt_tokens,
               count_tokens=count_tokens or (lambda pr: approx_prompt_tokens(pr, factor)),
               demonstrations=demonstrations, pairs=pairs)
    result = LoadResult(prompts=[], skipped=[], source=src, media=ctx.cache)
    lines = is_jsonl(p)
    first_row_of: dict[str, int] = {}
    for i, raw in read_rows(path, split):
        result.num_rows += 1
        try:
            if isinstance(raw, DataError):
                raise raw
            pair = _row_to_pair(raw, i, ctx) if pairs else None
            prompt = pair.prompt if pair is not None else _row_to_prompt(raw, i, ctx)
            if prompt.uid in first_row_of:
                first = first_row_of[prompt.uid]
                first = f"line {first + 1}" if lines else f"row {first}"
                raise DataError(f"duplicate id '{prompt.uid}' (first at {first})", field="id")
        except DataError as e:
            err = e.located(source=src, row=i, line=i + 1 if lines else None)
            if on_bad_row == "error":
                raise err from e
            logger.warning("skipping bad row: %s", err)
            result.skipped.append(SkippedRow(i, err.reason, err.field, err.line, err.where))
            continue
        first_row_of[prompt.uid] = i
        result.prompts.append(prompt)
        if pair is not None:
            result.pairs.append(pair)
    if result.skipped:
        logger.warning("%s: skipped %d of %d rows", src, len(result.skipped), result.num_rows)
    return result


def rows_to_parquet(rows: list[dict], path: Union[str, os.PathLike]) -> Path:
    """Write rows {id, prompt, images: [bytes], answer, metadata: dict} as schema Parquet.

    metadata is stored as a JSON string: per-row dicts of different shapes cannot share one
    Arrow struct type.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("prompt", pa.string()),
                        ("images", pa.list_(pa.binary())), ("answer", pa.string()),
                        ("metadata", pa.string())])
    columns = {
        "id": [None if r.get("id") is None else str(r["id"]) for r in rows],
        "prompt": [r["prompt"] for r in rows],
        "images": [list(r.get("images") or []) for r in rows],
        "answer": [None if r.get("answer") is None else str(r["answer"]) for r in rows],
        "metadata": [json.dumps(r.get("metadata") or {}, sort_keys=True) for r in rows],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path)
    return path
