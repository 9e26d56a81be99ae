"""A visual task of your own, as files: "How many shapes are in the picture?"

Writes, under OUT_DIR:
  images/<split>-<i>.png   56x56 pictures with 1-4 shapes (squares, circles, crosses) in a 2x2 grid
  train.jsonl, test.jsonl  one prompt per line: {"id", "prompt", "images": [file], "answer"}
  sft.jsonl                cold-start demonstrations: the train prompts plus a `response`

Only the answer is checked (examples/count_shapes/reward.py). The demonstrations show the R1
format, but their counts are right only `--right` of the time (default 0.4; the rest are
guesses), as demonstrations from a weak labeller would be: SFT on them teaches the format and
leaves the counting to RL.

    python examples/count_shapes/make_task.py OUT_DIR [--train 512] [--test 64] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

CELL, SIZE = 28, 56
COLOURS = [(220, 30, 30), (30, 160, 40), (30, 60, 220)]
QUESTION = "How many shapes are in the picture? Answer with a number."


def draw_scene(rng: random.Random) -> tuple[Image.Image, int]:
    """A picture and its number of shapes (one per occupied cell)."""
    count = rng.randint(1, 4)
    cells = rng.sample([(r, c) for r in range(2) for c in range(2)], count)
    img = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for r, c in cells:
        x0, y0 = c * CELL + rng.randint(3, 7), r * CELL + rng.randint(3, 7)
        x1, y1 = x0 + rng.randint(14, 18), y0 + rng.randint(14, 18)
        colour, kind = rng.choice(COLOURS), rng.choice(["square", "circle", "cross"])
        if kind == "square":
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        elif kind == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            mx, my = (x0 + x1) // 2, (y0 + y1) // 2
            draw.rectangle([mx - 2, y0, mx + 2, y1], fill=colour)
            draw.rectangle([x0, my - 2, x1, my + 2], fill=colour)
    return img, count


def demonstration(answer: int, rng: random.Random, right: float) -> str:
    said = answer if rng.random() < right else rng.randint(1, 4)
    return f"<think>I count the shapes.</think><answer>{said}</answer>"


def write_task(out: Path, train: int, test: int, seed: int = 0, right: float = 0.4) -> Path:
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    demos = []
    for split, size in (("train", train), ("test", test)):
        rows = []
        for i in range(size):
            img, count = draw_scene(rng)
            name = f"images/{split}-{i}.png"
            img.save(out / name)
            rows.append({"id": f"{split}-{i}", "prompt": QUESTION, "images": [name], "answer": str(count)})
            if split == "train":
                demos.append({**rows[-1], "response": demonstration(count, rng, right)})
        _write_jsonl(out / f"{split}.jsonl", rows)
    _write_jsonl(out / "sft.jsonl", demos)
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--train", type=int, default=512)
    ap.add_argument("--test", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--right", type=float, default=0.4, help="share of demonstrations with the right count")
    a = ap.parse_args()
    print(write_task(a.out_dir, a.train, a.test, a.seed, a.right))
