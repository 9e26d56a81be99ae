"""Preference pairs through the dataset loader (rlsys/data/datasets.py, pairs=True): the prompt
schema plus chosen / rejected / margin; bad rows fail naming file, line and field, or are skipped
and counted."""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from rlsys.data import DataError
from rlsys.data.datasets import load_prompts
from rlsys.protocol import PreferencePair


def _png(path, color=(200, 30, 30)):
    buf = io.BytesIO()
    Image.new("RGB", (56, 56), color).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


GOOD = [
    {"id": "a", "prompt": "How many red squares?", "images": ["red.png"], "answer": "1",
     "chosen": "<answer>1</answer>", "rejected": "<answer>3</answer>", "margin": 2},
    {"id": "b", "prompt": "Say hi.", "chosen": "hi", "rejected": "no", "source": "x"},
]


def _write(tmp_path, rows):
    _png(tmp_path / "red.png")
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_good_pairs_load_with_image_and_default_margin(tmp_path):
    res = load_prompts(_write(tmp_path, GOOD), pairs=True)
    assert [type(p) for p in res.pairs] == [PreferencePair, PreferencePair]
    a, b = res.pairs
    assert (a.chosen, a.rejected, a.margin) == ("<answer>1</answer>", "<answer>3</answer>", 2.0)
    assert len(a.prompt.images) == 1 and a.prompt.images[0].png is not None and a.prompt.answer == "1"
    assert b.margin == 0.0 and b.prompt.images == []
    assert [p.uid for p in res.prompts] == ["a", "b"] and res.prompts[0] is a.prompt
    # The pair columns are the pair's, not metadata; other extra columns still reach metadata.
    assert not {"chosen", "rejected", "margin"} & set(a.prompt.metadata) and b.prompt.metadata == {"source": "x"}


@pytest.mark.parametrize("row, field, reason", [
    ({"prompt": "q", "rejected": "r"}, "chosen", "missing"),
    ({"prompt": "q", "chosen": "c", "rejected": "  "}, "rejected", "empty response"),
    ({"prompt": "q", "chosen": "c", "rejected": "r", "margin": "big"}, "margin", "expected a finite number"),
    ({"prompt": "q", "chosen": "c", "rejected": "r", "margin": True}, "margin", "expected a finite number"),
    ({"prompt": "q", "chosen": 3, "rejected": "r"}, "chosen", "expected a string"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, field, reason):
    path = _write(tmp_path, GOOD + [row])
    with pytest.raises(DataError) as err:
        load_prompts(path, pairs=True)
    assert str(err.value).startswith(f"{path}: line 3: {field}: {reason}")


def test_skip_mode_counts_the_bad_rows(tmp_path):
    bad = [{"prompt": "q1", "rejected": "r"}, {"prompt": "q2", "chosen": "c", "rejected": ""},
           {"prompt": "q3", "chosen": "c", "rejected": "r", "margin": "x"}]
    res = load_prompts(_write(tmp_path, GOOD + bad), pairs=True, on_bad_row="skip")
    assert [p.prompt.uid for p in res.pairs] == ["a", "b"]
    assert res.skip_count == 3 and res.num_rows == 5
    assert [(s.line, s.field) for s in res.skipped] == [(3, "chosen"), (4, "rejected"), (5, "margin")]


def test_pairs_and_demonstrations_are_exclusive(tmp_path):
    with pytest.raises(ValueError, match="ask for one"):
        load_prompts(_write(tmp_path, GOOD), pairs=True, demonstrations=True)
