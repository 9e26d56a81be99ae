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
import queue
import re
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from fractions import Fraction
from typing import Optional

logger = logging.getLogger("rlsys.rewards")

# Inputs longer than this are never sent to math-verify (parsing cost grows with length).
MATH_VERIFY_MAX_CHARS = 256
# Wall-clock budget for one math-verify comparison (typical: 0.05-0.4 s; generous for loaded hosts).
MATH_VERIFY_TIMEOUT_S = 5.0
# A normalised number literal longer than this is not parsed (Fraction of 10^6 digits is slow).
_MAX_NUMBER_CHARS = 64

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
    """Content of the last \\boxed{...} (or \\fbox{...}) with balanced braces, else None.

    One left-to-right pass pairs the braces (a stack), so adversarial inputs such as
    "\\boxed{" * 10_000 stay linear instead of rescanning the tail for every candidate.
    """
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    if not starts:
        return None
    closing: dict[int, int] = {}
    stack: list[int] = []
    for i in range(starts[0] - 1, len(text)):
        ch = text[i]
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            closing[stack.pop()] = i
    for start in reversed(starts):
        end = closing.get(start - 1)  # start - 1 is the opening brace matched by _BOXED_RE
        if end is not None:
            return text[start:end]
    return None


def extract_answer(response: str) -> Optional[str]:
    """The answer a response commits to, or None.

    Rule: the content of the LAST complete <answer>...</answer> block (the text between the
    last "</answer>" and the nearest "<answer>" before it); if that block contains
    \\boxed{...}, the last boxed content inside it. Without a complete answer block, the last
    \\boxed{...} anywhere in the response. Otherwise (no tags, no box, or an unclosed tag from
    a truncated generation) None — bare text is not graded, so the model must commit.
    """
    text = to_text(response)
    # rfind, not a regex findall: "<answer>" * 10**4 with no closing tag would be quadratic.
    close = text.rfind("</answer>")
    open_ = text.rfind("<answer>", 0, close) if close >= 0 else -1
    if open_ >= 0:
        inner = text[open_ + len("<answer>") : close]
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


class _DaemonWorker:
    """One daemon thread running submitted calls in order.

    Not a ThreadPoolExecutor: its threads are joined at interpreter exit, so a stuck sympy
    call would hang shutdown. A daemon thread is simply abandoned.
    """

    def __init__(self) -> None:
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        threading.Thread(target=self._loop, daemon=True, name="rlsys-math-verify").start()

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self._queue.put((future, fn, args))
        return future

    def _loop(self) -> None:
        while True:
            future, fn, args = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)


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
        self._executor: Optional[_DaemonWorker] = None
        self._stuck: Optional[Future] = None  # a call that overran its deadline
        self._module = None
        self._unavailable = False

    def _load(self):
        if self._module is None and not self._unavailable:
            try:
                import math_verify  # heavy (sympy): imported on first use only
                import math_verify.grader
                import math_verify.parser

                # We disable its signal-based timeouts on purpose and bound calls ourselves;
                # silence the one-time "timeout is disabled" warning that would mislead.
                math_verify.parser.TIMEOUT_WARNING_SHOWN = True
                math_verify.grader.TIMEOUT_WARNING_SHOWN = True
                self._module = math_verify
                self._warm_up()
            except Exception as exc:  # missing or broken install -> string/number fallback
                logger.warning("math-verify unavailable (%s); using the fallback comparator", exc)
                self._unavailable = True
        return self._module

    def _warm_up(self) -> None:
        """First comparisons pay lazy sympy/grammar setup (~2 s); keep it out of the deadline."""
        self._executor = _DaemonWorker()
        for pred, ref in (("\\frac{1}{2}", "0.5"), ("(x+1)^2", "x^2+2x+1")):
            try:
                self._executor.submit(self._compare, pred, ref).result(timeout=60)
            except Exception:
                pass

    def _compare(self, pred: str, ref: str) -> bool:
        mv = self._module
        config = [mv.LatexExtractionConfig(), mv.ExprExtractionConfig()]
        gold = mv.parse(f"${ref}$", config, parsing_timeout=None)
        guess = mv.parse(f"${pred}$", config, parsing_timeout=None)
        if not gold or not guess:
            return False
        return bool(mv.verify(gold, guess, timeout_seconds=None))

    def equal(self, pred: str, ref: str, timeout_s: float = MATH_VERIFY_TIMEOUT_S) -> bool:
        with self._lock:  # one import + warm-up even with concurrent first callers
            if self._load() is None:
                return False
            if self._stuck is not None and not self._stuck.done():
                return False  # a previous call overran and still runs: do not queue behind it
            future = self._executor.submit(self._compare, pred, ref)
        try:
            return bool(future.result(timeout=timeout_s))
        except FutureTimeout:
            if not future.cancel():  # it started (not merely queued): the helper thread is busy
                self._stuck = future
                logger.warning("math-verify exceeded %.1fs on %r vs %r; LaTeX answers use the "
                               "fallback comparator until it returns", timeout_s, pred[:80], ref[:80])
            return False
        except Exception:  # math-verify/sympy errors of any kind -> no match
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
