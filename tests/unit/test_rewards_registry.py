"""Reward registry and spec resolution (names, files, modules, URLs, errors)."""
import subprocess
import sys
import textwrap

import pytest

from rlsys.rewards import (
    BUILTIN_REWARD_NAMES,
    FACTORY_NAMES,
    REWARDS,
    RemoteReward,
    RewardSpecError,
    check_spec_syntax,
    get_reward,
    register_reward,
    registered_names,
)


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(textwrap.dedent("""
        def length_bonus(response, answer, metadata):
            return min(len(response), 10) / 10

        CONSTANT = 3
    """))
    return path


def test_builtin_names_constant_matches_registry():
    names = registered_names()
    assert set(BUILTIN_REWARD_NAMES) <= set(REWARDS)
    assert set(BUILTIN_REWARD_NAMES) | set(FACTORY_NAMES) <= set(names)


def test_registry_module_is_import_light():
    code = ("import sys, rlsys.rewards.registry as r; "
            "assert 'math_verify' not in sys.modules and 'sympy' not in sys.modules; "
            "assert 'torch' not in sys.modules; r.check_spec_syntax('accuracy'); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_get_builtin_by_name():
    assert get_reward("r1_format")("<think></think><answer>1</answer>", None, {}) == 1.0


def test_unknown_name_lists_registered():
    with pytest.raises(RewardSpecError) as err:
        get_reward("acuracy")
    assert "acuracy" in str(err.value) and "accuracy" in str(err.value) and "r1_format" in str(err.value)


def test_register_decorator_and_conflict():
    @register_reward("test_registry_const")
    def const(response, answer, metadata):
        return 0.25

    assert get_reward("test_registry_const") is const
    register_reward("test_registry_const")(const)  # same function again: fine
    with pytest.raises(RewardSpecError):
        register_reward("test_registry_const")(lambda r, a, m: 1.0)
    REWARDS.pop("test_registry_const")


def test_file_spec(user_file):
    fn = get_reward(f"{user_file}:length_bonus")
    assert fn("abcde", None, {}) == 0.5


def test_file_spec_relative(user_file, monkeypatch):
    monkeypatch.chdir(user_file.parent)
    assert get_reward("./my_reward.py:length_bonus")("a" * 20, None, {}) == 1.0


def test_missing_file_names_spec(tmp_path):
    spec = f"{tmp_path}/nope.py:fn"
    with pytest.raises(RewardSpecError, match="file .* not found") as err:
        get_reward(spec)
    assert spec in str(err.value)


def test_missing_function_names_spec(user_file):
    spec = f"{user_file}:nope"
    with pytest.raises(RewardSpecError, match="no function 'nope'") as err:
        get_reward(spec)
    assert spec in str(err.value) and "length_bonus" in str(err.value)


def test_not_callable(user_file):
    with pytest.raises(RewardSpecError, match="not callable"):
        get_reward(f"{user_file}:CONSTANT")


def test_broken_file_import(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(RewardSpecError, match="boom at import"):
        get_reward(f"{path}:fn")


def test_module_spec():
    fn = get_reward("rlsys.rewards.r1:accuracy")
    assert fn("<answer>3</answer>", "3", {}) == 1.0


def test_missing_module_names_spec():
    with pytest.raises(RewardSpecError, match="no_such_pkg_xyz"):
        get_reward("no_such_pkg_xyz.mod:fn")


def test_url_spec_and_factory():
    remote = get_reward("http://127.0.0.1:1/score", timeout_s=0.5)
    assert isinstance(remote, RemoteReward) and remote.timeout_s == 0.5
    remote2 = get_reward("remote", url="http://127.0.0.1:1/score")
    assert isinstance(remote2, RemoteReward)
    with pytest.raises(RewardSpecError, match="bad options"):
        get_reward("remote")


@pytest.mark.parametrize("spec", ["", None, "nonsense", "file.py:", "mod:not-an-identifier"])
def test_check_spec_syntax_rejects(spec):
    with pytest.raises(RewardSpecError):
        check_spec_syntax(spec)


@pytest.mark.parametrize("spec", ["accuracy", "remote", "a/b.py:f", "pkg.mod:f", "https://x/score"])
def test_check_spec_syntax_accepts(spec):
    check_spec_syntax(spec)
