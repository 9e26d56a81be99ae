"""Reward registry: names -> functions, and resolution of reward specs.

A reward function takes the texts, ``fn(response, answer, metadata) -> float`` (every
built-in), or the whole context: ``fn(sample)``, ``fn(samples)``, ``fn(group)`` or TRL's
``fn(completions, **kwargs)`` (forms.py reads which from the signature; the scorer calls it so).
The registry stores functions as they are, whatever their form.

A *spec* names a reward in configs. It is one of:

- a registered name:            "r1_format", "accuracy" (see `REWARDS`);
- a registered factory:         "remote" (needs options, e.g. {"url": ...});
- an HTTP(S) endpoint:          "http://127.0.0.1:8000/score" -> `RemoteReward` (remote.py);
- a Python file and function:   "path/to/file.py:function" (relative to the working dir);
- a module and function:        "package.module:function" (importable on sys.path).

This module imports nothing heavy, so config validation can use `BUILTIN_REWARD_NAMES`,
`FACTORY_NAMES` and `check_spec_syntax` without loading math-verify, torch or user code.

It never imports the modules that register into it (r1.py, remote.py): the package
`__init__` imports them right after this one, and importing any `rlsys.rewards.*` module runs
that `__init__` first, so the registry is complete before anyone can look a name up.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

from rlsys.rewards.errors import RewardSpecError
from rlsys.rewards.user import load_function

RewardFn = Callable[..., Any]  # any form of forms.py

#: Names registered by rlsys itself (kept in sync with r1.py by a unit test).
BUILTIN_REWARD_NAMES = ("r1_format", "accuracy")
#: Names that build a reward object from options (see `REWARD_FACTORIES`).
FACTORY_NAMES = ("remote",)

#: name -> reward function. Filled by `register_reward` (built-ins: by r1.py on package import).
REWARDS: Dict[str, RewardFn] = {}
#: name -> factory(**options) returning a reward object.
REWARD_FACTORIES: Dict[str, Callable[..., Any]] = {}
# Functions registered by rlsys itself: trusted, bounded, safe to run inline (see scorer.py).
_TRUSTED: set = set()


def register_reward(name: str, *, trusted: bool = False):
    """Decorator registering `fn` under `name`.

    trusted: only for rlsys's own built-ins; trusted functions run inline in the scorer,
             everything else runs in an isolated worker process with a timeout.
    Re-registering the same function is a no-op; a different function under a taken name
    is an error (silent shadowing would change a run's rewards without notice).
    """

    def decorator(fn: RewardFn) -> RewardFn:
        existing = REWARDS.get(name)
        if existing is not None and not _same_function(existing, fn):
            raise RewardSpecError(f"reward name {name!r} is already registered to {existing!r}")
        REWARDS[name] = fn
        if trusted:
            _TRUSTED.add(name)
        return fn

    return decorator


def _same_function(a: Callable, b: Callable) -> bool:
    """Same object, or the same module-level function re-imported (e.g. by a spawned worker)."""
    if a is b:
        return True
    key = lambda f: (getattr(f, "__module__", None), getattr(f, "__qualname__", None))  # noqa: E731
    return key(a) == key(b) and key(a)[1] is not None


def register_factory(name: str, factory: Callable[..., Any]) -> None:
    """Register a factory building a reward object (callable, optionally with `score_batch`)."""
    REWARD_FACTORIES[name] = factory


def registered_names() -> list[str]:
    """All names a spec may use: registered functions and factories, sorted."""
    return sorted(set(REWARDS) | set(REWARD_FACTORIES))


def is_trusted(name: str) -> bool:
    """True for rlsys built-ins that the scorer may run inline."""
    return name in _TRUSTED


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def check_spec_syntax(spec: object) -> None:
    """Cheap config-time check (no imports, no file access); raises RewardSpecError."""
    if not isinstance(spec, str) or not spec.strip():
        raise RewardSpecError(f"reward spec must be a non-empty string, got {spec!r}")
    if spec in BUILTIN_REWARD_NAMES or spec in FACTORY_NAMES or spec in REWARDS or is_url(spec):
        return
    target, sep, func = spec.rpartition(":")
    if not sep or not target or not func.isidentifier():
        raise RewardSpecError(
            f"unknown reward {spec!r}: registered names are "
            f"{sorted(set(BUILTIN_REWARD_NAMES) | set(FACTORY_NAMES) | set(REWARDS))}; "
            "otherwise use 'path/to/file.py:function', 'package.module:function' or an http(s) URL"
        )


def get_reward(spec: str, **options: Any) -> RewardFn:
    """Resolve a spec to its function (any form; `forms.reward_form` tells which) or reward
    object (with `score_batch`).

    options: passed to factories and to `RemoteReward` for URL specs (token, timeout_s, ...).
    Raises RewardSpecError naming the spec (and listing registered names when unknown).
    """
    check_spec_syntax(spec)
    if spec in REWARDS:
        return REWARDS[spec]
    if spec in REWARD_FACTORIES:
        try:
            return REWARD_FACTORIES[spec](**options)
        except TypeError as exc:
            raise RewardSpecError(f"reward factory {spec!r}: bad options {options}: {exc}") from exc
    if is_url(spec):
        return REWARD_FACTORIES["remote"](url=spec, **options)  # RemoteReward, see remote.py
    return load_function(spec)
