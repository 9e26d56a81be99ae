"""Everything an actor returns is a record (rlsys/protocol.py, or a role's own module), never a
dict: a reader that looks a key up fails at run time, far from where the key was renamed or
dropped; a record's field fails where it is made (docs/ARCHITECTURE.md, "Records at the
boundaries").

Walks every class of every module under actors/ (and the vLLM worker extension, whose replies
cross from the worker processes into the rollout actor): each public method must declare what it
returns, the declaration must name no dict, and no `return` in its source may build one.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import textwrap
from pathlib import Path

import actors

ROOT = Path(__file__).resolve().parents[2]
# Names whose appearance in a return annotation means a mapping crosses the boundary.
_MAPPING = re.compile(r"\b(dict|Dict|Mapping|MutableMapping|OrderedDict|defaultdict|Any)\b")
# Calls that turn a record or an object into a dict on the way out.
_TO_DICT = {"dict", "vars", "asdict", "as_dict", "_asdict"}


def actor_classes() -> list[type]:
    out = []
    for info in pkgutil.iter_modules(actors.__path__):
        module = importlib.import_module(f"actors.{info.name}")
        out += [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
    return out


def boundary_classes() -> list[type]:
    from rlsys.models.worker_extension import WeightReloadExtension

    return actor_classes() + [WeightReloadExtension]


def public_methods(cls: type):
    for name, fn in vars(cls).items():
        if not name.startswith("_") and inspect.isfunction(fn):
            yield name, fn


def _returns_dict(node: ast.AST) -> bool:
    if isinstance(node, (ast.Dict, ast.DictComp)):
        return True
    if isinstance(node, ast.Call):
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        return name in _TO_DICT
    return False


def violations(cls: type) -> list[str]:
    """'module.Class.method: why' for each public method of `cls` that returns (or says it
    returns) a dict, or says nothing of what it returns."""
    out = []
    for name, fn in public_methods(cls):
        where = f"{cls.__module__}.{cls.__qualname__}.{name}"
        ann = inspect.signature(fn).return_annotation
        if ann is inspect.Signature.empty:
            out.append(f"{where}: no return annotation")
        elif _MAPPING.search(ann if isinstance(ann, str) else repr(ann)):
            out.append(f"{where}: annotated -> {ann}")
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        for node in ast.walk(tree):
            value = getattr(node, "value", None) if isinstance(node, (ast.Return, ast.Yield)) else None
            if value is not None and _returns_dict(value):
                out.append(f"{where}: line {fn.__code__.co_firstlineno + node.lineno - 1} returns a dict "
                           f"({ast.unparse(value)[:60]})")
    return out


def test_the_walk_finds_every_actor_module():
    found = {c.__module__ for c in actor_classes()}
    on_disk = {f"actors.{p.stem}" for p in (ROOT / "actors").glob("*.py") if p.stem != "__init__"}
    assert found == on_disk
    assert {"LearnerActor", "RolloutActor", "CriticActor", "RMLearnerActor", "RewardActor"} <= {
        c.__name__ for c in actor_classes()}


def test_no_actor_method_returns_a_dict():
    bad = [v for cls in boundary_classes() for v in violations(cls)]
    assert not bad, "methods at an actor boundary that return dicts:\n" + "\n".join(bad)


def test_the_check_catches_each_form_of_dict():
    class Leaky:
        def literal(self) -> int:
            return {"a": 1}

        def converted(self, stats) -> int:
            return vars(stats)

        def declared(self) -> list[dict]:
            return []

        def silent(self):
            return 1

        def fine(self) -> tuple[int, int]:
            return (1, 2)

    found = violations(Leaky)
    named = sorted({v.split(":")[0].rsplit(".", 1)[1] for v in found})
    assert named == ["converted", "declared", "literal", "silent"], found


def test_worker_replies_are_records_in_process_and_after_vllms_message_queue():
    """The worker extension's replies are records; behind the "mp" executor vLLM's message queue
    delivers them as maps of their fields (tuples as lists), and the engine rebuilds them."""
    import dataclasses
    import os
    import types

    from rlsys.models.worker_extension import WeightReloadExtension, as_records
    from rlsys.protocol import WorkerInfo, WorkerMemory

    worker = types.SimpleNamespace(rank=1)  # what the methods read of a vLLM worker
    memory = WeightReloadExtension.rlsys_peak_memory_mb(worker)
    info = WeightReloadExtension.rlsys_worker_info(worker)
    assert isinstance(memory, WorkerMemory) and memory.rank == 1
    assert memory.host_mb > 0 and memory.rss_mb > 0 and memory.hwm_mb >= memory.rss_mb
    assert isinstance(info, WorkerInfo) and (info.pid, info.rank) == (os.getpid(), 1)
    assert info.cores == tuple(sorted(os.sched_getaffinity(0)))
    as_maps = [{**dataclasses.asdict(info), "cores": list(info.cores)}, dataclasses.asdict(memory)]
    assert as_records(WorkerInfo, [as_maps[0], info]) == [info, info]
    assert as_records(WorkerMemory, [as_maps[1]]) == [memory]
