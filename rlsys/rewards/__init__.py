"""Rewards: registry, R1 format/accuracy, answer equivalence, user functions, remote HTTP.

A reward function takes one of five forms, read once from its signature when it is loaded
(forms.py; `RewardInput` is in rlsys/protocol.py):

    fn(response, answer, metadata) -> float     per sample, the texts only (all built-ins)
    fn(sample) -> float                         per sample, a RewardInput: prompt messages,
                                                decoded images, answer, metadata, response,
                                                the group's responses, index
    fn(samples) -> list[float]                  the batch's RewardInputs in one call
    fn(group) -> list[float]                    the G RewardInputs of one prompt per call
    fn(completions, **kwargs) -> list[float]    TRL's GRPOTrainer convention: keyword lists
                                                prompts, completions, answer, images, metadata
                                                columns; None entries are failed samples

Any other signature is a RewardSpecError at load. `RewardScorer` combines weighted components
and bounds every call (see scorer.py); `check_reward_forms` and `probe_rewards` check user
rewards before a run, `FailureGuard` ends a run whose component keeps failing.

Importing this package is light (no math-verify/sympy, no torch): math-verify loads on the
first LaTeX comparison, worker processes on the first isolated call.

Import order is the registration order: the registry first, then the modules that register
into it (r1: the built-ins, remote: the "remote" factory). No submodule imports this package,
so the module graph has no cycle.
"""
from rlsys.rewards.errors import RewardFailureError, RewardSpecError
from rlsys.rewards.registry import (
    BUILTIN_REWARD_NAMES,
    FACTORY_NAMES,
    REWARD_FACTORIES,
    REWARDS,
    check_spec_syntax,
    get_reward,
    register_factory,
    register_reward,
    registered_names,
)
from rlsys.rewards.r1 import accuracy, is_r1_format, r1_format
from rlsys.rewards.remote import RemoteReward
from rlsys.rewards.equivalence import answers_match, extract_answer, normalize_answer
from rlsys.rewards.scorer import RewardScorer
from rlsys.rewards.failures import FailureGuard
from rlsys.rewards.forms import Form, reward_form
from rlsys.rewards.probe import check_reward_forms, probe_rewards

__all__ = [
    "BUILTIN_REWARD_NAMES",
    "FACTORY_NAMES",
    "FailureGuard",
    "Form",
    "REWARDS",
    "REWARD_FACTORIES",
    "RemoteReward",
    "RewardFailureError",
    "RewardScorer",
    "RewardSpecError",
    "accuracy",
    "answers_match",
    "check_reward_forms",
    "check_spec_syntax",
    "extract_answer",
    "get_reward",
    "is_r1_format",
    "normalize_answer",
    "probe_rewards",
    "r1_format",
    "register_factory",
    "register_reward",
    "registered_names",
    "reward_form",
]
