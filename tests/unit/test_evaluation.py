"""Held-out evaluation figures from scored groups, against hand computation."""
import json

import pytest

from rlsys.config import ConfigError, load_config
from rlsys.evaluation import eval_tables, evaluate_groups, pass_at_k
from rlsys.protocol import Prompt, Rollout, RolloutGroup
from rlsys.rewards import RewardScorer
from rlsys.specs import eval_sampling

GOOD = "<think>look</think><answer>red</answer>"


def _group(uid, answer, responses):
    prompt = Prompt(uid, [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
                    answer=answer)
    return RolloutGroup(prompt, [Rollout([1], [2] * (k + 1), r, [0.0] * (k + 1), "stop", 0)
                                 for k, r in enumerate(responses)])


def test_pass_at_k_matches_the_combinatorial_definition():
    # 4 samples, 1 right: pass@1 = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6; pass@4 = 1.
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(4, 0, 4) == 0.0
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(2, 3, 1)


def test_figures_come_from_the_first_eval_reward_and_its_components():
    groups = [_group("a", "red", [GOOD, "red", "<think>x</think><answer>blue</answer>", GOOD]),
              _group("b", "blue", [GOOD, GOOD, GOOD, GOOD])]
    with RewardScorer([("accuracy", 1.0), ("r1_format", 0.5)]) as scorer:
        scores = scorer.score_groups(groups)
    result = evaluate_groups(groups, scores)
    # accuracy: group a has 2 right of 4 (a bare "red" has no answer tag), b 0 of 4.
    assert scores[0].components["accuracy"] == [1.0, 0.0, 0.0, 1.0]
    assert result.accuracy == pytest.approx(2 / 8)
    assert result.components["r1_format"] == pytest.approx(7 / 8)  # only the bare "red" is unformatted
    assert result.format_rate == pytest.approx(7 / 8)
    assert result.samples_per_prompt == 4 and result.n == 8
    # pass@4: a has at least one right, b none.
    assert result.pass_at_k == pytest.approx(0.5)
    assert result.response_length_mean == pytest.approx((1 + 2 + 3 + 4) * 2 / 8)
    assert result.metrics()["pass@4"] == pytest.approx(0.5)
    assert result.metrics()["reward/accuracy"] == result.accuracy


def test_a_configured_verifier_that_disagrees_with_accuracy_is_the_one_reported(tmp_path):
    groups = [_group("a", "red", [GOOD]), _group("b", "blue", [GOOD])]
    wrong = lambda response, answer, metadata: 0.0 if answer in response else 1.0  # noqa: E731
    with RewardScorer([(wrong, 1.0, {"name": "contrary"}), ("accuracy", 1.0)]) as scorer:
        scores = scorer.score_groups(groups)
    result = evaluate_groups(groups, scores)
    assert result.components == {"contrary": 0.5, "accuracy": 0.5}
    assert result.accuracy == 0.5
    assert scores[0].components["contrary"] == [0.0] and scores[1].components["contrary"] == [1.0]
    assert scores[0].components["accuracy"] == [1.0] and scores[1].components["accuracy"] == [0.0]
    out = eval_tables(tmp_path / "eval", result, groups, scores, num_samples=1)
    assert json.loads((out / "results.json").read_text())["components"]["contrary"] == 0.5
    assert "| accuracy | 0.5000 |" in (out / "results.md").read_text()
    (row,) = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert row["uid"] == "a" and row["prompt"] == "<image> Colour?" and row["responses"] == [GOOD]
    assert row["components"] == {"contrary": [0.0], "accuracy": [1.0]}


def test_eval_config_rules():
    cfg = load_config(None, ["eval.n=4", "eval.temperature=0.8",
                             "eval.rewards=[{name: accuracy, weight: 1.0}]"])
    s = eval_sampling(cfg)
    assert (s.n, s.temperature, s.seed) == (4, 0.8, 0)
    assert [c.name for c in cfg.eval.rewards] == ["accuracy"]
    with pytest.raises(ConfigError, match="eval.n = 4 with eval.temperature = 0"):
        load_config(None, ["eval.n=4"])
    with pytest.raises(ConfigError, match=r"eval.rewards\[0\].name"):
        load_config(None, ["eval.rewards=[{name: 'no such reward', weight: 1.0}]"])
    with pytest.raises(ConfigError, match="eval.rewards = \\[\\]"):
        load_config(None, ["eval.rewards=[]"])
