"""User functions named in the config: 'path/to/file.py:function' or 'package.module:function'.

An extension point (advantage estimators today) is a registry of built-in functions plus this:
`resolve(registry, spec)` returns the registered function, or imports the user's. `spec_problem`
checks a spec without importing anything, so config validation never runs user code.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from typing import Callable, Mapping


class PluginError(ValueError):
    """A user function spec that cannot be loaded; the message names the spec and the reason."""


def is_spec(text: str) -> bool:
    """True for a user function spec, False for a plain (registered) name."""
    return ":" in text


def _parts(spec: str) -> tuple[str, str, bool]:
    """-> (file path or module name, function name, whether the target is a file)."""
    target, _, func = spec.rpartition(":")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    return (os.path.abspath(os.path.expanduser(target)) if is_file else target), func, is_file


def spec_problem(spec: str) -> str | None:
    """What is wrong with a spec that can be seen without importing it, or None."""
    target, func, is_file = _parts(spec)
    if not target or not func.isidentifier():
        return "expected 'path/file.py:function' or 'module:function'"
    if is_file and not os.path.isfile(target):
        return f"file '{spec.rpartition(':')[0]}' not found"
    return None


def _import_file(path: str, spec: str):
    # One module object per file, under a private name, so a second look-up reuses it.
    name = "rlsys_plugin_" + hashlib.sha1(path.encode("utf-8", "replace")).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise PluginError(f"{spec}: cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before exec: dataclasses and pickle look the module up by name
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise PluginError(f"{spec}: importing {path} failed: {exc!r}") from exc
    return module


def load_function(spec: str) -> Callable:
    """Imports the function a spec names; PluginError saying why when it cannot."""
    problem = spec_problem(spec)
    if problem:
        raise PluginError(f"{spec}: {problem}")
    target, func, is_file = _parts(spec)
    if is_file:
        module = _import_file(target, spec)
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise PluginError(f"{spec}: importing module {target!r} failed: {exc!r}") from exc
    fn = getattr(module, func, None)
    if fn is None:
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise PluginError(f"{spec}: no function {func!r} in {target} (found: {found})")
    if not callable(fn):
        raise PluginError(f"{spec}: {func!r} is not callable")
    return fn


def resolve(registry: Mapping[str, Callable], name_or_spec: str) -> Callable:
    """The registered function `name_or_spec`, or the user function it names. An unknown name
    raises the registry's own error (rlsys.algorithms.UnknownNameError lists the allowed names)."""
    if is_spec(name_or_spec):
        return load_function(name_or_spec)
    return registry[name_or_spec]
