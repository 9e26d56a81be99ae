"""Name -> function registries for the algorithm families.

A registry is a plain dict (so `ADVANTAGES.keys()` is the list of allowed names a config
validator checks against) whose failed look-ups name every allowed value.
"""
from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


class UnknownNameError(KeyError, ValueError):
    """A name that is not registered. Both a KeyError (dict semantics) and a ValueError (bad
    config value), so either `except` clause catches it."""

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message and wrap it in quotes.
        return str(self.args[0]) if self.args else ""


class Registry(dict):
    """dict name -> function of one family; `kind` names the family in error messages."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: register `fn` under `name`; a duplicate name is a programming error."""

        def deco(fn: F) -> F:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self[name] = fn
            return fn

        return deco

    def names(self) -> tuple[str, ...]:
        """Allowed names, sorted (stable for error messages and docs)."""
        return tuple(sorted(self))

    def __missing__(self, name):
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}"
        )

    def lookup(self, name: str) -> Callable:
        """The function registered as `name`; raises UnknownNameError listing allowed names."""
        return self[name]
