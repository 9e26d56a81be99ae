"""check_reward_forms and probe_rewards: user rewards checked before any actor starts.

A reward function whose signature no form accepts (forms.py), an import error, or a return
value that is not a number would otherwise only show up as a reward failure on every sample,
steps into a run. `check_reward_forms` loads each user reward and reads its signature (no call,
no data needed: `rlsys train` runs it first, in about a second); `probe_rewards` then calls each
once on a real prompt. Both make a broken reward a launch error, one line naming it.
"""
from __future__ import annotations

import logging

from typing import Sequence

from rlsys.protocol import Prompt, Rollout, RolloutGroup
from rlsys.rewards.errors import RewardSpecError
from rlsys.rewards.forms import reward_form
from rlsys.rewards.registry import REWARD_FACTORIES, get_reward, is_trusted, is_url
from rlsys.rewards.scorer import RewardScorer

#: The probe sample's response: R1-formatted, so a reward that parses the format gets input
#: of the shape it expects.
PROBE_RESPONSE = "<think>probe</think><answer>probe</answer>"


def _is_user_spec(spec: object) -> bool:
    return isinstance(spec, str) and not (is_trusted(spec) or spec in REWARD_FACTORIES or is_url(spec))


def check_reward_forms(components: Sequence[tuple]) -> dict[str, str]:
    """Load each user reward of `components` ([(spec, weight, ...)]) and read its form.

    Returns spec -> form kind (forms.py). Raises RewardSpecError, one line naming the spec, when
    a spec cannot be loaded or its signature is none of the accepted forms.
    """
    return {spec: reward_form(get_reward(spec), spec).kind
            for spec in dict.fromkeys(c[0] for c in components if _is_user_spec(c[0]))}


def probe_rewards(components: Sequence[tuple], prompt: Prompt, timeout_s: float = 10.0) -> None:
    """Call each user reward (not a built-in, factory or URL) once on a probe sample: `prompt`
    (a real dataset prompt, for its messages, images, answer and metadata) with the response
    PROBE_RESPONSE, as a group of one (group and TRL forms get one-element lists).

    components: [(spec, weight, ...)] as in the config; only the specs are used.
    timeout_s:  the call's deadline (reward.timeout_s); calls run in a short-lived worker.
    Raises RewardSpecError, one line naming the spec, when a spec cannot be loaded or its call
    raises, times out or returns something that is not a finite number. Returns None when all
    pass.
    """
    specs = list(dict.fromkeys(c[0] for c in components if _is_user_spec(c[0])))
    if not specs:
        return
    group = RolloutGroup(prompt, [Rollout([], [], PROBE_RESPONSE, [], "stop", 0)])
    # Loading happens here (RewardSpecError naming the spec), the call in a worker process. The
    # scorer's own failure warning is held back: the probe's error is the one line to show.
    log = logging.getLogger("rlsys.rewards")
    level, log.level = log.level, logging.ERROR
    try:
        with RewardScorer([(spec, 1.0) for spec in specs], timeout_s=timeout_s, max_workers=len(specs)) as scorer:
            [result] = scorer.score_groups([group])
    finally:
        log.setLevel(level)
    for spec in specs:
        if spec in result.first_failure:
            raise RewardSpecError(f"reward {spec!r}: probe call failed: {result.first_failure[spec].error}")
