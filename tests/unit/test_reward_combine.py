"""Reward-model scores joined with the rule rewards, and per-batch standardisation, against
hand-computed values (rlsys/rewards/combine.py); the judge exemption of the failure guard."""
import math

import pytest

from rlsys.protocol import ModelScores, Prompt, RewardResult, Rollout, RolloutGroup, ScoredGroup
from rlsys.recording import RolloutRecorder
from rlsys.rewards import FailureGuard
from rlsys.rewards.combine import normalize_batch, standardize, with_model_scores


def _result(rewards, accuracy):
    return RewardResult(list(rewards), {"accuracy": list(accuracy)}, component_failures={"accuracy": 0})


def test_model_scores_add_weighted_and_keep_raw():
    base = _result([1.0, 0.0], [1.0, 0.0])
    fail = RewardResult.Failure("no <score> tag", "syn:1", 1)
    out = with_model_scores(base, "judge", 0.5, ModelScores([8.0, 0.0], 1, fail, ["good.<score>8</score>", "??"]))
    assert out.rewards == [1.0 + 0.5 * 8.0, 0.0]
    assert out.components == {"accuracy": [1.0, 0.0], "judge": [8.0, 0.0]}
    assert out.failures == 1 and out.component_failures == {"accuracy": 0, "judge": 1}
    assert out.first_failure == {"judge": fail} and out.texts == {"judge": ["good.<score>8</score>", "??"]}
    assert base.components == {"accuracy": [1.0, 0.0]} and base.texts == {}  # the input is untouched
    scalar = with_model_scores(base, "rm", 2.0, ModelScores([0.25, -0.5]))
    assert scalar.rewards == [1.5, -1.0] and "rm" not in scalar.texts and "rm" not in scalar.first_failure


def test_model_scores_must_cover_the_group():
    with pytest.raises(ValueError, match="reward model rm: 1 scores for 2 samples"):
        with_model_scores(_result([0, 0], [0, 0]), "rm", 1.0, ModelScores([1.0]))


def test_standardize_by_hand():
    # mean 2, population std sqrt(2/3)
    z = standardize([1.0, 2.0, 3.0])
    s = math.sqrt(2 / 3)
    assert z == pytest.approx([-1 / s, 0.0, 1 / s])
    assert standardize([4.0, 4.0]) == [0.0, 0.0] and standardize([]) == []


def _scored(rewards, rm):
    prompt = Prompt("p", [{"role": "user", "content": "q"}])
    group = RolloutGroup(prompt, [Rollout([1], [2], "x", [0.0], "stop", 0) for _ in rewards])
    result = with_model_scores(_result([0.0] * len(rewards), rewards), "rm", 2.0, ModelScores(rm))
    result.rewards = [a + 2.0 * s for a, s in zip(rewards, rm)]  # accuracy weight 1 + rm
    return ScoredGroup(group, result)


def test_normalize_batch_replaces_the_weighted_share_only():
    batch = [_scored([1.0, 0.0], [1.0, 3.0]), _scored([0.0, 0.0], [5.0, 7.0])]
    # rm over the batch: 1, 3, 5, 7 -> mean 4, std sqrt(5)
    out = normalize_batch(batch, "rm", 2.0)
    z = [(v - 4.0) / math.sqrt(5.0) for v in (1.0, 3.0, 5.0, 7.0)]
    got = [r for sg in out for r in sg.reward.rewards]
    assert got == pytest.approx([1.0 + 2 * z[0], 0.0 + 2 * z[1], 2 * z[2], 2 * z[3]])
    assert out[1].reward.components["rm"] == [5.0, 7.0]  # raw scores kept for metrics and records
    assert batch[0].reward.rewards == [3.0, 6.0]  # the input batch is untouched


def test_failure_guard_counts_but_never_stops_on_an_exempt_judge():
    garbled = RewardResult([0.0] * 4, {"judge": [0.0] * 4}, failures=4, component_failures={"judge": 4},
                           first_failure={"judge": RewardResult.Failure("no tag", "u", 0)})
    guard = FailureGuard(0.5, 2, exempt=("judge",))
    for _ in range(5):
        guard.observe([garbled])
    strict = FailureGuard(0.5, 2)
    strict.observe([garbled])
    with pytest.raises(Exception, match="reward 'judge' failed on 4 of 4 samples for 2"):
        strict.observe([garbled])


def test_critiques_are_recorded_beside_their_samples(tmp_path):
    import pyarrow.parquet as pq

    sg = _scored([1.0, 0.0], [1.0, 3.0])
    sg.reward.texts = {"judge": ["sees red: right.<score>10</score>", "garbled"]}
    RolloutRecorder(tmp_path).write(1, [sg, _scored([0.0], [2.0])])
    rows = pq.read_table(tmp_path).to_pylist()
    assert [dict(r["reward_texts"]) for r in rows] == [
        {"judge": "sees red: right.<score>10</score>"}, {"judge": "garbled"}, {}]
