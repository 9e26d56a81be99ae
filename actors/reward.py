"""Reward actor: rule-based and user reward functions (in a worker pool with timeouts). Reward
models are actors of their own (actors/reward_model.py, actors/judge.py). One method per remote
call."""
from __future__ import annotations

import time
from collections import deque

from rlsys.protocol import PeakMemory, RewardResult, RolloutGroup
from rlsys.specs import RewardSpec


class RewardActor:
    def __init__(self, spec: RewardSpec):
        self.scorer = _scorer(spec.components, spec)
        self.eval_scorer = self.scorer
        if spec.eval_components is not None and spec.eval_components != spec.components:
            self.eval_scorer = _scorer(spec.eval_components, spec)
        self.calls: deque = deque(maxlen=1024)  # (start, end) wall-clock times of recent score calls

    def score(self, groups: list[RolloutGroup]) -> list[RewardResult]:
        start = time.time()
        results = _score(self.scorer, groups)
        self.calls.append((start, time.time()))
        return results

    def score_eval(self, groups: list[RolloutGroup]) -> list[RewardResult]:
        """Held-out groups scored by the rule entries of the evaluation rewards (the model entries
        are scored by their own roles, rlsys/distributed/roles.py: Roles.evaluate)."""
        return _score(self.eval_scorer, groups)

    def call_log(self) -> list[tuple[float, float]]:
        """When recent `score` calls ran (time.time() start, end): shows scoring overlapping generation."""
        return list(self.calls)

    def peak_memory_mb(self) -> PeakMemory:
        from rlsys.memory import peak_memory_mb

        return peak_memory_mb()


def _scorer(components: tuple, spec: RewardSpec):
    """The scorer of rule components; None when there are none (the reward is all models')."""
    from rlsys.rewards.scorer import RewardScorer

    if not components:
        return None
    return RewardScorer(list(components), timeout_s=spec.timeout_s, max_workers=spec.num_workers)


def _score(scorer, groups: list[RolloutGroup]) -> list[RewardResult]:
    if scorer is None:  # no rules: every reward comes from the model roles, added by the driver
        return [RewardResult([0.0] * g.size, {}, component_failures={}) for g in groups]
    return scorer.score_groups(groups)
