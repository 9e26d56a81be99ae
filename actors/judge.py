"""Judge actor: one vLLM judge engine (rlsys/rewards/judge_model.py); the calls of every
reward-model replica (actors/reward_model.py: score, call_log, peak_memory_mb)."""
from __future__ import annotations

from actors.reward_model import RewardModelActor
from rlsys.specs import JudgeSpec


class JudgeActor(RewardModelActor):
    def __init__(self, spec: JudgeSpec):
        from rlsys.distributed.runtime import actor_cpu_share
        from rlsys.rewards.judge_model import JudgeModel

        super().__init__()
        cpus, slot = actor_cpu_share()
        self.model = JudgeModel(spec, cpus=cpus, cpu_slot=slot)
