"""Held-out evaluation: accuracy and format rate of (greedy) responses, scored by the same
verifiers the reward uses."""
from __future__ import annotations

from dataclasses import dataclass

from rlsys.protocol import RolloutGroup


@dataclass
class EvalResult:
    accuracy: float
    format_rate: float
    n: int
    response_length_mean: float


def evaluate_groups(groups: list[RolloutGroup]) -> EvalResult:
    from rlsys.rewards import get_reward

    accuracy, fmt = get_reward("accuracy"), get_reward("r1_format")
    acc = fr = length = 0.0
    n = 0
    for group in groups:
        for r in group.rollouts:
            acc += accuracy(r.response_text, group.prompt.answer, group.prompt.metadata)
            fr += fmt(r.response_text, group.prompt.answer, group.prompt.metadata)
            length += len(r.response_token_ids)
            n += 1
    if n == 0:
        raise ValueError("evaluation got no responses")
    return EvalResult(accuracy=acc / n, format_rate=fr / n, n=n, response_length_mean=length / n)
