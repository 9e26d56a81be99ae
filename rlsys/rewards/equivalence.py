"""Answer extraction and equivalence checking for rule-based rewards.

Everything here is total: any input (None, empty, huge, lone surrogates) gives a value, never
an exception. The pipeline for `answers_match(pred, ref)`:

1. `normalize_answer` both sides: strip math delimiters ($..$, \\(..\\), \\[..\\]), unwrap
   \\boxed/\\text/\\mathrm, drop LaTeX spacing, degree signs, `%`, trailing periods, a leading
   "x =" (single-letter variable), surrounding quotes and "(A)"-style choice parentheses;
   lowercase; collapse whitespace.
2. Equal normalised strings -> match.
3. Both sides numbers (integers, decimals, "1/2", \\frac{1}{2}, thousands separators) ->
   compare exactly as fractions (so "2.50" == "2.5" and "1/2" == "0.5", but "0.33" != "1/3").
4. Otherwise, if the strings look mathematical (LaTeX commands, operators, digits), ask
   math-verify (symbolic equivalence), guarded: bounded input length, exponent towers refused,
   run in a helper thread with a deadline, any error -> no match. Pure words ("red", "AB")
   never reach math-verify: it would treat them as products of symbols ("AB" == "BA").
"""
from __future__ import annotations

import logging
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from fractions import Fraction
from typing import Optional

logger = logging.getLogger("rlsys.rewards")

# Inputs longer than this are never sent to math-verify (parsing cost grows with length).
MATH_VERIFY_MAX_CHARS = 256
# Wall-clock budget for one math-verify comparison.
MATH_VERIFY_TIMEOUT_S = 2.0
# A normalised number literal longer than this is not parsed (Fraction of 10^6 digits is slow).
_MAX_NUMBER_CHARS = 64

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_THOUSANDS_RE = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_FRAC_RE = re.compile(r"^([+-]?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$")
_FRAC_SHORT_RE = re.compile(r"^([+-]?)\\[dt]?frac(\d)(\d)$")
_VAR_ASSIGN_RE = re.compile(r"^[a-z]\s*=\s*(.+)$", re.DOTALL)
_CHOICE_RE = re.compile(r"^\(([a-z])\)$")
_WORDS_RE = re.compile(r"^[a-z ,;:.'\"!?&-]*$")
_MATH_HINT_RE = re.compile(r"[\\^_{}()\[\]=+*/<>|0-9-]")
# Exponent towers and huge powers make sympy compute astronomically large integers.
_DANGEROUS_RE = re.compile(
    r"\^\s*\{?\s*[-+]?\d{3,}"  # x^{123...}: exponent >= 100
    r"|\^\s*\{[^{}]*\^"  # x^{y^z}: nested exponent
    r"|\^\s*[\w.]+\s*\^"  # x^y^z: right-associative tower
    r"|\*\*"  # python-style power (ExprExtraction would evaluate it)
    r"|\d{3,}\s*!"  # 123!: big factorials
    r"|factorial"
)
_WRAPPERS = ("\\text", "\\textbf", "\\mathrm", "\\mathbf", "\\boxed", "\\fbox", "\\operatorname")


def to_text(value: object) -> str:
    """Coerce any model output into a clean `str` (None -> "", bytes decoded, surrogates replaced).

    Lone surrogates (e.g. "\\udcff" from a lossy decode) are legal in Python strings but break
    UTF-8 encoding in JSON, logging and Arrow; they are replaced by "?".
    """
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if not isinstance(value, str):
        try:
            value = str(value)
        except Exception:  # a hostile __str__ must not escape
            return ""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", errors="replace").decode("utf-8")


def last_boxed(text: str) -> Optional[str]:
    """Content of the last \\boxed{...} (or \\fbox{...}) with balanced braces, else None."""
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
            i += 1
    return None


def extract_answer(response: str) -> Optional[str]:
    """The answer a response commits to, or None.

    Rule: the content of the LAST complete <answer>...</answer> block; if that block contains
    \\boxed{...}, the last boxed content inside it. Without a complete answer block, the last
    \\boxed{...} anywhere in the response. Otherwise (no tags, no box, or an unclosed tag from
    a truncated generation) None — bare text is not graded, so the model must commit.
    """
    text = to_text(response)
    blocks = _ANSWER_RE.findall(text)
    if blocks:
        inner = blocks[-1]
        boxed = last_boxed(inner)
        return boxed if boxed is not None else inner
    return last_boxed(text)


def _unwrap_commands(s: str) -> str:
    """Replace \\text{x}, \\boxed{x}, ... by x (one level per pass, a few passes)."""
    for _ in range(4):
        changed = False
        for cmd in _WRAPPERS:
            idx = s.find(cmd + "{")
            if idx < 0:
                continue
            start = idx + len(cmd) + 1
            depth, j = 1, start
            while j < len(s) and depth:
                depth += {"{": 1, "}": -1}.get(s[j], 0)
                j += 1
            if depth == 0:
                s = s[:idx] + s[start : j - 1] + s[j:]
                changed = True
        if not changed:
            break
    return s


def normalize_answer(value: object) -> str:
    """Canonical string form of an answer (see the module docstring for the rules)."""
    s = to_text(value).strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            s = s[len(left) : len(s) - len(right)].strip()
    s = _unwrap_commands(s)
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "\\displaystyle"):
        s = s.replace(token, "")
    for token in ("^{\\circ}", "^\\circ", "°", "\\%", "%", "{,}"):
        s = s.replace(token, "")
    s = " ".join(s.split()).lower()
    s = s.rstrip(".").strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        s = s[1:-1].strip()
    match = _VAR_ASSIGN_RE.match(s)
    if match:
        s = match.group(1).strip()
    choice = _CHOICE_RE.match(s)
    if choice:
        s = choice.group(1)
    return s


def parse_number(s: str) -> Optional[Fraction]:
    """Exact value of a normalised numeric answer, or None if it is not a plain number."""
    if not s or len(s) > _MAX_NUMBER_CHARS:
        return None
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    match = _FRAC_RE.match(s) or _FRAC_SHORT_RE.match(s)
    if match:
        sign, num, den = match.groups()
        n, d = parse_number(num.strip()), parse_number(den.strip())
        if n is None or d is None or d == 0:
            return None
        return -(n / d) if sign == "-" else n / d
    s = re.sub(r"\s*/\s*", "/", s)
    if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d{1,3})?(/[+-]?\d+(\.\d*)?)?", s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


class _GuardedMathVerify:
    """math-verify behind a deadline. Never raises, never blocks longer than the deadline.

    math-verify's own timeout uses signal.alarm, which works only in the main thread and would
    clobber other SIGALRM users, so its timeouts are disabled and the call runs on a single
    helper thread instead. A Python thread cannot be killed: if a call overruns, further calls
    skip math-verify (fallback: no match) until the stuck one finishes, so at most one call can
    ever be burning CPU in the background.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: Optional[ThreadPoolExecutor] = None
        self._inflight: Optional[Future] = None
        self._module = None
        self._unavailable = False

    def _load(self):
        if self._module is None and not self._unavailable:
            try:
                import math_verify  # heavy (sympy): imported on first use only

                self._module = math_verify
            except Exception as exc:  # missing or broken install -> string/number fallback
                logger.warning("math-verify unavailable (%s); using the fallback comparator", exc)
                self._unavailable = True
        return self._module

    def _compare(self, pred: str, ref: str) -> bool:
        mv = self._module
        config = [mv.LatexExtractionConfig(), mv.ExprExtractionConfig()]
        gold = mv.parse(f"${ref}$", config, parsing_timeout=None)
        guess = mv.parse(f"${pred}$", config, parsing_timeout=None)
        if not gold or not guess:
            return False
        return bool(mv.verify(gold, guess, timeout_seconds=None))

    def equal(self, pred: str, ref: str, timeout_s: float = MATH_VERIFY_TIMEOUT_S) -> bool:
        if self._load() is None:
            return False
        with self._lock:
            if self._inflight is not None and not self._inflight.done():
                return False  # a previous call is stuck: do not queue behind it
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="rlsys-math-verify")
            future = self._executor.submit(self._compare, pred, ref)
            self._inflight = future
        try:
            return bool(future.result(timeout=timeout_s))
        except FutureTimeout:
            logger.warning("math-verify exceeded %.1fs on %r vs %r", timeout_s, pred[:80], ref[:80])
            return False
        except BaseException:  # math-verify/sympy errors of any kind -> no match
            return False


_MATH_VERIFY = _GuardedMathVerify()


def _math_verify_allowed(pred: str, ref: str) -> bool:
    """Only mathematical-looking, short, tower-free strings go to math-verify (see module doc)."""
    if max(len(pred), len(ref)) > MATH_VERIFY_MAX_CHARS:
        return False
    if _WORDS_RE.match(pred) and _WORDS_RE.match(ref):
        return False
    if not (_MATH_HINT_RE.search(pred) or _MATH_HINT_RE.search(ref)):
        return False
    return not (_DANGEROUS_RE.search(pred) or _DANGEROUS_RE.search(ref))


def answers_match(pred: object, ref: object, use_math_verify: bool = True) -> bool:
    """True if the predicted answer is equivalent to the reference. Never raises."""
    try:
        p, r = normalize_answer(pred), normalize_answer(ref)
        if not p or not r:
            return False
        if p == r:
            return True
        p_num, r_num = parse_number(p), parse_number(r)
        if p_num is not None and r_num is not None:
            return p_num == r_num
        if use_math_verify and _math_verify_allowed(p, r):
            return _MATH_VERIFY.equal(p, r)
        return False
    except Exception:  # defensive: a comparator bug must cost one sample, not the run
        logger.exception("answers_match failed; scoring as no match")
        return False
