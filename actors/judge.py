"""Judge actor: one vLLM judge engine (rlsys/rewards/judge.py), one method per remote call."""
from __future__ import annotations

import time
from collections import deque
from dataclasses import replace

from rlsys.protocol import ModelScores, RolloutGroup
from rlsys.specs import JudgeSpec


class JudgeActor:
    def __init__(self, spec: JudgeSpec):
        from rlsys.rewards.judge_model import JudgeModel

        self.model = JudgeModel(spec)
        self.calls: deque = deque(maxlen=1024)  # (start, end) wall-clock times of recent score calls

    def score(self, groups: list[RolloutGroup]) -> list[ModelScores]:
        """[len(groups)] ModelScores, in group order."""
        from rlsys.distributed.media_store import resolve_prompts

        start = time.time()
        # The engine needs image bytes; the callers' groups (and their ref-form prompts) stay as
        # they are.
        prompts = resolve_prompts([g.prompt for g in groups])
        resolved = [g if p is g.prompt else replace(g, prompt=p) for g, p in zip(groups, prompts)]
        results = self.model.score_groups(resolved)
        self.calls.append((start, time.time()))
        return results

    def call_log(self) -> list[tuple[float, float]]:
        """When recent `score` calls ran (time.time() start, end): shows judging overlapping generation."""
        return list(self.calls)

    def peak_memory_mb(self) -> dict[str, float]:
        from rlsys.memory import peak_memory_mb

        return peak_memory_mb()
