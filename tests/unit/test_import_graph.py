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
    for rel, text in {
        "rlsys/__init__.py": "",
        "rlsys/a.py": "def f():\n    import actors.rollout\n    from rlsys import b\n",
        "rlsys/b.py": "from rlsys.a import f\n",
        "actors/__init__.py": "",
        "actors/rollout.py": "import rlsys.a\n",
        "launch/__init__.py": "",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    graph, files = import_graph(tmp_path)
    assert upward_imports(graph, files, tmp_path) == ["rlsys/a.py imports actors/rollout.py (a higher layer)"]
    assert cycles(graph) == [["actors.rollout", "rlsys.a", "rlsys.b"]]
    (message,) = cycle_messages(graph, files, tmp_path)
    assert "rlsys/a.py" in message and "rlsys/b.py" in message
