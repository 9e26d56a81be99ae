"""Reward function forms: which arguments a reward takes, read once from its signature.

A reward function is one of five forms, told apart by `reward_form` when it is loaded (never
by calling it and catching TypeError: a TypeError raised inside a reward is a reward bug, not
a signature question):

- ``legacy``:  ``fn(response, answer, metadata) -> float``, three positional arguments (any
               names); one call per sample. All built-ins use it.
- ``sample``:  ``fn(sample) -> float``; `sample` is a `RewardInput` (rlsys/protocol.py: prompt
               messages, decoded images, answer, metadata, response, the group's responses,
               index); one call per sample.
- ``samples``: ``fn(samples) -> list[float]``; all RewardInputs of a batch, one call.
- ``group``:   ``fn(group) -> list[float]``; the G RewardInputs of one prompt, one call per
               prompt (rank or compare the group's responses).
- ``trl``:     a function with a ``completions`` parameter, called as TRL's GRPOTrainer calls
               reward functions: keyword lists over the batch, ``prompts`` (chat messages),
               ``completions`` (response texts), ``answer``, ``images`` (decoded) and
               each metadata key as a column; only the keywords it names are passed, all of
               them when it takes ``**kwargs``. Returns one float per sample; a None entry is a
               failed sample (TRL: "not applicable"), counted like any failure. Completions
               are texts, as in TRL's standard format; a function written for TRL's
               conversational completions (``c[0]["content"]``) must read ``c`` instead.

The one-argument forms take the argument positionally; other parameters must have defaults.
Anything else is a RewardSpecError at load, one line naming the function.

`call_reward` runs one call of any form and checks what it returns; the scorer runs it inline
and the isolated workers (user.py) run it in their processes, so both paths check alike.
"""
from __future__ import annotations

import inspect
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rlsys.protocol import MediaItem, RewardInput, RolloutGroup
from rlsys.rewards.equivalence import to_text
from rlsys.rewards.errors import RewardSpecError

LEGACY, SAMPLE, SAMPLES, GROUP, TRL = "legacy", "sample", "samples", "group", "trl"
#: Keywords a TRL-form function may name besides metadata columns (`trl_kwargs`).
TRL_KEYWORDS = ("prompts", "completions", "answer", "images")

ACCEPTED = ("fn(response, answer, metadata) -> float; fn(sample) -> float; "
            "fn(samples) -> list[float]; fn(group) -> list[float]; "
            "TRL-style fn(completions, **kwargs) -> list[float]")


@dataclass(frozen=True)
class Form:
    """A reward's form and, for the TRL form, the keywords it takes.

    kind:     one of LEGACY, SAMPLE, SAMPLES, GROUP, TRL.
    keywords: TRL form: the named keyword parameters (passed when available).
    required: TRL form: those without a default (a missing column fails the call, saying which).
    var_kw:   TRL form: it takes **kwargs, so every column is passed.
    """

    kind: str
    keywords: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    var_kw: bool = False


LEGACY_FORM = Form(LEGACY)


def reward_form(fn: Callable, name: str) -> Form:
    """The form of `fn` from its signature; RewardSpecError (one line naming `name`) otherwise."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        # Some C callables have no signature to read; they were called positionally before
        # forms existed, so keep doing that.
        return LEGACY_FORM
    params = list(sig.parameters.values())
    if "completions" in sig.parameters and sig.parameters["completions"].kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
        named = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                  inspect.Parameter.KEYWORD_ONLY)]
        # Required positional-only parameters cannot be passed by keyword: not callable as TRL does.
        if not any(p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is p.empty for p in params):
            return Form(TRL, tuple(p.name for p in named),
                        tuple(p.name for p in named if p.default is p.empty),
                        any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params))
    first = params[0] if params else None
    if (first is not None and first.name in (SAMPLE, SAMPLES, GROUP)
            and first.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            and _binds(sig, 1)):
        return Form(first.name)
    if _binds(sig, 3):
        return LEGACY_FORM
    shown = str(sig).replace("\n", " ")  # one line even with a multi-line default value
    raise RewardSpecError(f"reward {name!r}: cannot call {getattr(fn, '__qualname__', type(fn).__name__)}"
                          f"{shown}: accepted signatures are {ACCEPTED}")


def _binds(sig: inspect.Signature, n: int) -> bool:
    try:
        sig.bind(*([None] * n))
        return True
    except TypeError:  # raised by bind itself, not by calling anything
        return False


# ----------------------------------------------------------------------------- inputs


def build_inputs(groups: Sequence[RolloutGroup]) -> list[list[RewardInput]]:
    """The RewardInputs of each group. The group's samples share its messages, metadata and
    media lists (one copy each when pickled together) and decode through `decode_media`."""
    out = []
    for g in groups:
        p = g.prompt
        answer = None if p.answer is None else to_text(p.answer)
        metadata = p.metadata if isinstance(p.metadata, dict) else {}
        texts = [to_text(r.response_text) for r in g.rollouts]
        media = list(p.images)
        out.append([RewardInput(prompt=p.messages, response=t, group=texts, index=i, answer=answer,
                                metadata=metadata, uid=p.uid, media=media, decoder=decode_media)
                    for i, t in enumerate(texts)])
    return out


class _DecodedCache:
    """sha256 -> decoded PIL image, least recently used out, bounded by decoded bytes: a
    process decodes each image once although every sample of its group (and later groups of
    the same prompt) asks for it."""

    def __init__(self, max_bytes: int = 64 * 2**20) -> None:  # ~20 images at the default pixel budget
        self.max_bytes, self.nbytes = max_bytes, 0
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.decoded = 0  # images decoded by this process (a test reads it)

    def get(self, item: MediaItem):
        with self._lock:
            img = self._items.get(item.sha256)
            if img is not None:
                self._items.move_to_end(item.sha256)
                return img
        img = item.to_pil()
        size = img.width * img.height * len(img.getbands())
        with self._lock:
            self.decoded += 1
            if size <= self.max_bytes and item.sha256 not in self._items:
                self._items[item.sha256] = img
                self.nbytes += size
                while self.nbytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self.nbytes -= old.width * old.height * len(old.getbands())
        return img


_decoded = _DecodedCache()


def decode_media(items: Sequence[MediaItem]) -> list:
    """Decoded RGB copies of `items` (copies: a reward drawing on its image must not change the
    cached one; a copy is a memcpy, decoding a PNG costs far more)."""
    return [_decoded.get(m).copy() for m in items]


# ----------------------------------------------------------------------------- calls


def trl_kwargs(form: Form, inputs: Sequence[RewardInput]) -> dict[str, list]:
    """TRL's keyword lists for `inputs`: prompts (messages), completions (texts), answer,
    images (decoded; only for a function naming them or taking **kwargs) and every metadata key (None where a prompt lacks it). Only keywords `form` takes unless it has
    **kwargs. Metadata keys named like the fixed keywords are not passed (the fixed ones win)."""
    columns: dict[str, list] = {
        "prompts": [x.prompt for x in inputs],
        "completions": [x.response for x in inputs],
        "answer": [x.answer for x in inputs],
    }
    wanted = set(form.keywords)
    if form.var_kw or "images" in wanted:  # decoding costs: only for functions that can use them
        columns["images"] = [x.images for x in inputs]
    keys = dict.fromkeys(k for x in inputs for k in x.metadata if k not in TRL_KEYWORDS)
    for key in keys:
        columns[key] = [x.metadata.get(key) for x in inputs]
    if not form.var_kw:
        columns = {k: v for k, v in columns.items() if k in wanted}
    missing = [k for k in form.required if k not in columns]
    if missing:
        raise TypeError(f"reward needs {', '.join(map(repr, missing))}, which the prompts do not have "
                        f"(columns: {', '.join(['prompts', 'completions', 'answer', 'images', *keys])})")
    return columns


def call_reward(fn: Callable, form: Form, payload: Any, value: Callable[[Any], float]) -> list:
    """One call of `fn` in `form` on `payload`: (response, answer, metadata) for LEGACY, a
    RewardInput for SAMPLE, a list of RewardInputs for the list forms.

    Returns one entry per sample the call covers: a float score, or a str saying why that
    sample failed (a None entry of a list form, a value `value` refuses). Raises when the call
    itself fails (the exception, or a list of the wrong length): every sample of it failed.
    value: the scalar check (user.reward_value), passed in so this module needs no user.py.
    """
    if form.kind == LEGACY:
        return [value(fn(*payload))]
    if form.kind == SAMPLE:
        return [value(fn(payload))]
    raw = fn(**trl_kwargs(form, payload)) if form.kind == TRL else fn(payload)
    if isinstance(raw, (str, bytes, dict)) or not hasattr(raw, "__len__"):
        raise TypeError(f"reward returned {type(raw).__name__} {raw!r:.60}, expected a list of "
                        f"{len(payload)} numbers")
    if len(raw) != len(payload):
        raise ValueError(f"reward returned {len(raw)} values for {len(payload)} samples")
    out: list = []
    for item in raw:
        try:
            out.append(value(item))
        except (TypeError, ValueError) as exc:
            out.append("reward returned None for this sample" if item is None
                       else f"{type(exc).__name__}: {exc}")
    return out

