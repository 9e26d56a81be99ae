"""Reward-model training data drawn from the synthetic task: preference pairs for `rlsys train-rm`
and critique demonstrations for a judge built with `rlsys sft` (no Ray, no torch).

Every response below is one the warm-started policy can write (rlsys/models/warmstart.py):

  look_right   the look-mode demonstration (synthetic.demonstration, what the warm start learned
               to write when it looks: "red 2, blue 1. Most often: red."), the right answer;
  guess_right  "<think>I will guess.</think>" and, by luck, the right answer;
  guess_wrong  a guess with a wrong answer;
  look_wrong   the same reasoning about a wrong scene (some objects' colour / shape changed so
               the answer changes), concluded consistently: wrong, and only the image shows it;
  malformed    no R1 format (a bare answer, or an unclosed think block).

A pair prefers a right response (look or guess) to a wrong one; the wrong one is look_wrong,
guess_wrong or malformed, so neither the text alone ("it guessed") nor the format alone ranks
the pairs: a reward model must look at the image for the guesses and the wrong perceptions.

A critique names what the judge sees, what the answer should be, what the response answers,
and a verdict, then the score in the judge template's tag: 10 for right, 0 for wrong.
"""
from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from rlsys.protocol import Prompt

RIGHT_SCORE, WRONG_SCORE = 10, 0
_RIGHT_KINDS = ("look_right", "guess_right")
_WRONG_KINDS = ("look_wrong", "guess_wrong", "malformed")
_WRONG_SHARES = (0.4, 0.4, 0.2)  # of the rejected responses


def _meta(prompt: Prompt) -> dict:
    meta = prompt.metadata
    return json.loads(meta) if isinstance(meta, str) else dict(meta)


def _solve(meta: dict) -> str:
    from rlsys.data.synthetic import FAMILIES

    return str(FAMILIES[meta["family"]].solve(meta["objects"], meta.get("target"))[1])


def _wrong_scene(meta: dict, rng: np.random.Generator) -> dict | None:
    """A copy of the scene with objects' colour / shape redrawn until the answer differs (None
    when 50 draws never change it, e.g. a count of an absent colour)."""
    from rlsys.data.synthetic import Difficulty

    d = Difficulty.coerce(meta["difficulty"])
    truth = _solve(meta)
    for _ in range(50):
        scene = copy.deepcopy(meta)
        for obj in rng.choice(scene["objects"], size=max(1, len(scene["objects"]) // 2), replace=False):
            if "color" in obj:
                obj["color"] = str(rng.choice(d.colors))
            if "shape" in obj:
                obj["shape"] = str(rng.choice(d.shapes))
        if _solve(scene) != truth:
            return scene
    return None


def _other_answer(meta: dict, answers: Sequence[str], rng: np.random.Generator) -> str:
    truth = _solve(meta)
    pool = sorted({a for a in answers if a != truth})
    return str(rng.choice(pool)) if pool else f"not {truth}"


def response_of(kind: str, prompt: Prompt, answers: Sequence[str], rng: np.random.Generator) -> tuple[str, str]:
    """A response of `kind` (module docstring) to a synthetic prompt; -> (response, the answer it
    gives or "" when it gives none). `answers`: the task's answers, for wrong guesses. A
    look_wrong that cannot be drawn falls back to guess_wrong."""
    from rlsys.data.synthetic import demonstration
    from rlsys.models.warmstart import guess_demonstration

    meta = _meta(prompt)
    if kind == "look_right":
        return demonstration({"metadata": meta}), _solve(meta)
    if kind == "guess_right":
        return guess_demonstration(_solve(meta)), _solve(meta)
    if kind == "look_wrong":
        scene = _wrong_scene(meta, rng)
        if scene is not None:
            return demonstration({"metadata": scene}), _solve(scene)
        kind = "guess_wrong"
    if kind == "guess_wrong":
        given = _other_answer(meta, answers, rng)
        return guess_demonstration(given), given
    if kind == "malformed":
        given = _other_answer(meta, answers, rng) if rng.random() < 0.5 else _solve(meta)
        return (given if rng.random() < 0.5 else f"<think>I will look. {given}"), ""
    raise ValueError(f"unknown response kind {kind!r}")


def preference_pairs(prompts: Sequence[Prompt], seed: int) -> list[dict]:
    """One pair per prompt: {prompt, chosen, rejected, chosen_kind, rejected_kind} (Prompt
    objects; `write_pair_rows` makes them dataset rows). Chosen: look_right or guess_right
    (even odds); rejected: look_wrong / guess_wrong / malformed at _WRONG_SHARES."""
    rng = np.random.default_rng([seed, 13])
    answers = [str(p.answer) for p in prompts]
    out = []
    for p in prompts:
        good = _RIGHT_KINDS[int(rng.integers(2))]
        bad = _WRONG_KINDS[int(rng.choice(3, p=_WRONG_SHARES))]
        chosen, _ = response_of(good, p, answers, rng)
        rejected, _ = response_of(bad, p, answers, rng)
        out.append({"prompt": p, "chosen": chosen, "rejected": rejected, "chosen_kind": good, "rejected_kind": bad})
    return out


def critique(prompt: Prompt, given: str, right: bool) -> str:
    """The judge's target: what it sees (cell by cell, as the perception demonstration, which the
    tiny model learns to read from pixels), the answer, what the response answered, the
    verdict, then the score tag. e.g. "red, empty, blue, red. red 2, blue 1. Most often: red. The
    response answers blue: wrong.<score>0</score>"."""
    from rlsys.models.warmstart import perception_demonstration

    seen = perception_demonstration({"metadata": _meta(prompt)})
    think = seen[len("<think>"): seen.index("</think>")]
    said = f"The response answers {given}" if given else "The response gives no answer"
    return f"{think} {said}: {'right' if right else 'wrong'}.<score>{RIGHT_SCORE if right else WRONG_SCORE}</score>"


def critique_demonstrations(prompts: Sequence[Prompt], template: str, seed: int) -> list[Prompt]:
    """Judge SFT demonstrations: per prompt one response (right or wrong, even odds, kinds as in
    preference_pairs) as the judge sees it (rlsys/rewards/judge.py: judge_prompt), with its
    critique as the target `response`."""
    from rlsys.rewards.judge import judge_prompt

    rng = np.random.default_rng([seed, 17])
    answers = [str(p.answer) for p in prompts]
    out = []
    for p in prompts:
        right = bool(rng.random() < 0.5)
        kind = _RIGHT_KINDS[int(rng.integers(2))] if right else _WRONG_KINDS[int(rng.choice(3, p=_WRONG_SHARES))]
        response, given = response_of(kind, p, answers, rng)
        judged = judge_prompt(template, p, response)
        judged.response = critique(p, given, right and kind != "malformed")
        out.append(judged)
    return out


def _image_strings(prompt: Prompt) -> list[str]:
    return [base64.b64encode(m.png).decode() for m in prompt.images]


def write_pair_rows(pairs: Sequence[dict], path: Union[str, Path]) -> Path:
    """Pairs as JSONL rows of the pair schema (rlsys/data/datasets.py): the prompt's user text,
    its images (base64 PNG), answer, chosen, rejected, and the kinds as metadata."""
    from rlsys.data.templates import message_text

    rows = []
    for pair in pairs:
        p: Prompt = pair["prompt"]
        user = next(m for m in p.messages if m["role"] == "user")
        rows.append({"id": p.uid, "prompt": message_text(user), "images": _image_strings(p), "answer": p.answer,
                     "chosen": pair["chosen"], "rejected": pair["rejected"],
                     "metadata": {"chosen_kind": pair["chosen_kind"], "rejected_kind": pair["rejected_kind"]}})
    return _write_jsonl(rows, path)


def write_demonstration_rows(demos: Sequence[Prompt], path: Union[str, Path]) -> Path:
    """Demonstrations as JSONL rows (messages with image parts, images as base64 PNG, response):
    what `rlsys sft sft.data=<path>` reads back into the same Prompts."""
    rows = [{"id": d.uid, "messages": d.messages, "images": _image_strings(d), "response": d.response}
            for d in demos]
    return _write_jsonl(rows, path)


def _write_jsonl(rows: list[dict[str, Any]], path: Union[str, Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path
