"""FailureGuard: a reward component failing on most samples for several steps ends the run."""
import pytest

from rlsys.protocol import Prompt, Rollout, RewardResult, RolloutGroup
from rlsys.rewards import FailureGuard, RewardFailureError, RewardScorer


def result(failed: dict, n: int = 4, uid: str = "p:0", index: int = 0, error: str = "ValueError: bad"):
    """One group's result of n samples; failed: component -> failed calls."""
    return RewardResult(
        rewards=[0.0] * n, components={name: [0.0] * n for name in failed},
        failures=sum(failed.values()), component_failures=dict(failed),
        first_failure={name: RewardResult.Failure(error, uid, index) for name, k in failed.items() if k})


def test_raises_on_the_third_consecutive_step_over_the_fraction():
    guard = FailureGuard(max_failure_frac=0.5, max_failed_steps=3)
    step = [result({"u.py:f": 3, "accuracy": 0}), result({"u.py:f": 2, "accuracy": 0})]  # 5 of 8
    guard.observe(step)
    guard.observe(step)
    assert guard.streak == {"u.py:f": 2}
    with pytest.raises(RewardFailureError) as err:
        guard.observe([result({"u.py:f": 0, "accuracy": 0}, n=2),  # 4 of 6, all in the second group
                       result({"u.py:f": 4, "accuracy": 0}, uid="p:7", index=2, error="TypeError: x")])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == ("reward 'u.py:f' failed on 4 of 6 samples for 3 consecutive steps "
                   "(reward.max_failure_frac = 0.5, reward.max_failed_steps = 3); first failure this "
                   "step: prompt 'p:7' sample 2: TypeError: x")


def test_exactly_the_fraction_is_not_a_failed_step():
    guard = FailureGuard(max_failure_frac=0.5, max_failed_steps=1)
    guard.observe([result({"f": 4}), result({"f": 0})])  # 4 of 8 = 0.5, not more
    assert guard.streak == {}
    with pytest.raises(RewardFailureError, match="failed on 5 of 8 samples for 1 consecutive steps"):
        guard.observe([result({"f": 4}), result({"f": 1})])


def test_a_good_step_resets_the_streak():
    guard = FailureGuard(max_failure_frac=0.25, max_failed_steps=3)
    bad, good = [result({"f": 2})], [result({"f": 1})]  # 2/4 > 0.25; 1/4 is not
    for step in (bad, bad, good, bad, bad):
        guard.observe(step)
    assert guard.streak == {"f": 2}
    with pytest.raises(RewardFailureError, match="'f' failed on 2 of 4 samples for 3 consecutive"):
        guard.observe(bad)


def test_only_the_failing_component_is_named_and_one_is_off():
    guard = FailureGuard(max_failure_frac=1.0, max_failed_steps=1)  # 1.0: never
    for _ in range(5):
        guard.observe([result({"a": 4, "b": 4})])
    guard = FailureGuard(max_failure_frac=0.0, max_failed_steps=2)
    guard.observe([result({"a": 0, "b": 1})])
    with pytest.raises(RewardFailureError) as err:
        guard.observe([result({"a": 0, "b": 1})])
    assert str(err.value).startswith("reward 'b' failed on 1 of 4")


def test_bad_settings():
    with pytest.raises(ValueError, match="max_failure_frac = 1.5"):
        FailureGuard(max_failure_frac=1.5)
    with pytest.raises(ValueError, match="max_failed_steps = 0"):
        FailureGuard(max_failed_steps=0)


def test_a_user_reward_that_always_raises_ends_the_run(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def reward(response, answer, metadata):\n    raise KeyError('solution')\n")
    spec = f"{path}:reward"
    guard = FailureGuard(max_failure_frac=0.5, max_failed_steps=2)
    prompt = Prompt(uid="q:3", messages=[{"role": "user", "content": "2+2?"}], answer="4")
    group = RolloutGroup(prompt, [Rollout([1], [2], "<answer>4</answer>", [0.0], "stop", 0)] * 3)
    with RewardScorer([("accuracy", 1.0), (spec, 1.0)], timeout_s=5, max_workers=1) as scorer:
        guard.observe(scorer.score_groups([group]))
        with pytest.raises(RewardFailureError) as err:
            guard.observe(scorer.score_groups([group]))
    assert str(err.value) == (
        f"reward {spec!r} failed on 3 of 3 samples for 2 consecutive steps (reward.max_failure_frac "
        "= 0.5, reward.max_failed_steps = 2); first failure this step: prompt 'q:3' sample 0: "
        "KeyError: 'solution'")
