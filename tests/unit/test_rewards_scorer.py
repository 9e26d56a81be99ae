"""RewardScorer: weighted combination, isolation of user functions, failures and timeouts."""
import textwrap
import time

import pytest

from rlsys.protocol import Prompt, Rollout, RewardResult, RolloutGroup
from rlsys.rewards import RewardScorer

USER_CODE = textwrap.dedent("""
    import os, time

    def tenth_len(response, answer, metadata):
        return len(response) / 10

    def boom(response, answer, metadata):
        if "boom" in response:
            raise RuntimeError("user bug")
        return 1.0

    def hang(response, answer, metadata):
        if "hang" in response:
            time.sleep(60)
        return 1.0

    def die(response, answer, metadata):
        if "die" in response:
            os._exit(3)
        return 1.0

    def not_a_number(response, answer, metadata):
        return "high" if "bad" in response else float("nan") if "nan" in response else 0.5

    def echo_meta(response, answer, metadata):
        return float(metadata.get("w", 0)) + (1.0 if answer is None else 0.0)
""")


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rewards") / "user_rewards.py"
    path.write_text(USER_CODE)
    return str(path)


def make_group(texts, answer="4", metadata=None):
    prompt = Prompt(uid="t:0", messages=[{"role": "user", "content": "2+2?"}], answer=answer,
                    metadata=metadata or {})
    rollouts = [Rollout([1], [2], t, [0.0], "stop", 0) for t in texts]
    return RolloutGroup(prompt=prompt, rollouts=rollouts)


def test_weighted_combination_by_hand(user_file):
    texts = ["<think>ok</think><answer>4</answer>",  # format 1, acc 1, len 35 -> 3.5
             "<answer>4</answer>",  # format 0, acc 1, len 18 -> 1.8
             "<think>x</think><answer>5</answer>"]  # format 1, acc 0, len 34 -> 3.4
    comps = [("r1_format", 0.5), ("accuracy", 1.0), (f"{user_file}:tenth_len", 2.0)]
    with RewardScorer(comps, timeout_s=5, max_workers=1) as scorer:
        result = scorer.score_group(make_group(texts))
    assert result.components["r1_format"] == [1.0, 0.0, 1.0]
    assert result.components["accuracy"] == [1.0, 1.0, 0.0]
    assert result.components[f"{user_file}:tenth_len"] == pytest.approx([3.5, 1.8, 3.4])
    # 0.5*1 + 1*1 + 2*3.5 = 8.5 ; 0 + 1 + 3.6 = 4.6 ; 0.5 + 0 + 6.8 = 7.3
    assert result.rewards == pytest.approx([8.5, 4.6, 7.3])
    assert result.failures == 0 and scorer.failures == 0


def test_inline_builtins_do_not_start_workers():
    scorer = RewardScorer([("r1_format", 1.0), ("accuracy", 1.0)])
    result = scorer.score_group(make_group(["<think>a</think><answer>4</answer>", "", None]))
    assert result.rewards == [2.0, 0.0, 0.0] and scorer._pool is None


def test_raising_user_function_scores_zero_and_counts(user_file):
    with RewardScorer([(f"{user_file}:boom", 1.0)], timeout_s=5, max_workers=2) as scorer:
        result = scorer.score_group(make_group(["fine", "boom", "fine", "boom"]))
        assert result.rewards == [1.0, 0.0, 1.0, 0.0]
        assert result.failures == 2
        assert scorer.failures == 2 and scorer.timeouts == 0 and scorer.calls == 4
        assert scorer.worker_restarts == 0  # an exception does not cost the worker


def test_hanging_user_function_times_out_fast(user_file):
    timeout = 1.0
    with RewardScorer([(f"{user_file}:hang", 1.0)], timeout_s=timeout, max_workers=2) as scorer:
        scorer.score_group(make_group(["ok"]))  # workers up: start-up is not charged to a batch
        start = time.monotonic()
        result = scorer.score_group(make_group(["ok", "hang", "ok"]))
        assert (time.monotonic() - start) / timeout < 4  # the deadline, not the 60 s sleep
        assert result.rewards == [1.0, 0.0, 1.0]
        assert result.failures == 1 and scorer.timeouts == 1 and scorer.worker_restarts == 1
        again = scorer.score_group(make_group(["ok", "ok"]))  # replacement worker serves on
        assert again.rewards == [1.0, 1.0] and again.failures == 0
        assert scorer.stats()[f"failures/{user_file}:hang"] == 1


def test_hanging_batch_costs_one_deadline_and_spares_other_components(user_file):
    hang, tenth = f"{user_file}:hang", f"{user_file}:tenth_len"
    timeout = 1.0
    with RewardScorer([(hang, 1.0), (tenth, 1.0)], timeout_s=timeout, max_workers=2) as scorer:
        scorer.score_group(make_group(["ok"]))
        start = time.monotonic()
        [a, b] = scorer.score_groups([make_group(["hang"] * 8), make_group(["hang"] * 8)])
        elapsed = time.monotonic() - start
        # In series, 16 hanging calls on 2 workers would cost 8 deadlines.
        assert elapsed / timeout < 4
        for result in (a, b):
            assert result.components[hang] == [0.0] * 8 and result.components[tenth] == [0.4] * 8
            assert result.component_failures == {hang: 8, tenth: 0} and result.failures == 8
        # The first call ran until the deadline; the others were never started.
        assert a.first_failure == {hang: RewardResult.Failure(
            "timed out: still running at the 1s batch deadline", "t:0", 0)}
        assert b.first_failure[hang].error == "timed out: not started by the 1s batch deadline"
        # hang held one worker; tenth_len finished on the other, which then took a hang call.
        assert scorer.timeouts == 16 and scorer.failures == 16 and scorer.worker_restarts == 2
        assert scorer.score_group(make_group(["x" * 5])).rewards == [1.0 + 0.5]


def test_worker_killed_by_user_function(user_file):
    with RewardScorer([(f"{user_file}:die", 1.0)], timeout_s=5, max_workers=1) as scorer:
        result = scorer.score_group(make_group(["die", "ok"]))
        assert result.rewards == [0.0, 1.0] and result.failures == 1
        assert scorer.worker_restarts == 1


def test_non_numeric_and_nan_are_failures(user_file):
    name = f"{user_file}:not_a_number"
    with RewardScorer([(name, 1.0)], timeout_s=5, max_workers=1) as scorer:
        result = scorer.score_group(make_group(["x", "bad", "nan", "x"]))
    assert result.rewards == [0.5, 0.0, 0.0, 0.5] and result.failures == 2
    assert result.first_failure == {name: RewardResult.Failure(
        "TypeError: reward returned str 'high', expected a number", "t:0", 1)}


def test_module_function_spec(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg_rewards"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "funcs.py").write_text("def is_four(response, answer, metadata):\n"
                                  "    return float(response.strip() == answer)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with RewardScorer([("userpkg_rewards.funcs:is_four", 1.0)], timeout_s=5, max_workers=1) as scorer:
        result = scorer.score_group(make_group([" 4 ", "5"]))
    assert result.rewards == [1.0, 0.0]


def test_metadata_answer_and_adversarial_text_reach_user_function(user_file):
    comps = [(f"{user_file}:echo_meta", 1.0, {"name": "meta"})]
    with RewardScorer(comps, timeout_s=5, max_workers=1) as scorer:
        group = make_group(["\udcff", "x" * 20_000, "", None], answer=None, metadata={"w": 2})
        result = scorer.score_group(group)
    assert result.components["meta"] == [3.0, 3.0, 3.0, 3.0] and result.failures == 0


def test_callables_and_unpicklable_lambdas():
    scorer = RewardScorer([(lambda r, a, m: 1 / 0, 1.0, {"name": "div0"}), ("r1_format", 1.0)])
    result = scorer.score_group(make_group(["a", "b"]))  # lambda runs inline, still counted
    assert result.rewards == [0.0, 0.0] and result.failures == 2 and scorer.failures == 2


def test_score_groups_batch_splits_failures(user_file):
    comps = [("accuracy", 1.0), (f"{user_file}:boom", 1.0)]
    with RewardScorer(comps, timeout_s=5, max_workers=2) as scorer:
        results = scorer.score_groups([
            make_group(["<answer>4</answer>", "boom"]),
            make_group(["boom", "boom", "x"], answer="x"),
        ])
    assert [r.rewards for r in results] == [[2.0, 0.0], [0.0, 0.0, 1.0]]
    assert [r.failures for r in results] == [1, 2]
    assert [r.component_failures for r in results] == [{"accuracy": 0, comps[1][0]: 1},
                                                        {"accuracy": 0, comps[1][0]: 2}]
    # Sample indices count within each group.
    boom = RewardResult.Failure("RuntimeError: user bug", "t:0", 1)
    assert [r.first_failure for r in results] == [{comps[1][0]: boom},
                                                   {comps[1][0]: RewardResult.Failure(boom.error, "t:0", 0)}]
    assert scorer.failures == 3


def test_bad_component_config_errors():
    with pytest.raises(ValueError):
        RewardScorer([])
    with pytest.raises(ValueError, match="duplicate"):
        RewardScorer([("accuracy", 1.0), ("accuracy", 0.5)])
    with pytest.raises(ValueError, match="unknown reward"):
        RewardScorer([("acc", 1.0)])


def test_idle_worker_death_is_not_a_reward_failure(user_file):
    with RewardScorer([(f"{user_file}:tenth_len", 1.0)], timeout_s=5, max_workers=1) as scorer:
        assert scorer.score_group(make_group(["a" * 10])).rewards == [1.0]
        idle = scorer._pool._idle[0]
        idle.proc.kill()  # e.g. the OOM killer, between two steps
        idle.proc.join(5)
        result = scorer.score_group(make_group(["a" * 20]))
        assert result.rewards == [2.0] and result.failures == 0


def test_isolate_builtins_runs_them_in_workers():
    with RewardScorer([("accuracy", 1.0)], timeout_s=10, max_workers=1, isolate_builtins=True) as scorer:
        result = scorer.score_group(make_group(["<answer>4</answer>", "<answer>5</answer>"]))
        assert result.rewards == [1.0, 0.0] and scorer._pool is not None
