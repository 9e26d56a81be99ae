"""probe_rewards: one real call of each user reward before a run, one-line errors naming the spec."""
import json
import textwrap

import pytest

from rlsys.protocol import Prompt
from rlsys.rewards import RewardSpecError, check_reward_forms, probe_rewards
from rlsys.rewards.forms import ACCEPTED
from rlsys.rewards.probe import PROBE_RESPONSE

PROMPT = Prompt(uid="train:0", messages=[{"role": "user", "content": "How many?"}], answer="3",
                metadata={"family": "count"})


def write(tmp_path, name, body):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return f"{path}:reward"


def probe_error(spec, timeout_s=10.0):
    with pytest.raises(RewardSpecError) as err:
        probe_rewards([("accuracy", 1.0), (spec, 0.5)], PROMPT, timeout_s=timeout_s)
    msg = str(err.value)
    assert "\n" not in msg and repr(spec) in msg
    return msg


def test_good_reward_passes_and_sees_the_probe_sample(tmp_path):
    seen = tmp_path / "seen.json"
    spec = write(tmp_path, "good", f"""
        import json

        def reward(response, answer, metadata):
            with open({str(seen)!r}, "w") as f:
                json.dump([response, answer, metadata], f)
            return 1.0
    """)
    assert probe_rewards([("accuracy", 1.0), ("r1_format", 0.5), (spec, 1.0)], PROMPT) is None
    assert json.loads(seen.read_text()) == [PROBE_RESPONSE, "3", {"family": "count"}]


def test_only_builtins_is_a_no_op():
    assert probe_rewards([("accuracy", 1.0), ("r1_format", 0.5)], PROMPT) is None


def test_signature_no_form_accepts(tmp_path):
    # `completion` (singular) is neither TRL's `completions` nor three positional arguments.
    spec = write(tmp_path, "trl", """
        def reward(completion, answer=None, **kwargs):
            return 1.0
    """)
    assert probe_error(spec) == (f"reward {spec!r}: cannot call reward(completion, answer=None, **kwargs): "
                                 f"accepted signatures are {ACCEPTED}")
    with pytest.raises(RewardSpecError) as err:  # the same check, without a call or a prompt
        check_reward_forms([("accuracy", 1.0), (spec, 1.0)])
    assert str(err.value) == probe_error(spec)


def test_context_forms_pass_and_see_the_prompt(tmp_path):
    seen = tmp_path / "seen.json"
    sample = write(tmp_path, "ctx_sample", f"""
        import json

        def reward(sample):
            with open({str(seen)!r}, "w") as f:
                json.dump([sample.prompt, sample.response, sample.group, sample.index], f)
            return 0.5
    """)
    trl = write(tmp_path, "ctx_trl", """
        def reward(prompts, completions, family, **kwargs):
            # None (a failed sample, so a failed probe) unless the columns arrived as TRL passes them
            ok = prompts == [[{"role": "user", "content": "How many?"}]] and family == ["count"]
            return [1.0 if ok and kwargs["answer"] == ["3"] else None for c in completions]
    """)
    assert check_reward_forms([(sample, 1.0), (trl, 1.0), ("accuracy", 1.0)]) == {sample: "sample", trl: "trl"}
    assert probe_rewards([(sample, 1.0), (trl, 1.0)], PROMPT) is None
    assert json.loads(seen.read_text()) == [PROMPT.messages, PROBE_RESPONSE, [PROBE_RESPONSE], 0]


def test_import_error(tmp_path):
    spec = write(tmp_path, "broken_import", """
        import rlsys_no_such_module

        def reward(response, answer, metadata):
            return 1.0
    """)
    msg = probe_error(spec)
    assert msg.startswith(f"reward spec {spec!r}: importing ") and "failed: ModuleNotFoundError(" in msg
    assert "No module named 'rlsys_no_such_module'" in msg


def test_returns_a_string(tmp_path):
    spec = write(tmp_path, "text", """
        def reward(response, answer, metadata):
            return "correct"
    """)
    assert probe_error(spec) == (f"reward {spec!r}: probe call failed: TypeError: reward returned str "
                                 "'correct', expected a number")


def test_returns_nan_and_hangs(tmp_path):
    nan = write(tmp_path, "nan", """
        def reward(response, answer, metadata):
            return float("nan")
    """)
    assert probe_error(nan) == f"reward {nan!r}: probe call failed: ValueError: reward is not finite: nan"
    hang = write(tmp_path, "hang", """
        import time

        def reward(response, answer, metadata):
            time.sleep(60)
    """)
    assert probe_error(hang, timeout_s=1.0) == (f"reward {hang!r}: probe call failed: timed out: still "
                                                "running at the 1s batch deadline")
