"""Rewards: registry, R1 format/accuracy, answer equivalence, user functions, remote HTTP.

Signature of every reward: ``fn(response: str, answer: str | None, metadata: dict) -> float``.
`RewardScorer` combines weighted components and bounds every call (see scorer.py).

Importing this package is light (no math-verify/sympy, no torch): math-verify loads on the
first LaTeX comparison, worker processes on the first isolated call.
"""
from rlsys.rewards.registry import (
    BUILTIN_REWARD_NAMES,
    FACTORY_NAMES,
    REWARD_FACTORIES,
    REWARDS,
    RewardSpecError,
    check_spec_syntax,
    get_reward,
    register_factory,
    register_reward,
    registered_names,
)
from rlsys.rewards.r1 import accuracy, is_r1_format, r1_format  # registers the built-ins
from rlsys.rewards.remote import RemoteReward  # registers the "remote" factory
from rlsys.rewards.equivalence import answers_match, extract_answer, normalize_answer
from rlsys.rewards.scorer import RewardScorer

__all__ = [
    "BUILTIN_REWARD_NAMES",
    "FACTORY_NAMES",
    "REWARDS",
    "REWARD_FACTORIES",
    "RemoteReward",
    "RewardScorer",
    "RewardSpecError",
    "accuracy",
    "answers_match",
    "check_spec_syntax",
    "extract_answer",
    "get_reward",
    "is_r1_format",
    "normalize_answer",
    "r1_format",
    "register_factory",
    "register_reward",
    "registered_names",
]
