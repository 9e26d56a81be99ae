"""bench/vs_trl.py quotes speed only from runs that learned (issue 27): the marking rule."""
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("vs_trl", Path(__file__).resolve().parents[2] / "bench" / "vs_trl.py")
vs_trl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vs_trl)


def test_a_run_that_kept_learning_is_quoted():
    ok, why = vs_trl.learned({"reward_steps": [0.5, 0.9, 1.2, 0.7, 1.3], "length_steps": [14, 15, 20, 30, 16]})
    assert ok and why == ""


def test_a_reward_that_halves_after_its_best_is_marked():
    # the small model's diverged run (issue 27): 0.93 at step 7, then 0.47 and 0.09
    ok, why = vs_trl.learned({"reward_steps": [0.6, 0.93, 0.47, 0.09], "length_steps": [14, 14, 31, 40]})
    assert not ok and why == "reward fell from 0.93 to 0.09"
    # exactly half is not more than half
    assert vs_trl.learned({"reward_steps": [1.0, 0.5], "length_steps": [10, 10]})[0]


def test_responses_at_the_length_limit_are_marked():
    limit = vs_trl.NEW_TOKENS
    ok, why = vs_trl.learned({"reward_steps": [1.0, 1.0], "length_steps": [14, 0.9 * limit]})
    assert not ok and why == f"responses reached {0.9 * limit:.0f} of {limit} tokens"
    assert not vs_trl.learned({"reward_steps": [], "length_steps": []})[0]
