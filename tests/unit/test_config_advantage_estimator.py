"""algorithm.advantage_estimator: null follows the algorithm; a registered name or a user
function file/module is selected through the config and used by build_train_batch."""
import textwrap

import pytest

from rlsys.batching import build_train_batch
from rlsys.config import ALGORITHM_ADVANTAGE, ConfigError, documented_yaml, load_config
from rlsys.plugins import PluginError
from rlsys.protocol import Prompt, RewardResult, Rollout, RolloutGroup, ScoredGroup

# Advantage = (reward - 0.25) * (position + 1) * gamma on valid tokens; returns = 2 * advantage.
USER_ESTIMATOR = textwrap.dedent('''
    import torch
    from rlsys.algorithms import AdvantageOutputs

    def my_adv(inputs, params):
        mask = inputs.response_mask.bool()
        position = torch.arange(mask.shape[1], dtype=torch.float32).expand(mask.shape)
        adv = torch.where(mask, (inputs.rewards[:, None] - 0.25) * (position + 1) * params.gamma, 0.0)
        return AdvantageOutputs(adv, 2 * adv)

    def not_outputs(inputs, params):
        return inputs.rewards
''')


@pytest.fixture
def estimator_file(tmp_path):
    path = tmp_path / "my_estimator.py"
    path.write_text(USER_ESTIMATOR)
    return path


def _scored(rewards, lengths, values=False):
    """One prompt's group: response i has lengths[i] tokens and reward rewards[i]."""
    rollouts = [Rollout([7, 8], list(range(1, n + 1)), "x", [-0.5] * n, "stop", policy_version=0)
                for n in lengths]
    group = RolloutGroup(Prompt("p", [{"role": "user", "content": "q"}], answer="1"), rollouts)
    return ScoredGroup(group, RewardResult(list(rewards), {}),
                       values=[[0.0] * n for n in lengths] if values else None)


@pytest.mark.parametrize("name", sorted(ALGORITHM_ADVANTAGE))
def test_null_follows_the_algorithm(name):
    cfg = load_config(None, [f"algorithm.name={name}"] + (["critic.enabled=true"] if name == "ppo" else []))
    assert cfg.algorithm.advantage_estimator is None
    assert cfg.advantage_estimator == ALGORITHM_ADVANTAGE[name]


def test_a_registered_estimator_overrides_the_algorithms_own():
    cfg = load_config(None, ["algorithm.name=reinforce_pp", "algorithm.advantage_estimator=rloo"])
    assert cfg.advantage_estimator == "rloo"
    batch, _ = build_train_batch([_scored([1.0, 0.0, 0.0], [1, 1, 1])], cfg.algorithm, cfg.advantage_estimator, 0)
    assert [round(float(s.advantages[0]), 4) for s in batch.samples] == [1.0, -0.5, -0.5]


def test_user_estimator_file_is_selected_and_used(estimator_file):
    spec = f"{estimator_file}:my_adv"
    cfg = load_config(None, [f"algorithm.advantage_estimator={spec}", "algorithm.gamma=0.5"])
    assert cfg.advantage_estimator == spec
    batch, stats = build_train_batch([_scored([1.0, 0.0], [2, 3])], cfg.algorithm, cfg.advantage_estimator, 3)
    # (1 - 0.25) * [1, 2] * 0.5 and (0 - 0.25) * [1, 2, 3] * 0.5
    assert batch.samples[0].advantages.tolist() == [0.375, 0.75]
    assert batch.samples[1].advantages.tolist() == [-0.125, -0.25, -0.375]
    assert batch.samples[0].returns is None  # critic-free: value targets are not shipped
    assert stats.advantage_abs_mean == pytest.approx((0.375 + 0.75 + 0.125 + 0.25 + 0.375) / 5)


def test_user_estimator_gets_critic_values_under_ppo(monkeypatch, estimator_file):
    monkeypatch.syspath_prepend(str(estimator_file.parent))
    cfg = load_config(None, ["algorithm.name=ppo", "critic.enabled=true",
                             "algorithm.advantage_estimator=my_estimator:my_adv"])
    batch, _ = build_train_batch([_scored([1.0, 0.0], [1, 2], values=True)], cfg.algorithm, cfg.advantage_estimator, 0)
    assert batch.samples[0].advantages.tolist() == [0.75]
    assert batch.samples[1].returns.tolist() == [-0.5, -1.0]


def test_what_only_loading_can_find_names_the_estimator(estimator_file):
    scored = [_scored([1.0, 0.0], [1, 1])]
    algo = load_config(None).algorithm
    with pytest.raises(PluginError, match=r"my_estimator.py:missing: no function 'missing' in .*my_estimator.py"):
        build_train_batch(scored, algo, f"{estimator_file}:missing", 0)
    with pytest.raises(ValueError, match=r"advantage estimator '.*:not_outputs' must return AdvantageOutputs"):
        build_train_batch(scored, algo, f"{estimator_file}:not_outputs", 0)


@pytest.mark.parametrize("overrides, expected", [
    (["algorithm.advantage_estimator=nope"],
     r"^algorithm.advantage_estimator = 'nope': must be null, one of gae, grpo, reinforce_pp, rloo, "
     r"'path/file.py:function' or 'module:function'$"),
    (["algorithm.advantage_estimator="], r"^algorithm.advantage_estimator = '': must be null, one of gae"),
    (["algorithm.advantage_estimator=/no/such.py:fn"],
     r"^algorithm.advantage_estimator = '/no/such.py:fn': file '/no/such.py' not found$"),
    (["algorithm.advantage_estimator=pkg.mod:1fn"], r"^algorithm.advantage_estimator = 'pkg.mod:1fn': expected"),
    (["algorithm.advantage_estimator=gae"], r"^algorithm.advantage_estimator = 'gae': gae needs critic values"),
    (["algorithm.name=ppo", "critic.enabled=true", "algorithm.advantage_estimator=reinforce_pp"],
     r"^algorithm.advantage_estimator = 'reinforce_pp': ppo trains a critic that reinforce_pp ignores"),
    (["algorithm.name=reinforce_pp", "algorithm.advantage_estimator=rloo", "rollout.n=1"],
     r"^rollout.n = 1: rloo needs >= 2 samples per prompt"),
    (["algorithm.advantage_estimator=grpo", "algorithm.kl_coef=0.1", "algorithm.kl_in_reward=true"],
     r"^algorithm.kl_in_reward = true: grpo takes sequence rewards only"),
    (["algorithm.kl_coef=0.1", "algorithm.kl_in_reward=true"],  # the rule holds for the default too
     r"^algorithm.kl_in_reward = true: grpo takes sequence rewards only"),
])
def test_bad_estimators_fail_in_one_line_naming_the_field(overrides, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(None, overrides)
    assert "\n" not in str(info.value)


def test_the_field_is_documented_in_the_reference():
    text = documented_yaml()
    assert "  advantage_estimator: null" in text
    assert "null follows `name` (grpo -> grpo, rloo -> rloo, reinforce_pp -> reinforce_pp, ppo -> gae)" in text
