"""Procedural visual-reasoning tasks: small images of solid shapes or digits, and questions
whose answers are verifiable and need the image.

Families (registered by name in FAMILIES):
  count_color     "How many red shapes are there?"          answer "0".."N"
  count_shape     "How many circles are there?"             answer "0".."N"
  majority_color  "Which colour appears most often?"        answer a colour name (unique winner)
  sum_digits      "What is the sum of the digits?"          answer e.g. "7" (3x5 bitmap font)

The image is a grid of 28x28 px cells (one visual token per cell for a Qwen2.5-VL-style
28 px patch-merge), each holding at most one object, so objects never overlap and every colour
in the image is exact (no anti-aliasing). Answer spaces stay small (counts 0-4, 3 colours by
default) so a ~1M-parameter VLM can learn them on CPU in minutes.

Reproducible: row i of (family, split, seed) draws from its own numpy Generator seeded by
SeedSequence([seed, crc32(family), crc32(split), i]) - independent of how many rows are made.
"""
from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from rlsys.data.datasets import rows_to_parquet
from rlsys.data.media import encode_png
from rlsys.data.templates import format_response

CELL = 28
BACKGROUND = (255, 255, 255)
DIGIT_RGB = (20, 20, 20)
PALETTE = {  # saturated and far apart, so even a tiny vision encoder separates them
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 190, 0),
    "purple": (150, 60, 190),
}
SHAPES = ("square", "circle", "triangle")
# 3x5 bitmap font, rows top to bottom; chosen so that all ten glyphs differ.
DIGIT_FONT = {
    0: ("111", "101", "101", "101", "111"), 1: ("010", "110", "010", "010", "111"),
    2: ("111", "001", "111", "100", "111"), 3: ("111", "001", "111", "001", "111"),
    4: ("101", "101", "111", "001", "001"), 5: ("111", "100", "111", "001", "111"),
    6: ("111", "100", "111", "101", "111"), 7: ("111", "001", "001", "001", "001"),
    8: ("111", "101", "111", "101", "111"), 9: ("111", "101", "111", "001", "111"),
}
DIGIT_SCALE = 4  # 12x20 px glyphs fit a 28 px cell with a margin


@dataclass(frozen=True)
class Difficulty:
    """Knobs of the task distribution. image_size must be a multiple of CELL (28)."""

    min_objects: int = 1
    max_objects: int = 4
    num_colors: int = 3  # the first k of PALETTE
    num_shapes: int = 3  # the first k of SHAPES
    image_size: int = 56
    max_digit: int = 4  # sum_digits draws digits 0..max_digit
    max_digits: int = 2  # sum_digits draws 1..max_digits digits

    def __post_init__(self) -> None:
        checks = [
            (self.image_size >= 2 * CELL and self.image_size % CELL == 0,
             f"image_size must be a multiple of {CELL} and >= {2 * CELL}"),
            (0 <= self.min_objects <= self.max_objects <= self.grid ** 2,
             f"need 0 <= min_objects <= max_objects <= {self.grid ** 2} cells"),
            (2 <= self.num_colors <= len(PALETTE), f"num_colors must be in 2..{len(PALETTE)}"),
            (2 <= self.num_shapes <= len(SHAPES), f"num_shapes must be in 2..{len(SHAPES)}"),
            (0 <= self.max_digit <= 9, "max_digit must be in 0..9"),
            (1 <= self.max_digits <= self.grid ** 2, "max_digits must be in 1..cells"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"Difficulty: {msg} (got {self})")

    @property
    def grid(self) -> int:
        return self.image_size // CELL

    @property
    def colors(self) -> tuple[str, ...]:
        return tuple(PALETTE)[: self.num_colors]

    @property
    def shapes(self) -> tuple[str, ...]:
        return SHAPES[: self.num_shapes]

    @classmethod
    def coerce(cls, value: Union["Difficulty", dict, None]) -> "Difficulty":
        if value is None or isinstance(value, cls):
            return value or cls()
        unknown = set(value) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Difficulty: unknown knobs {sorted(unknown)}; "
                             f"known: {sorted(cls.__dataclass_fields__)}")
        return cls(**value)


@dataclass(frozen=True)
class TaskFamily:
    """sample: (rng, difficulty) -> (objects, target); question: target -> str;
    solve: (objects, target) -> (short reasoning, answer) - the single source of answers."""

    name: str
    sample: Callable[[np.random.Generator, Difficulty], tuple[list[dict], Any]]
    question: Callable[[Any], str]
    solve: Callable[[list[dict], Any], tuple[str, str]]


FAMILIES: dict[str, TaskFamily] = {}


def register_family(family: TaskFamily) -> TaskFamily:
    FAMILIES[family.name] = family
    return family


# ---- placement and drawing --------------------------------------------------------------

def _cells(rng: np.random.Generator, n: int, d: Difficulty) -> list[tuple[int, int]]:
    """n distinct grid cells in reading order (so reasoning can list objects in that order)."""
    picks = sorted(int(c) for c in rng.choice(d.grid ** 2, size=n, replace=False))
    return [(c // d.grid, c % d.grid) for c in picks]


def _shape_objects(rng, d: Difficulty, shapes: list[str], colors: list[str]) -> list[dict]:
    objects = []
    for (r, c), shape, color in zip(_cells(rng, len(shapes), d), shapes, colors):
        size = int(rng.integers(14, 23))
        x0 = c * CELL + int(rng.integers(2, CELL - size - 1))
        y0 = r * CELL + int(rng.integers(2, CELL - size - 1))
        objects.append({"kind": "shape", "shape": shape, "color": color, "cell": [r, c],
                        "bbox": [x0, y0, x0 + size - 1, y0 + size - 1]})
    return objects


def _digit_objects(rng, d: Difficulty, digits: list[int]) -> list[dict]:
    w, h = 3 * DIGIT_SCALE, 5 * DIGIT_SCALE
    objects = []
    for (r, c), digit in zip(_cells(rng, len(digits), d), digits):
        x0 = c * CELL + int(rng.integers(2, CELL - w - 1))
        y0 = r * CELL + int(rng.integers(2, CELL - h - 1))
        objects.append({"kind": "digit", "digit": int(digit), "cell": [r, c],
                        "bbox": [x0, y0, x0 + w - 1, y0 + h - 1]})
    return objects


def render(objects: Sequence[dict], image_size: int) -> Image.Image:
    """Draw a scene. PIL's ImageDraw does not anti-alias, so shapes are exactly their colour."""
    img = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for obj in objects:
        x0, y0, x1, y1 = obj["bbox"]
        if obj["kind"] == "digit":
            for gy, line in enumerate(DIGIT_FONT[obj["digit"]]):
                for gx, bit in enumerate(line):
                    if bit == "1":
                        px, py = x0 + gx * DIGIT_SCALE, y0 + gy * DIGIT_SCALE
                        draw.rectangle([px, py, px + DIGIT_SCALE - 1, py + DIGIT_SCALE - 1],
                                       fill=DIGIT_RGB)
            continue
        rgb = PALETTE[obj["color"]]
        if obj["shape"] == "square":
            draw.rectangle([x0, y0, x1, y1], fill=rgb)
        elif obj["shape"] == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=rgb)
        else:  # triangle, apex up
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=rgb)
    return img


# ---- families ------------------------------------------------------------------------------

def _num_objects(rng, d: Difficulty, at_least: int = 0) -> int:
    return int(rng.integers(max(at_least, d.min_objects), max(at_least, d.max_objects, 1) + 1))


def _pick(rng, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _with_target(rng, d: Difficulty, target: str, options: Sequence[str]) -> list[str]:
    """Attribute values of one scene, `k` of them `target`. k is drawn first, uniform over
    0..max_objects, so every count answer is equally likely (no prior to exploit)."""
    k = int(rng.integers(0, d.max_objects + 1))
    n = int(rng.integers(max(k, d.min_objects), d.max_objects + 1))
    others = [o for o in options if o != target]
    values = [target] * k + [_pick(rng, others) for _ in range(n - k)]
    rng.shuffle(values)
    return values


def _plural(n: int, noun: str) -> str:
    return f"There {'is' if n == 1 else 'are'} {n} {noun if n == 1 else noun + 's'}."


def _sample_count_color(rng, d):
    target = _pick(rng, d.colors)
    colors = _with_target(rng, d, target, d.colors)
    return _shape_objects(rng, d, [_pick(rng, d.shapes) for _ in colors], colors), target


def _solve_count_color(objects, target):
    n = sum(o["color"] == target for o in objects)
    return _plural(n, f"{target} shape"), str(n)


def _sample_count_shape(rng, d):
    target = _pick(rng, d.shapes)
    shapes = _with_target(rng, d, target, d.shapes)
    return _shape_objects(rng, d, shapes, [_pick(rng, d.colors) for _ in shapes]), target


def _solve_count_shape(objects, target):
    n = sum(o["shape"] == target for o in objects)
    return _plural(n, target), str(n)


def _color_counts(objects) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in objects:
        counts[o["color"]] = counts.get(o["color"], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _sample_majority_color(rng, d):
    n = _num_objects(rng, d, at_least=1)
    for _ in range(100):  # rejection sampling for a unique winner; a tie is rare past n=2
        colors = [_pick(rng, d.colors) for _ in range(n)]
        top = sorted(_color_counts([{"color": c} for c in colors]).values(), reverse=True)
        if len(top) == 1 or top[0] > top[1]:
            break
    else:
        colors = [colors[0]] * n
    return _shape_objects(rng, d, [_pick(rng, d.shapes) for _ in range(n)], colors), None


def _solve_majority_color(objects, _target):
    counts = _color_counts(objects)
    winner = next(iter(counts))
    listed = ", ".join(f"{c} {k}" for c, k in counts.items())
    return f"{listed}. Most often: {winner}.", winner


def _sample_sum_digits(rng, d):
    k = int(rng.integers(1, d.max_digits + 1))
    digits = [int(x) for x in rng.integers(0, d.max_digit + 1, size=k)]
    return _digit_objects(rng, d, digits), None


def _solve_sum_digits(objects, _target):
    digits = [o["digit"] for o in objects]
    total = sum(digits)
    if len(digits) == 1:
        return f"The only digit is {total}.", str(total)
    listed, summed = ", ".join(map(str, digits)), " + ".join(map(str, digits))
    return f"The digits are {listed}. {summed} = {total}.", str(total)


register_family(TaskFamily("count_color", _sample_count_color,
                           lambda t: f"How many {t} shapes are there?", _solve_count_color))
register_family(TaskFamily("count_shape", _sample_count_shape,
                           lambda t: f"How many {t}s are there?", _solve_count_shape))
register_family(TaskFamily("majority_color", _sample_majority_color,
                           lambda _t: "Which colour appears most often?", _solve_majority_color))
register_family(TaskFamily("sum_digits", _sample_sum_digits,
                           lambda _t: "What is the sum of the digits?", _solve_sum_digits))


# ---- rows, datasets, demonstrations ----------------------------------------------------------

def _row_rng(seed: int, family: str, split: str, index: int) -> np.random.Generator:
    # crc32, not hash(): Python's str hash changes per process.
    key = [int(seed), zlib.crc32(family.encode()), zlib.crc32(split.encode()), int(index)]
    return np.random.default_rng(np.random.SeedSequence(key))


def _family(name: str) -> TaskFamily:
    if name not in FAMILIES:
        raise ValueError(f"unknown task family '{name}'; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def generate_task_rows(
    family: str,
    n: int,
    seed: int,
    difficulty: Union[Difficulty, dict, None] = None,
    *,
    split: str = "train",
    start: int = 0,
) -> list[dict]:
    """Rows {id, prompt, images: [png bytes], answer, metadata: dict} (the dataset schema).

    metadata holds the scene description (objects with bbox/colour/shape/digit), the family,
    target, difficulty, seed, split and index: everything needed to re-render and re-check.
    """
    fam, d = _family(family), Difficulty.coerce(difficulty)
    rows = []
    for i in range(start, start + n):
        objects, target = fam.sample(_row_rng(seed, family, split, i), d)
        _, answer = fam.solve(objects, target)
        meta = {"family": family, "target": target, "objects": objects, "split": split,
                "seed": int(seed), "index": i, "difficulty": asdict(d)}
        rows.append({
            "id": f"{family}-{split}-{seed}-{i}",
            "prompt": fam.question(target),
            "images": [encode_png(render(objects, d.image_size))],
            "answer": answer,
            "metadata": meta,
        })
    return rows


def _content_key(row: dict) -> tuple:
    return row["prompt"], tuple(hashlib.sha256(b).hexdigest() for b in row["images"])


def _split_rows(families, total, seed, d, split, exclude=frozenset()) -> list[dict]:
    """`total` rows spread evenly over families, interleaved; rows whose (question, image)
    is in `exclude` are replaced by later ones so test never repeats a train item."""
    per_family = []
    for j, fam in enumerate(families):
        want = total // len(families) + (j < total % len(families))
        rows, start = [], 0
        while len(rows) < want:
            if start > 20 * want + 100:
                raise ValueError(f"{fam}: cannot find {want} {split} rows unlike the train rows; "
                                 "the difficulty allows too few distinct items")
            batch = generate_task_rows(fam, want - len(rows), seed, d, split=split, start=start)
            start += len(batch)
            rows += [r for r in batch if _content_key(r) not in exclude]
        per_family.append(rows)
    return [r for group in _interleave(per_family) for r in group]


def _interleave(lists: list[list[dict]]):
    for i in range(max((len(x) for x in lists), default=0)):
        yield [x[i] for x in lists if i < len(x)]


def write_synthetic_dataset(
    out_dir: Union[str, os.PathLike],
    train_size: int,
    test_size: int,
    seed: int = 0,
    families: Optional[Sequence[str]] = None,
    difficulty: Union[Difficulty, dict, None] = None,
) -> tuple[Path, Path]:
    """Write out_dir/train.parquet and out_dir/test.parquet; returns their paths.

    Train and test draw from disjoint seed streams (split name in the seed) and test rows that
    repeat a train item (same question and image) are dropped, so test measures generalisation.
    """
    families = [families] if isinstance(families, str) else list(families or FAMILIES)
    for fam in families:
        _family(fam)
    d = Difficulty.coerce(difficulty)
    train = _split_rows(families, train_size, seed, d, "train")
    test = _split_rows(families, test_size, seed, d, "test", {_content_key(r) for r in train})
    out = Path(out_dir)
    train_path = rows_to_parquet(train, out / "train.parquet")
    return train_path, rows_to_parquet(test, out / "test.parquet")


def demonstration(row: Any) -> str:
    """A short correct R1-format response for cold-start SFT, derived from the scene.

    `row`: a generated row dict, a loaded row (metadata as JSON string) or a Prompt.
    e.g. `<think>There are 2 red shapes.</think><answer>2</answer>`.
    """
    meta = row.get("metadata") if isinstance(row, dict) else getattr(row, "metadata", None)
    if isinstance(meta, str):
        meta = json.loads(meta)
    if not isinstance(meta, dict) or "family" not in meta:
        raise ValueError("demonstration needs a synthetic row (metadata with 'family', 'objects')")
    reasoning, answer = _family(meta["family"]).solve(meta["objects"], meta.get("target"))
    return format_response(reasoning, answer)
