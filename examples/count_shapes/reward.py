"""The task's own verifier: 1 when the <answer> holds the right number of shapes, else 0."""
import re

_ANSWER = re.compile(r"<answer>\s*(\d+)\s*</answer>")


def count_correct(response: str, answer: str, metadata: dict) -> float:
    found = _ANSWER.search(response)
    return float(found is not None and found.group(1) == answer.strip())
