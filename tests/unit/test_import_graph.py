"""The three layers import in one direction, launch -> actors -> rlsys, with no cycles.

The graph is read from the source with `ast`: every `import` and `from ... import`, at module level
or inside a function, is an edge. A package's `__init__` importing its own submodules is an edge
too, so a submodule importing its package back is a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("rlsys", "actors", "launch")  # a module may import its own layer and those before it


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the three layers under `root`."""
    out = {}
    for top in LAYERS:
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imported_modules(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` (module `name`) imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            found.update(subs)
            if len(subs) < len(node.names):  # some names are attributes of `target` itself
                found.add(target)
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path) -> tuple[dict[str, set[str]], dict[str, Path]]:
    modules = module_files(root)
    return {m: imported_modules(p, m, modules) for m, p in modules.items()}, modules


def upward_imports(graph: dict[str, set[str]], files: dict[str, Path], root: Path) -> list[str]:
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    return [f"{files[m].relative_to(root)} imports {files[t].relative_to(root)} (a higher layer)"
            for m, targets in sorted(graph.items()) for t in sorted(targets)
            if rank[t.split(".")[0]] > rank[m.split(".")[0]]]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def cycle_messages(graph: dict[str, set[str]], files: dict[str, Path], root: Path) -> list[str]:
    """Each cycle as its modules' files plus one edge of it, so both ends are named."""
    out = []
    for comp in cycles(graph):
        a = comp[0]
        b = next(t for t in sorted(graph[a]) if t in comp)
        names = ", ".join(str(files[m].relative_to(root)) for m in comp)
        out.append(f"import cycle through {names} (e.g. {files[a].relative_to(root)} imports "
                   f"{files[b].relative_to(root)})")
    return out


def write_tree(root: Path, files: dict[str, str]) -> None:
    """Files (relative path -> text) under `root`: a stand-in project for the checks to fail on."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_layers_import_downward_only():
    graph, files = import_graph(ROOT)
    assert len(graph) > 50  # the walk found the project
    assert upward_imports(graph, files, ROOT) == []


def test_no_import_cycles():
    graph, files = import_graph(ROOT)
    assert cycle_messages(graph, files, ROOT) == []


def test_the_checks_catch_a_function_level_upward_import_and_a_cycle(tmp_path):
    """The checks fail on what they guard against: `import actors` inside a function of rlsys/,
    and two rlsys modules importing each other."""
    write_tree(tmp_path, {
        "rlsys/__init__.py": "",
        "rlsys/a.py": "def f():\n    import actors.rollout\n    from rlsys import b\n",
        "rlsys/b.py": "from rlsys.a import f\n",
        "actors/__init__.py": "",
        "actors/rollout.py": "import rlsys.a\n",
        "launch/__init__.py": "",
    })
    graph, files = import_graph(tmp_path)
    assert upward_imports(graph, files, tmp_path) == ["rlsys/a.py imports actors/rollout.py (a higher layer)"]
    assert cycles(graph) == [["actors.rollout", "rlsys.a", "rlsys.b"]]
    (message,) = cycle_messages(graph, files, tmp_path)
    assert "rlsys/a.py" in message and "rlsys/b.py" in message


# ---- where Ray may appear (docs/ARCHITECTURE.md): Ray is imported only in rlsys/distributed/ and
# launch/ (actors/ import it inside the methods that need it, never at module level); Ray's
# private attributes are read only there; and of rlsys/, only Roles and the clients call actors.

RAY_PACKAGE = "rlsys/distributed/"
# Files of rlsys/ that call actors (`.remote(`). The rest of rlsys/distributed/ waits on what
# these started (ray.get / ray.wait in pending.py and streaming.py), puts objects (media_store.py)
# or reserves placement groups (placement.py), but starts no remote call.
REMOTE_CALLERS = ("rlsys/distributed/roles.py", "rlsys/distributed/clients.py")
# Ray internals reached through objects rather than through the `ray` name (an actor handle's
# id, the runtime context's worker).
PRIVATE_RAY_ATTRS = {"core_worker", "_actor_id", "_private", "_raylet", "_ray_actor_id"}


def _ray_names(tree: ast.AST) -> set[str]:
    """Names bound to Ray or any of its modules/objects by an import anywhere in `tree`."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update((a.asname or a.name.split(".")[0]) for a in node.names if a.name.split(".")[0] == "ray")
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "ray":
            out.update(a.asname or a.name for a in node.names)
    return out


def _root(node: ast.AST) -> str | None:
    """The name an attribute chain starts from (`ray` of `ray.get_runtime_context()._x`)."""
    while isinstance(node, (ast.Attribute, ast.Call)):
        node = node.value if isinstance(node, ast.Attribute) else node.func
    return node.id if isinstance(node, ast.Name) else None


def ray_violations(root: Path) -> list[str]:
    """'file:line: why' for each place Ray appears where it must not."""
    out = []
    for top in ("rlsys", "actors"):
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            tree = ast.parse(path.read_text(), rel)
            ray_ok = rel.startswith(RAY_PACKAGE)
            module_level = set(map(id, tree.body))
            names = _ray_names(tree)
            for node in ast.walk(tree):
                line = getattr(node, "lineno", 0)
                if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                    mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    ray_mods = [m for m in mods if m.split(".")[0] == "ray"]
                    if ray_mods and top == "rlsys" and not ray_ok:
                        out.append(f"{rel}:{line}: imports {ray_mods[0]} (Ray belongs in {RAY_PACKAGE})")
                    elif ray_mods and top == "actors" and id(node) in module_level:
                        out.append(f"{rel}:{line}: imports {ray_mods[0]} at module level")
                    if not ray_ok and any(p.startswith("_") for m in ray_mods for p in m.split(".")):
                        out.append(f"{rel}:{line}: imports Ray's private {ray_mods[0]}")
                elif isinstance(node, ast.Attribute) and not ray_ok:
                    if node.attr in PRIVATE_RAY_ATTRS or (_root(node) in names and node.attr.startswith("_")):
                        out.append(f"{rel}:{line}: reads Ray's private .{node.attr}")
                elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                      and node.func.attr == "remote" and top == "rlsys" and rel not in REMOTE_CALLERS):
                    out.append(f"{rel}:{line}: calls an actor (.remote) outside Roles and its clients")
    return sorted(set(out))


def test_ray_only_where_it_belongs():
    bad = ray_violations(ROOT)
    assert not bad, "Ray where it must not be:\n" + "\n".join(bad)


def test_the_ray_checks_catch_each_violation(tmp_path):
    """Each rule fails on what it guards against, naming the file and line."""
    write_tree(tmp_path, {
        "rlsys/driver.py": "def f(roles):\n    import ray\n    return ray.get(roles.a.remote())\n",
        "rlsys/models/engine.py": "def g(ctx):\n    return ctx.worker.core_worker.resource_ids()\n",
        "rlsys/distributed/recovery.py": "def h(actor):\n    import ray\n    return actor._actor_id, ray._private\n",
        "rlsys/distributed/streaming.py": "def k(a):\n    return a.f.remote()\n",
        "rlsys/distributed/roles.py": "def m(a):\n    return a.f.remote()\n",
        "actors/learner.py": "import ray\nfrom ray._private import state\n\ndef n():\n    return ray._private.worker\n",
        "actors/rollout.py": "def p():\n    import ray\n    return ray.get_runtime_context().get_node_id()\n",
    })
    assert ray_violations(tmp_path) == [
        "actors/learner.py:1: imports ray at module level",
        "actors/learner.py:2: imports Ray's private ray._private",
        "actors/learner.py:2: imports ray._private at module level",
        "actors/learner.py:5: reads Ray's private ._private",
        "rlsys/distributed/streaming.py:2: calls an actor (.remote) outside Roles and its clients",
        "rlsys/driver.py:2: imports ray (Ray belongs in rlsys/distributed/)",
        "rlsys/driver.py:3: calls an actor (.remote) outside Roles and its clients",
        "rlsys/models/engine.py:2: reads Ray's private .core_worker",
    ]
