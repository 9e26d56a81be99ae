"""Reward actor: rule-based and user reward functions (in a worker pool with timeouts) and an
optional scalar reward model. One method per remote call."""
from __future__ import annotations

import time
from collections import deque

from rlsys.protocol import RewardResult, RolloutGroup
from rlsys.specs import RewardSpec


class RewardActor:
    def __init__(self, spec: RewardSpec):
        from rlsys.rewards.scorer import RewardScorer

        self.scorer = RewardScorer(list(spec.components), timeout_s=spec.timeout_s, max_workers=spec.num_workers)
        self.eval_scorer = self.scorer
        if spec.eval_components and spec.eval_components != spec.components:
            self.eval_scorer = RewardScorer(list(spec.eval_components), timeout_s=spec.timeout_s,
                                            max_workers=spec.num_workers)
        self.reward_model = None
        self.reward_model_weight = spec.reward_model_weight
        if spec.reward_model:
            from rlsys.rewards.model import ScalarRewardModel

            self.reward_model = ScalarRewardModel(spec.reward_model, dtype=spec.dtype)
        self.calls: deque = deque(maxlen=1024)  # (start, end) wall-clock times of recent score calls

    def score(self, groups: list[RolloutGroup]) -> list[RewardResult]:
        start = time.time()
        results = self.scorer.score_groups(groups)
        if self.reward_model is not None:
            for group, result in zip(groups, results):
                scores = self.reward_model.score(group)
                result.components["reward_model"] = scores
                result.rewards = [r + self.reward_model_weight * s for r, s in zip(result.rewards, scores)]
        self.calls.append((start, time.time()))
        return results

    def score_eval(self, groups: list[RolloutGroup]) -> list[RewardResult]:
        """Held-out groups scored by the evaluation rewards (no reward model: evaluation reports
        the verifiers a person can check)."""
        return self.eval_scorer.score_groups(groups)

    def call_log(self) -> list[tuple[float, float]]:
        """When recent `score` calls ran (time.time() start, end): shows scoring overlapping generation."""
        return list(self.calls)

    def peak_memory_mb(self) -> dict[str, float]:
        from rlsys.memory import peak_memory_mb

        return peak_memory_mb()
