"""Built-in rewards: r1_format and accuracy, hand-written tables and adversarial outputs."""
import math
import time

import pytest

from rlsys.rewards import accuracy, answers_match, extract_answer, normalize_answer, r1_format

FORMAT_CASES = [
    ("<think>reason</think><answer>42</answer>", 1.0),
    ("<think>a\nb</think>\n<answer>\n42\n</answer>", 1.0),
    ("  \n<think>x</think>   <answer>y</answer>\n\n", 1.0),
    ("<think></think><answer></answer>", 1.0),  # empty blocks are format-valid (R1 rule)
    ("<answer>42</answer>", 0.0),  # no think
    ("<think>x</think>", 0.0),  # no answer
    ("<answer>y</answer><think>x</think>", 0.0),  # wrong order
    ("hello <think>x</think><answer>y</answer>", 0.0),  # text before
    ("<think>x</think><answer>y</answer> bye", 0.0),  # text after
    ("<think>x</think> between <answer>y</answer>", 0.0),  # text between
    ("<think>x</think><answer>y</answer><answer>z</answer>", 0.0),  # answer twice
    ("<think>x<think>y</think></think><answer>z</answer>", 0.0),  # nested think
    ("<think>x</think><answer>y", 0.0),  # unclosed answer (truncated)
    ("<think>x<answer>y</answer>", 0.0),  # unclosed think
    ("<THINK>x</THINK><answer>y</answer>", 0.0),  # tags are case-sensitive
    ("", 0.0),
]


@pytest.mark.parametrize("response,expected", FORMAT_CASES)
def test_r1_format_table(response, expected):
    assert r1_format(response, None, {}) == expected


ACCURACY_CASES = [
    # integers / decimals / signs
    ("<answer>42</answer>", "42", 1.0),
    ("<answer>42</answer>", "43", 0.0),
    ("<answer>2.50</answer>", "2.5", 1.0),
    ("<answer>-3</answer>", "-3.0", 1.0),
    ("<answer>.5</answer>", "0.5", 1.0),
    # fractions, \frac, \boxed
    ("<answer>1/2</answer>", "0.5", 1.0),
    ("<answer>1 / 2</answer>", "2/4", 1.0),
    ("<answer>\\frac{1}{2}</answer>", "0.5", 1.0),
    ("<answer>\\dfrac{3}{4}</answer>", "0.75", 1.0),
    ("<answer>-\\frac{1}{2}</answer>", "-0.5", 1.0),
    ("<answer>The result is \\boxed{7}</answer>", "7", 1.0),
    ("<answer>\\boxed{\\frac{2}{4}}</answer>", "1/2", 1.0),
    ("<answer>0.33</answer>", "1/3", 0.0),  # exact comparison, no rounding tolerance
    # thousands separators, trailing period, whitespace, $ delimiters, units-ish
    ("<answer>1,000</answer>", "1000", 1.0),
    ("<answer>1,234,567.5</answer>", "1234567.5", 1.0),
    ("<answer>42.</answer>", "42", 1.0),
    ("<answer>  42 \n</answer>", "42", 1.0),
    ("<answer>$42$</answer>", "42", 1.0),
    ("<answer>x = 5</answer>", "5", 1.0),
    ("<answer>90^\\circ</answer>", "90", 1.0),
    ("<answer>50\\%</answer>", "50", 1.0),
    # strings: case, whitespace, \text, choices
    ("<answer>Red</answer>", "red ", 1.0),
    ("<answer> dark  BLUE. </answer>", "dark blue", 1.0),
    ("<answer>\\text{green}</answer>", "Green", 1.0),
    ("<answer>(B)</answer>", "B", 1.0),
    ("<answer>red</answer>", "blue", 0.0),
    ("<answer>AB</answer>", "BA", 0.0),  # words never go to math-verify (AB == BA symbolically)
    # which answer is graded
    ("<answer>1</answer> then <answer>2</answer>", "2", 1.0),  # the last block
    ("<answer>1</answer> then <answer>2</answer>", "1", 0.0),
    ("reasoning ... \\boxed{12}", "12", 1.0),  # no tags: last \boxed in the response
    ("reasoning ... \\boxed{1} no \\boxed{12}", "12", 1.0),
    ("the answer is 12", "12", 0.0),  # no tags, no box: not graded
    ("<answer>12", "12", 0.0),  # unclosed tag (truncated generation)
    ("<answer></answer>", "", 0.0),
    ("<answer>12</answer>", None, 0.0),  # no reference
    # LaTeX via math-verify
    ("<answer>\\frac{\\sqrt{2}}{2}</answer>", "\\sqrt{2}/2", 1.0),
    ("<answer>(x+1)^2</answer>", "x^2+2x+1", 1.0),
    ("<answer>2\\sqrt{3}</answer>", "\\sqrt{12}", 1.0),
    ("<answer>\\pi</answer>", "3.14159", 0.0),
    ("<answer>9^9^9^9</answer>", "1", 0.0),  # exponent tower is refused, not evaluated
]


@pytest.mark.parametrize("response,answer,expected", ACCURACY_CASES)
def test_accuracy_table(response, answer, expected):
    assert accuracy(response, answer, {}) == expected


def test_accuracy_without_math_verify_uses_fallback():
    response = "<answer>(x+1)^2</answer>"
    assert accuracy(response, "x^2+2x+1", {"use_math_verify": False}) == 0.0
    assert accuracy("<answer>1/2</answer>", "0.5", {"use_math_verify": False}) == 1.0


def test_extract_answer_rules():
    assert extract_answer("<answer>a \\boxed{b{c}} d</answer>") == "b{c}"
    assert extract_answer("\\boxed{unbalanced") is None
    assert extract_answer("plain") is None
    assert normalize_answer("  \\text{Red}. ") == "red"
    assert answers_match("1,000", "1000") and not answers_match("", "")


ADVERSARIAL = [
    "",
    None,
    "<think>",
    "<think>x</think><answer>",
    "<answer>" * 50,
    "<think>" + "x" * 20_000 + "</think><answer>" + "9" * 20_000 + "</answer>",
    "\\boxed{" * 5_000,
    "x" * 100_000,
    "\udcff",
    "<think>\udcff</think><answer>\udcff\ud800</answer>",
    b"<answer>\xff\xfe</answer>",
    12345,
]


@pytest.mark.parametrize("fn", [r1_format, accuracy], ids=["r1_format", "accuracy"])
@pytest.mark.parametrize("response", ADVERSARIAL, ids=[f"adv{i}" for i in range(len(ADVERSARIAL))])
def test_adversarial_outputs_get_a_float(fn, response):
    for answer, metadata in (("42", {}), (None, None), ("\udcff", {"k": object()})):
        value = fn(response, answer, metadata)
        assert isinstance(value, float) and math.isfinite(value)


def test_surrogate_answer_still_matches():
    assert accuracy("<answer>caf\udcff</answer>", "CAF\udcff", {}) == 1.0


def test_math_verify_guard_deadline_and_stuck_breaker():
    import threading

    from rlsys.rewards.equivalence import _GuardedMathVerify

    guard = _GuardedMathVerify()
    assert guard.equal("\\frac{1}{2}", "0.5")  # real math-verify (loads + warms up)
    release, compared = threading.Event(), []

    def stuck(pred, ref):  # a sympy call that hangs until released
        compared.append(pred)
        return release.wait(30)

    guard._compare = stuck
    start = time.monotonic()
    assert guard.equal("x", "y", timeout_s=0.2) is False
    assert (time.monotonic() - start) / 0.2 < 5  # gave up at its deadline...
    assert not guard._stuck.done()  # ...while the call still ran
    assert guard.equal("x", "x", timeout_s=5) is False  # skipped while one is stuck:
    assert compared == ["x"]  # it never reached math-verify, so it had nothing to wait for
    release.set()
    time.sleep(0.1)
    guard._compare = lambda pred, ref: True
    assert guard.equal("x", "x", timeout_s=5) is True  # back in service once it finished
