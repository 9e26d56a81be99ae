"""Remote calls in flight and how their results combine: the driver starts every call of a
stage, then resolves them all with one `ray.get` (`wait`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass
class Pending:
    """Object refs of remote calls and how to combine their results."""

    refs: list
    combine: Callable[[list], Any]


def wait(*pending: Optional[Pending]) -> tuple:
    import ray

    refs = [r for p in pending if p is not None for r in p.refs]
    values = iter(ray.get(refs))
    return tuple(None if p is None else p.combine([next(values) for _ in p.refs]) for p in pending)


def join(*pending: Optional[Pending], combine: Callable[..., Any]) -> Pending:
    """One Pending of several: `combine(value_1, ..., value_n)` (None for a None pending)."""
    refs = [r for p in pending if p is not None for r in p.refs]

    def combined(parts: list):
        values = iter(parts)
        return combine(*(None if p is None else p.combine([next(values) for _ in p.refs]) for p in pending))

    return Pending(refs, combined)
