"""The generative judge: a (V)LM served by vLLM writes a short critique of each response, then
its score in `<score></score>` (critique first, then score, as MM-RLHF, arXiv 2502.10391).

Pure helpers (no torch/vllm/transformers at import: `rlsys.specs` and config validation import
this module): the default template, template loading and checking, the judge's prompt, score
parsing and aggregation. The engine-side compute class is `rlsys.rewards.judge_model.JudgeModel`
(a module of its own: it needs rlsys.specs, which imports this one).

A template is `str.format` text with `{question}`, `{response}` and optionally `{answer}`;
literal braces are written `{{` and `}}`. The images of the policy prompt go before it.
"""
from __future__ import annotations

import hashlib
import math
import re
import string
from pathlib import Path
from typing import Optional, Sequence

from rlsys.protocol import Prompt

# Short on purpose: the embedded tiny judge has a few hundred tokens for images + prompt.
DEFAULT_TEMPLATE = (
    "Judge an answer to a question about the image.\n"
    "Question: {question}\n"
    "Answer: {response}\n"
    "First write a short critique: is the answer correct, complete and well reasoned? "
    "Then give a score from 0 (wrong) to 10 (perfect) as an integer in <score></score>, "
    "e.g. <score>7</score>."
)

# The judge's own system turn. Why one at all: a demonstration row without a system turn gets
# the data pipeline's R1 system prompt (rlsys/data/datasets.py), so `rlsys sft` would train the
# judge on messages it is never served with; a row's own system turn is kept as it is.
JUDGE_SYSTEM_PROMPT = "You are a careful judge of answers about images."

REQUIRED_FIELDS = ("question", "response")
OPTIONAL_FIELDS = ("answer",)


def template_problem(text: str) -> Optional[str]:
    """One line saying what is wrong with template `text`, or None when it can be filled."""
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError as e:  # "Single '}' encountered", "expected '}' before end of string"
        return f"bad braces ({e}); write a literal brace as {{{{ or }}}}"
    seen = set()
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in REQUIRED_FIELDS + OPTIONAL_FIELDS:
            allowed = ", ".join("{" + f + "}" for f in REQUIRED_FIELDS + OPTIONAL_FIELDS)
            return (f"unknown placeholder {{{name}}} (allowed: {allowed}; write a literal brace "
                    "as {{ or }})")
        if spec or conversion:
            # A format spec may itself hold placeholders and reshapes the text the judge sees.
            return f"placeholder {{{name}}} has a conversion or format spec; write plain {{{name}}}"
        seen.add(name)
    missing = [f for f in REQUIRED_FIELDS if f not in seen]
    if missing:
        return "missing " + " and ".join("{" + f + "}" for f in missing)
    return None


def check_template(path: Optional[str] = None, *, text: Optional[str] = None) -> Optional[str]:
    """What config validation says about a judge template: one line naming the problem (missing
    or unreadable file, missing {question}/{response}, unknown placeholder, bad braces), or None.
    `path` None checks `text`, or DEFAULT_TEMPLATE when that is None too."""
    if path is not None:
        try:
            text = load_template(path)
        except (OSError, UnicodeDecodeError) as e:
            return f"cannot read template file: {type(e).__name__}: {e}".replace("\n", " ")
        if not text.strip():
            return "template file is empty"
    return template_problem(DEFAULT_TEMPLATE if text is None else text)


def load_template(path: Optional[str]) -> str:
    """The template text: DEFAULT_TEMPLATE for None, else the file's UTF-8 text (unchecked:
    validation ran `check_template` first)."""
    if path is None:
        return DEFAULT_TEMPLATE
    return Path(path).read_text(encoding="utf-8")


def _question(prompt: Prompt) -> str:
    """The text of the prompt's user turns (image parts and other turns dropped), turns joined by
    newlines, parts concatenated as the chat template would."""
    turns = []
    for m in prompt.messages:
        if m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, str):
            turns.append(content)
        else:
            turns.append("".join(p.get("text", "") for p in content or []
                                 if isinstance(p, dict) and p.get("type", "text") == "text"))
    return "\n".join(t.strip() for t in turns if t.strip())


def judge_prompt(template: str, prompt: Prompt, response: str, *, images: bool = True,
                 index: Optional[int] = None) -> Prompt:
    """The judge's Prompt for one (policy prompt, response): the judge's system turn
    (JUDGE_SYSTEM_PROMPT, in place of the policy's) and one user turn.

    Content: one {"type": "image"} part per image of `prompt` (the same MediaItems, in order),
    then the template filled with question = the user text of `prompt` (its system turn and image
    parts dropped), response, answer = `prompt.answer` or "". Without images (or images=False, a
    text-only judge) the content is the plain string. uid: "<prompt uid>#judge" (+ index when
    given). answer/metadata are the policy prompt's; response is None.
    The judge's SFT demonstrations use this function too, so training and serving see the same
    messages.
    """
    text = template.format(question=_question(prompt), response=response, answer=prompt.answer or "")
    media = list(prompt.images) if images else []
    content = [{"type": "image"} for _ in media] + [{"type": "text", "text": text}] if media else text
    uid = f"{prompt.uid}#judge" + ("" if index is None else str(index))
    return Prompt(uid=uid, messages=[{"role": "system", "content": JUDGE_SYSTEM_PROMPT},
                                     {"role": "user", "content": content}], images=media,
                  answer=prompt.answer, metadata=dict(prompt.metadata))


_OPEN = re.compile(r"<\s*score\s*>", re.IGNORECASE)
_CLOSE = re.compile(r"<\s*/\s*score\s*>", re.IGNORECASE)
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_SCORE = re.compile(rf"({_NUMBER})(?:\s*/\s*({_NUMBER}))?")


def _snippet(s: str, n: int = 40) -> str:
    s = " ".join(s.split())
    return repr(s if len(s) <= n else s[:n] + "...")


def parse_score(text: str) -> tuple[Optional[float], str]:
    """The judge's score: the number in the LAST `<score>...</score>` of `text`.

    -> (score, "") or (None, a one-line reason). Never raises. Accepted contents, spaces
    allowed around them: an int or decimal ("7", "7.5", "-1", ".5") or "x/10" (-> x). Failures:
    no tag; an opening tag with no closing tag after it (the last tag decides, so a judge cut off
    while writing a second score fails rather than keeping a score it was revising); an empty
    tag; anything else inside it (words, "7 8", "7-8", "4/5" — several numbers are ambiguous, so
    rejected; only /10 is the asked-for scale); nan/inf. No range check: the scale is the
    template's.
    """
    try:
        text = text if isinstance(text, str) else str(text)
        opens = list(_OPEN.finditer(text))
        if not opens:
            return None, "no <score> tag"
        last = opens[-1]
        close = _CLOSE.search(text, last.end())
        if close is None:
            return None, "unclosed <score> tag (output cut off?)"
        body = text[last.end():close.start()].strip()
        if not body:
            return None, "empty <score></score> tag"
        m = _SCORE.fullmatch(body)
        if m is None:
            try:
                value = float(body)  # only nan/inf/"1e3"-style reach here as floats
            except ValueError:
                several = len(re.findall(_NUMBER, body)) > 1
                return None, f"score {_snippet(body)} " + ("holds several numbers" if several else "is not a number")
            if not math.isfinite(value):
                return None, f"score {_snippet(body)} is not finite"
            return None, f"score {_snippet(body)} is not a plain number"
        if m.group(2) is not None and float(m.group(2)) != 10.0:
            return None, f"score {_snippet(body)} is not out of 10"
        return float(m.group(1)), ""
    except Exception as e:  # a parser must never take the batch down
        return None, f"cannot parse: {type(e).__name__}: {e}".replace("\n", " ")


def aggregate(judgements: Sequence[str], fallback: float) -> tuple[float, bool, Optional[str]]:
    """One response's score from its judgements: (mean of the parsable scores, False, None);
    when none parses (or there are none): (fallback, True, the first judgement's reason)."""
    scores, reasons = [], []
    for text in judgements:
        score, why = parse_score(text)
        if score is None:
            reasons.append(why)
        else:
            scores.append(score)
    if not scores:
        return float(fallback), True, reasons[0] if reasons else "no judgements"
    return sum(scores) / len(scores), False, None


def judge_seed_key(prompt_uid: str, response: str) -> str:
    """What a judgement's sampling seed is derived from (with the judge's seed): the policy
    prompt and the response, so the same response to the same prompt is judged the same on any
    replica, in any batch, after any restart."""
    return f"{prompt_uid}#judge:" + hashlib.sha256(response.encode("utf-8", "replace")).hexdigest()[:16]
