"""`alias:` of a reward component names its score key and metric column; `rlsys config
reference` documents the reward name forms and the function signatures."""
from pathlib import Path

import pytest

from rlsys.config import ConfigError, load_config
from rlsys.protocol import Prompt, Rollout, RolloutGroup, ScoredGroup
from rlsys.rewards import RewardScorer
from rlsys.specs import reward_spec

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "configs" / "default.yaml"
TWICE = "reward.components=[{name: accuracy, weight: 1.0, alias: acc}, {name: accuracy, weight: 0.5, alias: acc_half}, {name: r1_format, weight: 0.25}]"


def test_alias_parses_and_names_the_scorer_component():
    cfg = load_config(DEFAULT, [TWICE])
    assert [(c.name, c.weight, c.alias) for c in cfg.reward.components] == [
        ("accuracy", 1.0, "acc"), ("accuracy", 0.5, "acc_half"), ("r1_format", 0.25, None)]
    spec = reward_spec(cfg)
    assert spec.components == (("accuracy", 1.0, (("name", "acc"),)), ("accuracy", 0.5, (("name", "acc_half"),)),
                               ("r1_format", 0.25))
    hash(spec)  # still a hashable frozen spec
    prompt = Prompt(uid="t:0", messages=[{"role": "user", "content": "2+2?"}], answer="4")
    texts = ["<think>a</think><answer>4</answer>", "<answer>5</answer>"]
    group = RolloutGroup(prompt, [Rollout([1], [2], t, [0.0], "stop", 0) for t in texts])
    result = RewardScorer(list(spec.components)).score_group(group)
    assert result.components == {"acc": [1.0, 0.0], "acc_half": [1.0, 0.0], "r1_format": [1.0, 0.0]}
    assert result.rewards == [1.0 + 0.5 + 0.25, 0.0]

    from rlsys.driver import _reward_metrics

    metrics = _reward_metrics([ScoredGroup(group, result)])
    assert metrics["reward/acc"] == 0.5 and metrics["reward/acc_half"] == 0.5
    assert metrics["reward/format_rate"] == 0.5 and "reward/accuracy" not in metrics


@pytest.mark.parametrize("components, message", [
    ("[{name: accuracy, weight: 1.0}, {name: accuracy, weight: 0.5}]",
     "reward.components[1].name = 'accuracy': reward.components[0] already names this column; set a distinct alias"),
    ("[{name: accuracy, weight: 1.0}, {name: r1_format, weight: 0.5, alias: accuracy}]",
     "reward.components[1].alias = 'accuracy': reward.components[0] already names this column; set a distinct alias"),
    ("[{name: accuracy, weight: 1.0, alias: mean}]",
     "reward.components[0].alias = 'mean': reward/mean is a column of its own; reserved: mean, failures, failed"),
    ("[{name: accuracy, weight: 1.0, alias: 'a/b'}]",
     "reward.components[0].alias = 'a/b': must be a non-empty name without surrounding spaces or '/'"),
    ("[{name: accuracy, weight: 1.0, alias: ''}]",
     "reward.components[0].alias = '': must be a non-empty name without surrounding spaces or '/'"),
])
def test_alias_and_column_clashes_are_config_errors(components, message):
    with pytest.raises(ConfigError) as err:
        load_config(DEFAULT, [f"reward.components={components}"])
    assert str(err.value) == message


def test_config_reference_lists_the_reward_forms(capsys):
    from launch.cli import main

    assert main(["config", "reference"]) == 0
    out = capsys.readouterr().out
    name_doc = next(line for line in out.splitlines() if line.strip().startswith("#   name: A rule reward"))
    for form in ("accuracy", "r1_format", "'path/file.py:function'", "'package.module:function'",
                 "http(s) URL", "'remote' factory",
                 "fn(response, answer, metadata) -> float", "fn(sample) -> float", "fn(samples) -> list[float]",
                 "fn(group) -> list[float]", "fn(completions, **kwargs) -> list[float]"):
        assert form in name_doc, form
    assert "#   alias: Name of the component's metric column (reward/<alias>)" in out
