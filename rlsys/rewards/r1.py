"""R1-style built-in rewards: `r1_format` and `accuracy`.

Both are trusted built-ins: pure functions on strings, linear-time regexes, math-verify behind
a deadline (equivalence.py). They never raise: any input, including None, the empty string,
unclosed tags, 10^5 characters or lone surrogates, gets a float.
"""
from __future__ import annotations

import logging
import re
from typing import Optional

from rlsys.rewards.equivalence import answers_match, extract_answer, to_text
from rlsys.rewards.registry import register_reward

logger = logging.getLogger("rlsys.rewards")

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_FORMAT_RE = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)


def is_r1_format(text: str) -> bool:
    """The R1 format rule.

    The response, after stripping surrounding whitespace, is exactly
    ``<think>THINKING</think>`` then optional whitespace then ``<answer>ANSWER</answer>``:
    - each of the four tags appears exactly once (no nesting, no repeated blocks);
    - nothing but whitespace before <think>, between </think> and <answer>, after </answer>;
    - THINKING and ANSWER are free text (may span lines; may be empty, as in DeepSeek-R1's
      rule — `accuracy` is what rewards a non-empty correct answer);
    - tags are case-sensitive and written exactly as above (no attributes, no inner spaces).
    """
    if any(text.count(tag) != 1 for tag in _TAGS):
        return False
    return _FORMAT_RE.fullmatch(text) is not None


@register_reward("r1_format", trusted=True)
def r1_format(response: str, answer: Optional[str] = None, metadata: Optional[dict] = None) -> float:
    """1.0 if the response follows the R1 format rule (`is_r1_format`), else 0.0."""
    try:
        return 1.0 if is_r1_format(to_text(response)) else 0.0
    except Exception:  # defensive: never propagate into the training loop
        logger.exception("r1_format failed; scoring 0")
        return 0.0


@register_reward("accuracy", trusted=True)
def accuracy(response: str, answer: Optional[str], metadata: Optional[dict] = None) -> float:
    """1.0 if the extracted answer is equivalent to the reference `answer`, else 0.0.

    Extraction (`equivalence.extract_answer`): the last complete <answer>...</answer> block
    (its last \\boxed{...} if it has one); without a complete block, the last \\boxed{...} in
    the response; otherwise nothing -> 0.0. Equivalence (`equivalence.answers_match`):
    numbers exactly (ints, decimals, fractions, \\frac, thousands separators), strings after
    normalisation (case, whitespace, trailing period, \\text{}), LaTeX via guarded math-verify.
    A missing reference (None/empty) scores 0.0.

    metadata["use_math_verify"] = False turns math-verify off for a row (string/number rules
    only), e.g. for label-style tasks where symbolic parsing is never wanted.
    """
    try:
        if answer is None:
            return 0.0
        predicted = extract_answer(response)
        if predicted is None:
            return 0.0
        use_mv = True
        if isinstance(metadata, dict):
            use_mv = bool(metadata.get("use_math_verify", True))
        return 1.0 if answers_match(predicted, to_text(answer), use_math_verify=use_mv) else 0.0
    except Exception:
        logger.exception("accuracy failed; scoring 0")
        return 0.0
