"""rlsys.data.synthetic: determinism, answers checked against the pixels, disjoint splits."""
import io
import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rlsys.data import (
    FAMILIES, Difficulty, demonstration, generate_task_rows, write_synthetic_dataset,
)
from rlsys.data.synthetic import BACKGROUND, CELL, DIGIT_FONT, DIGIT_RGB, DIGIT_SCALE, PALETTE

HARD = Difficulty(min_objects=0, max_objects=9, num_colors=5, image_size=84, max_digit=9,
                  max_digits=4)


def _pixels(row) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(row["images"][0])).convert("RGB"))


def _cell_objects(px: np.ndarray):
    """Read the scene back from the pixels alone: per non-empty cell, its colour, the bbox of
    its ink and the fill ratio of that bbox (shape signature)."""
    found = []
    grid = px.shape[0] // CELL
    for r in range(grid):
        for c in range(grid):
            cell = px[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL]
            ink = np.any(cell != BACKGROUND, axis=-1)
            if not ink.any():
                continue
            colors = {tuple(int(v) for v in p) for p in cell[ink]}
            assert len(colors) == 1, f"cell {r},{c} is not one solid colour: {colors}"
            ys, xs = np.nonzero(ink)
            box = ink[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            x0, y0 = c * CELL, r * CELL
            bbox = [x0 + xs.min(), y0 + ys.min(), x0 + xs.max(), y0 + ys.max()]
            found.append({"rgb": colors.pop(), "fill": box.mean(), "bbox": bbox, "ink": box})
    return found


def _shape_from_fill(fill: float) -> str:
    return "square" if fill > 0.97 else "circle" if fill > 0.68 else "triangle"


def _color_name(rgb) -> str:
    return {v: k for k, v in PALETTE.items()}[rgb]


def _read_digit(ink: np.ndarray) -> int:
    glyph = tuple("".join("1" if ink[gy * DIGIT_SCALE + 1, gx * DIGIT_SCALE + 1] else "0"
                          for gx in range(3)) for gy in range(5))
    return {v: k for k, v in DIGIT_FONT.items()}[glyph]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("difficulty", [None, HARD], ids=["default", "hard"])
def test_answers_match_the_pixels(family, difficulty):
    for row in generate_task_rows(family, 60, seed=3, difficulty=difficulty):
        meta = row["metadata"]
        objs = _cell_objects(_pixels(row))
        assert len(objs) == len(meta["objects"])
        for seen, obj in zip(objs, meta["objects"]):  # both in reading order
            assert seen["bbox"] == obj["bbox"]
            if obj["kind"] == "digit":
                assert seen["rgb"] == DIGIT_RGB and _read_digit(seen["ink"]) == obj["digit"]
            else:
                assert _color_name(seen["rgb"]) == obj["color"]
                assert _shape_from_fill(seen["fill"]) == obj["shape"]
        # Recompute the answer from the pixel reading only.
        if family == "count_color":
            target = re.match(r"How many (\w+) shapes", row["prompt"]).group(1)
            expected = str(sum(_color_name(o["rgb"]) == target for o in objs))
        elif family == "count_shape":
            target = re.match(r"How many (\w+)s are", row["prompt"]).group(1)
            expected = str(sum(_shape_from_fill(o["fill"]) == target for o in objs))
        elif family == "majority_color":
            names = [_color_name(o["rgb"]) for o in objs]
            counts = sorted(((names.count(n), n) for n in set(names)), reverse=True)
            assert len(counts) == 1 or counts[0][0] > counts[1][0], "majority must be unique"
            expected = counts[0][1]
        else:
            expected = str(sum(_read_digit(o["ink"]) for o in objs))
        assert row["answer"] == expected, (family, row["id"])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generation_is_deterministic_per_seed(family):
    a = generate_task_rows(family, 8, seed=11)
    b = generate_task_rows(family, 8, seed=11)
    assert a == b
    c = generate_task_rows(family, 8, seed=12)
    assert [r["images"] for r in a] != [r["images"] for r in c]
    # Row i does not depend on how many rows are generated.
    assert generate_task_rows(family, 3, seed=11, start=5) == a[5:8]


def test_count_answers_stay_small_and_balanced():
    answers = [r["answer"] for r in generate_task_rows("count_color", 300, seed=0)]
    assert set(answers) == {"0", "1", "2", "3", "4"}
    assert min(answers.count(a) for a in set(answers)) > 30
    colors = {r["answer"] for r in generate_task_rows("majority_color", 100, seed=0)}
    assert colors <= set(Difficulty().colors)


def test_demonstration_is_correct_r1_format():
    for family in FAMILIES:
        for row in generate_task_rows(family, 20, seed=5):
            demo = demonstration(row)
            m = re.fullmatch(r"<think>(.+)</think><answer>(.+)</answer>", demo)
            assert m, demo
            assert m.group(2) == row["answer"]
    row = {"metadata": {"family": "count_color", "target": "red",
                        "objects": [{"color": "red"}, {"color": "red"}, {"color": "blue"}]}}
    assert demonstration(row) == "<think>There are 2 red shapes.</think><answer>2</answer>"


def test_written_splits_are_disjoint(tmp_path):
    train, test = write_synthetic_dataset(tmp_path, train_size=40, test_size=20, seed=7)
    tr, te = pq.read_table(train).to_pylist(), pq.read_table(test).to_pylist()
    assert len(tr) == 40 and len(te) == 20
    assert {r["id"] for r in tr}.isdisjoint(r["id"] for r in te)
    key = lambda r: (r["prompt"], bytes(r["images"][0]))  # noqa: E731
    assert {key(r) for r in tr}.isdisjoint(key(r) for r in te)
    assert {json.loads(r["metadata"])["split"] for r in te} == {"test"}
    families = [json.loads(r["metadata"])["family"] for r in tr]
    assert {families.count(f) for f in FAMILIES} == {10}  # spread evenly over families
    # Same arguments, same files.
    again, _ = write_synthetic_dataset(tmp_path / "again", 40, 20, seed=7)
    assert pq.read_table(again).equals(pq.read_table(train))


def test_bad_difficulty_and_family_are_rejected():
    with pytest.raises(ValueError, match="image_size"):
        Difficulty(image_size=50)
    with pytest.raises(ValueError, match="max_objects"):
        Difficulty(max_objects=5)  # a 56 px image has 4 cells
    with pytest.raises(ValueError, match="unknown task family"):
        generate_task_rows("nope", 1, 0)
    with pytest.raises(ValueError, match="unknown knobs"):
        generate_task_rows("count_color", 1, 0, {"num_objects": 3})
    assert Difficulty.coerce({"image_size": 84}).grid == 3
