"""Ray actor of one scalar reward-model replica (rlsys/rewards/scalar_rm.py). Launch:
`ray.remote(num_cpus=..., num_gpus=...)(ScalarRMActor)`. One method per remote call."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import replace

from rlsys.protocol import ModelScores, RolloutGroup
from rlsys.specs import ScalarRMSpec


class ScalarRMActor:
    def __init__(self, spec: ScalarRMSpec):
        from rlsys.rewards.scalar_rm import ScalarRewardModel

        self.model = ScalarRewardModel(spec)
        self.calls: deque = deque(maxlen=1024)  # (start, end) wall-clock times of recent score calls

    def ready(self) -> bool:
        return True

    def score(self, groups: list[RolloutGroup]) -> list[ModelScores]:
        """One ModelScores per group ([G] scores; over-long sequences fail, scored 0)."""
        from rlsys.distributed.media_store import resolve_prompts

        start = time.time()
        # Ref-form images -> bytes here, so the compute code sees byte-holding prompts.
        prompts = resolve_prompts([g.prompt for g in groups])
        resolved = [g if p is g.prompt else replace(g, prompt=p) for g, p in zip(groups, prompts)]
        out = self.model.score_groups(resolved)
        self.calls.append((start, time.time()))
        return out

    def call_log(self) -> list[tuple[float, float]]:
        """When recent `score` calls ran (time.time() start, end)."""
        return list(self.calls)

    def peak_memory_mb(self) -> dict[str, float]:
        from rlsys.memory import peak_memory_mb

        return peak_memory_mb()
