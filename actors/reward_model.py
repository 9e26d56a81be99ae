"""Ray actors of the reward-model replicas: a scalar RM (rlsys/rewards/scalar_rm.py) and a judge
(rlsys/rewards/judge_model.py, in actors/judge.py). Launch: `ray.remote(num_cpus=...,
num_gpus=...)(ScalarRMActor)`. One method per remote call; both kinds answer the same calls."""
from __future__ import annotations

import time
from collections import deque

from actors import set_torch_threads
from rlsys.protocol import ModelScores, PeakMemory, RolloutGroup
from rlsys.specs import ScalarRMSpec


class RewardModelActor:
    """What every reward-model replica answers; a subclass sets `self.model` (any object with
    `score_groups(groups) -> list[ModelScores]`) and calls `super().__init__()`."""

    model = None

    def __init__(self):
        self.calls: deque = deque(maxlen=1024)  # (start, end) wall-clock times of recent score calls

    def score(self, groups: list[RolloutGroup]) -> list[ModelScores]:
        """One ModelScores per group, in group order."""
        from rlsys.distributed.media_store import resolve_groups

        start = time.time()
        # Ref-form images -> bytes here, so the compute code sees byte-holding prompts; the
        # callers' groups stay as they are.
        out = self.model.score_groups(resolve_groups(groups))
        self.calls.append((start, time.time()))
        return out

    def call_log(self) -> list[tuple[float, float]]:
        """When recent `score` calls ran (time.time() start, end): shows scoring overlapping generation."""
        return list(self.calls)

    def peak_memory_mb(self) -> PeakMemory:
        from rlsys.memory import peak_memory_mb

        return peak_memory_mb()


class ScalarRMActor(RewardModelActor):
    def __init__(self, spec: ScalarRMSpec):
        from rlsys.rewards.scalar_rm import ScalarRewardModel

        super().__init__()
        set_torch_threads()
        self.model = ScalarRewardModel(spec)

    def ready(self) -> bool:
        return True
