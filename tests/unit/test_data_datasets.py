"""rlsys.data.datasets: loading JSONL / Parquet / HF directories, and every bad-row class."""
import base64
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rlsys.data import (
    R1_SYSTEM_PROMPT, DataError, MediaCache, SkippedRow, demonstration, load_prompts,
    prompt_text, write_synthetic_dataset,
)


def _png(color=(200, 30, 30), size=(56, 56)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()
URI = "data:image/png;base64," + base64.b64encode(PNG).decode()
TRUNCATED_URI = "data:image/png;base64," + base64.b64encode(PNG[:60]).decode()
Q = "How many red shapes are there?"
BOTH = ("jsonl", "parquet")


def _user(*parts):
    return [{"role": "user", "content": list(parts)}]


IMG, TXT = {"type": "image"}, {"type": "text", "text": Q}


def _words(prompt):
    return len(prompt_text(prompt).split())


@dataclass
class Case:
    good: dict
    bad: dict
    field: str
    reason: str
    formats: tuple = BOTH
    kwargs: dict = field(default_factory=dict)


def _q(**kw):
    return {"prompt": Q, "images": ["img.png"], "answer": "1", **kw}


CASES = {
    "missing_image": Case(_q(), _q(images=["nope.png"]), "images[0]",
                          "image file 'nope.png' not found"),
    "corrupt_image_file": Case(_q(), _q(images=["corrupt.png"]), "images[0]",
                               "corrupt or unreadable image bytes"),
    "corrupt_image_bytes": Case(_q(images=[PNG]), _q(images=[PNG[:60]]), "images[0]",
                                "corrupt or unreadable image bytes", formats=("parquet",)),
    "corrupt_image_base64": Case(_q(images=[URI]), _q(images=[TRUNCATED_URI]), "images[0]",
                                 "corrupt or unreadable image bytes"),
    "bad_base64": Case(_q(images=[URI]), _q(images=["data:image/png;base64,%%%not-base64%%%"]),
                       "images[0]", "invalid base64"),
    "empty_prompt": Case(_q(), _q(prompt="   "), "prompt", "empty prompt"),
    "empty_messages": Case({"messages": _user(IMG, TXT), "images": ["img.png"]},
                           {"messages": _user(IMG), "images": ["img.png"]},
                           "messages", "empty prompt"),
    "too_long_prompt": Case(_q(), _q(prompt="word " * 50), "prompt",
                            "prompt has 50 tokens, over max_prompt_tokens=20",
                            kwargs={"max_prompt_tokens": 20, "count_tokens": _words}),
    "answer_is_list": Case(_q(answer=None), _q(answer=["1", "2"]), "answer",
                           "expected a string or number, got list"),
    "messages_not_list": Case({"prompt": Q, "messages": None}, {"prompt": None, "messages": "hi"},
                              "messages", "expected a list of messages, got str"),
    "images_not_list": Case(_q(images=None), _q(images="img.png"), "images",
                            "expected a list of images, got str"),
    "metadata_wrong_type": Case(_q(metadata=None), _q(metadata=5), "metadata",
                                "expected a dict or a JSON object string, got int"),
    "image_count_mismatch": Case({"messages": _user(IMG, TXT), "images": ["img.png"]},
                                 {"messages": _user(IMG, IMG, TXT), "images": ["img.png"]},
                                 "messages", "2 image placeholders but 1 images"),
    "duplicate_id": Case(_q(id="a"), _q(id="a"), "id", "duplicate id 'a' (first at {first})"),
}
# Row 1 of a JSONL file is its line 2; a Parquet row is named by its 0-based index.
WHERE = {"jsonl": ("line 2", "line 1"), "parquet": ("row 1", "row 0")}
PARAMS = [(c, f) for c in sorted(CASES) for f in CASES[c].formats]


def _write(tmp_path, fmt, rows, name="train"):
    (tmp_path / "img.png").write_bytes(PNG)
    (tmp_path / "corrupt.png").write_bytes(b"not really a png" * 8)
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


@pytest.mark.parametrize("case, fmt", PARAMS)
def test_bad_row_raises_naming_file_row_field_reason(case, fmt, tmp_path):
    c = CASES[case]
    path = _write(tmp_path, fmt, [c.good, c.bad])
    with pytest.raises(DataError) as exc:
        load_prompts(path, **c.kwargs)
    msg = str(exc.value)
    where, first = WHERE[fmt]
    assert msg == f"{path}: {where}: {c.field}: {exc.value.reason}" and "\n" not in msg
    assert c.reason.format(first=first) in exc.value.reason
    assert (exc.value.row, exc.value.field, exc.value.line) == (1, c.field, 2 if fmt == "jsonl" else None)


@pytest.mark.parametrize("case, fmt", PARAMS)
def test_skip_mode_counts_logs_and_keeps_good_rows(case, fmt, tmp_path, caplog):
    c = CASES[case]
    third = c.good | {"id": "b"} if "id" in c.good else c.good  # ids must stay unique
    path = _write(tmp_path, fmt, [c.good, c.bad, third])
    with caplog.at_level(logging.WARNING, logger="rlsys.data.datasets"):
        res = load_prompts(path, on_bad_row="skip", **c.kwargs)
    assert len(res.prompts) == 2 and res.num_rows == 3
    [skip] = res.skipped
    where, first = WHERE[fmt]
    assert isinstance(skip, SkippedRow) and (skip.row, skip.field) == (1, c.field) and res.skip_count == 1
    assert skip.where == f"{path}: {where}: {c.field}" and c.reason.format(first=first) in skip.reason
    assert skip.message == f"{skip.where}: {skip.reason}" and skip.message in caplog.text


def test_bad_lines_are_named_by_line_number_and_column(tmp_path):
    (tmp_path / "img.png").write_bytes(PNG)
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"prompt": "q"}),  # line 1
             "",  # line 2: blank, not a row, still counted
             '{"prompt": "r", "answer": [1}',  # line 3: "}" is character 29 of the line
             json.dumps(_q(images=["img.png", "gone.png"])),  # line 4
             "   ",  # line 5
             '{"prompt": "\xff"}']  # line 6: not UTF-8
    path.write_bytes("\n".join(lines[:5]).encode() + b'\n{"prompt": "\xff"}\n')
    with pytest.raises(DataError) as exc:
        load_prompts(path)
    # The column counts from the start of line 3, not from the start of the file (offset 45).
    assert str(exc.value) == f"{path}: line 3: invalid JSON (Expecting ',' delimiter at column 29)"
    res = load_prompts(path, on_bad_row="skip")
    assert [p.uid for p in res.prompts] == ["d:0"] and res.num_rows == 4 and res.skip_count == 3
    assert [(s.where, s.reason) for s in res.skipped] == [
        (f"{path}: line 3", "invalid JSON (Expecting ',' delimiter at column 29)"),
        (f"{path}: line 4: images[1]", "image file 'gone.png' not found"),
        (f"{path}: line 6", "not UTF-8 text (invalid start byte at byte 13 of the line)"),
    ]
    assert [(s.row, s.line, s.field) for s in res.skipped] == [(2, 3, None), (3, 4, "images[1]"), (5, 6, None)]


def test_json_array_errors_name_the_line_in_the_file(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[\n  {"prompt": "q"},\n  {"prompt": }\n]\n')
    with pytest.raises(DataError) as exc:
        load_prompts(path)
    assert str(exc.value) == f"{path}: line 3: invalid JSON (Expecting value at column 14)"
    path.write_text(json.dumps([{"prompt": "q"}, {"prompt": "  "}]))  # one line: rows by index
    with pytest.raises(DataError) as exc:
        load_prompts(path)
    assert str(exc.value) == f"{path}: row 1: prompt: empty prompt (no text outside the system turn)"


def test_skip_mode_with_every_bad_row_class(tmp_path):
    rows = [_q()] + [CASES[c].bad for c in sorted(CASES) if "jsonl" in CASES[c].formats
                     and c != "duplicate_id"] + [_q()]
    path = _write(tmp_path, "jsonl", rows)
    res = load_prompts(path, on_bad_row="skip", max_prompt_tokens=20, count_tokens=_words)
    assert len(res.prompts) == 2 and res.skip_count == len(rows) - 2
    assert [s.line for s in res.skipped] == list(range(2, len(rows)))
    assert [p.uid for p in res.prompts] == ["train:0", f"train:{len(rows) - 1}"]


def test_parquet_round_trip_of_synthetic_dataset(tmp_path):
    train, test = write_synthetic_dataset(tmp_path, train_size=12, test_size=4, seed=0)
    table = pq.read_table(train).to_pylist()
    res = load_prompts(train, system_prompt=R1_SYSTEM_PROMPT)
    assert not res.skipped and len(res) == 12
    for p, row in zip(res.prompts, table):
        assert p.uid == row["id"] and p.answer == row["answer"]
        assert p.messages[0] == {"role": "system", "content": R1_SYSTEM_PROMPT}
        assert p.messages[1]["content"] == [IMG, {"type": "text", "text": row["prompt"]}]
        # 56x56 is already on the 28-px grid: the pixels pass through unchanged.
        assert p.images[0].png == row["images"][0]
        assert p.images[0].sha256 == hashlib.sha256(row["images"][0]).hexdigest()
        assert p.metadata["family"] == json.loads(row["metadata"])["family"]
        assert demonstration(p).endswith(f"<answer>{p.answer}</answer>")
    assert len(load_prompts(test).prompts) == 4


def test_jsonl_sources_placeholders_and_defaults(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(PNG)
    rows = [
        {"prompt": Q, "images": ["imgs/a.png"], "answer": 3.0, "solution": "three"},
        {"prompt": "Compare <image> with <image>.",
         "images": [URI, base64.b64encode(PNG).decode()]},
        {"messages": [{"role": "system", "content": "S"},
                      {"role": "user", "content": "<image> " + Q}],
         "image": "imgs/a.png", "metadata": '{"k": 1}', "id": 7},
        {"prompt": "text only", "answer": "x"},
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[1:]))
    res = load_prompts(path, system_prompt="SYS")
    a, b, c, d = res.prompts
    assert [p.uid for p in res.prompts] == ["mixed:0", "mixed:2", "7", "mixed:4"]  # blank line 2
    assert a.answer == "3" and a.metadata == {"solution": "three"}
    assert b.messages[1]["content"] == [{"type": "text", "text": "Compare"}, {"type": "image"},
                                        {"type": "text", "text": "with"}, {"type": "image"},
                                        {"type": "text", "text": "."}]
    assert c.messages[0] == {"role": "system", "content": "S"}  # the row's own system prompt
    assert c.messages[1]["content"] == [{"type": "image"}, {"type": "text", "text": Q}]
    assert c.metadata == {"k": 1}
    assert d.images == [] and d.messages[1]["content"] == [{"type": "text", "text": "text only"}]
    # Identical pixels from a path, a data URI and bare base64 are stored once.
    assert len(res.media) == 1
    assert a.images[0] is b.images[0] is b.images[1] is c.images[0]


def test_resize_budget_applied_at_load(tmp_path):
    (tmp_path / "big.png").write_bytes(_png(size=(500, 300)))
    path = _write(tmp_path, "jsonl", [_q(images=["big.png"])])
    img = load_prompts(path, max_pixels=64 * 28 * 28).prompts[0].images[0]
    assert img.width % 28 == 0 and img.height % 28 == 0 and img.width * img.height <= 64 * 28 * 28


def test_shared_cache_dedupes_across_files(tmp_path):
    cache = MediaCache()
    p1 = _write(tmp_path, "jsonl", [_q()], name="a")
    p2 = _write(tmp_path, "parquet", [_q(images=[PNG])], name="b")
    i1 = load_prompts(p1, cache=cache).prompts[0].images[0]
    i2 = load_prompts(p2, cache=cache).prompts[0].images[0]
    assert i1 is i2 and len(cache) == 1


def test_hf_saved_dataset_directory(tmp_path):
    import datasets as hf  # the test extra's: writes the directory rlsys reads with pyarrow
    features = hf.Features({"prompt": hf.Value("string"), "image": hf.Image(),
                            "answer": hf.Value("string")})
    ds = hf.Dataset.from_dict({"prompt": [Q, Q], "image": [{"bytes": PNG, "path": None}] * 2,
                               "answer": ["1", "2"]}, features=features)
    ds.save_to_disk(str(tmp_path / "single"))
    hf.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    res = load_prompts(tmp_path / "single")
    assert [p.answer for p in res.prompts] == ["1", "2"] and res.prompts[0].uid == "single:0"
    assert res.prompts[0].images[0].sha256 == hashlib.sha256(PNG).hexdigest()
    assert len(load_prompts(tmp_path / "dd", split="test").prompts) == 2
    with pytest.raises(DataError, match="split"):
        load_prompts(tmp_path / "dd")


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="dataset file not found"):
        load_prompts(tmp_path / "none.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported dataset format"):
        load_prompts(tmp_path / "x.csv")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not parquet")
    with pytest.raises(DataError, match="unreadable Parquet"):
        load_prompts(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="on_bad_row"):
        load_prompts(tmp_path / "x.csv", on_bad_row="ignore")


def test_default_token_counter_counts_image_tokens(tmp_path):
    path = _write(tmp_path, "jsonl", [_q()])
    # 7 words/punctuation + 4 visual tokens (56x56 / 28^2) = 11.
    assert len(load_prompts(path, max_prompt_tokens=11).prompts) == 1
    with pytest.raises(DataError, match="prompt has 11 tokens, over max_prompt_tokens=10"):
        load_prompts(path, max_prompt_tokens=10)


def test_json_array_file(tmp_path):
    (tmp_path / "img.png").write_bytes(PNG)
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([_q(), _q(answer=2)]))
    res = load_prompts(path)
    assert [p.answer for p in res.prompts] == ["1", "2"] and res.prompts[1].uid == "rows:1"
