"""Reward-model scores joined with the rule rewards (pure functions, no Ray, no torch).

A group's RewardResult comes from the reward actor (the rule components); each reward-model
role (a scalar RM, a judge) answers the same group with ModelScores. `with_model_scores` adds
them as components: reward[i] += weight * score[i], the raw score kept in components[name],
its failures counted under name, a judge's critiques in texts[name].

`normalize_batch` standardises one model's scores over a step's batch (mean 0, std 1 over all
its samples) and rebuilds the combined reward with the standardised values, so an RM whose
scores drift in scale keeps a fixed weight against the rules. The raw scores stay in
components[name] (metrics and the Parquet record show what the model said).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from rlsys.protocol import ModelScores, RewardResult, ScoredGroup


def with_model_scores(result: RewardResult, name: str, weight: float, scores: ModelScores) -> RewardResult:
    """`result` with model component `name` added (a new RewardResult; `result` is not changed).
    Raises ValueError when the model scored another number of samples than the group has."""
    if len(scores.scores) != len(result.rewards):
        raise ValueError(f"reward model {name}: {len(scores.scores)} scores for {len(result.rewards)} samples")
    out = dataclasses.replace(
        result, rewards=[r + weight * s for r, s in zip(result.rewards, scores.scores)],
        components={**result.components, name: list(scores.scores)},
        failures=result.failures + scores.failures,
        component_failures={**result.component_failures, name: scores.failures},
        first_failure=dict(result.first_failure), texts=dict(result.texts))
    if scores.first_failure is not None:
        out.first_failure[name] = scores.first_failure
    if scores.texts is not None:
        out.texts[name] = list(scores.texts)
    return out


def standardize(values: Sequence[float]) -> list[float]:
    """(v - mean) / std over `values` (population std); all equal (or one value): zeros."""
    n = len(values)
    if n == 0:
        return []
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    if std < 1e-8:
        return [0.0] * n
    return [(v - mean) / std for v in values]


def normalize_batch(scored: list[ScoredGroup], name: str, weight: float) -> list[ScoredGroup]:
    """The batch with component `name`'s weighted share of every reward replaced by its
    standardised value (over all samples of the batch); components keep the raw scores."""
    raw = [v for sg in scored for v in sg.reward.components[name]]
    z = iter(standardize(raw))
    out = []
    for sg in scored:
        comp = sg.reward.components[name]
        rewards = [r - weight * v + weight * next(z) for r, v in zip(sg.reward.rewards, comp)]
        out.append(dataclasses.replace(sg, reward=dataclasses.replace(sg.reward, rewards=rewards)))
    return out
