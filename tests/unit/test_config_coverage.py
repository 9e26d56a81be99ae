"""Every leaf field of RunConfig is read by the code it configures (outside rlsys/config/), or
is listed below as only validating other fields. A field nobody reads is a setting that silently
does nothing: the user sets it and the run ignores it."""
import ast
import dataclasses
import types
import typing
from pathlib import Path

from rlsys.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("rlsys", "actors", "launch")
CONFIG_PACKAGE = ROOT / "rlsys" / "config"

# Fields whose only job is to check the others before start; each with why nothing else reads it.
VALIDATION_ONLY = {
    "resources.nodes": "the recipe's node count: validation checks the GPU plan fits, and the start-time check "
                       "(placement.check_plan_against_cluster) that the cluster has those nodes, before any actor starts",
    "resources.gpus_per_node": "with resources.nodes, sizes the nodes the GPU plan is checked against",
}


def _unwrap(tp):
    """Optional[X] -> X; list[X] -> X (a list of sections is walked like one section)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0], "[]"
    return tp, ""


def leaf_fields(cls, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted path, attribute name) of every leaf field; list items are `path[].name`."""
    out = []
    hints = typing.get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        tp, suffix = _unwrap(hints[fld.name])
        path = f"{prefix}{fld.name}{suffix}"
        if dataclasses.is_dataclass(tp):
            out += leaf_fields(tp, path + ".")
        else:
            out.append((path, fld.name))
    return out


def names_read(files) -> set[str]:
    """Attribute names loaded (`x.name`) or fetched as `getattr(x, "name", ...)` in `files`."""
    read = set()
    for path in files:
        for node in ast.walk(ast.parse(Path(path).read_text(), str(path))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                read.add(node.attr)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                  and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                  and isinstance(node.args[1].value, str)):
                read.add(node.args[1].value)
    return read


def unread_fields(cls, files, exempt) -> list[str]:
    """Dotted paths of the leaf fields of `cls` that no file reads and `exempt` does not list."""
    read = names_read(files)
    return [path for path, name in leaf_fields(cls) if name not in read and path not in exempt]


def reader_files() -> list[Path]:
    files = [p for d in SOURCE_DIRS for p in sorted((ROOT / d).rglob("*.py"))]
    return [p for p in files if CONFIG_PACKAGE not in p.parents]


def test_every_config_field_is_read_outside_the_config_package():
    unread = unread_fields(RunConfig, reader_files(), VALIDATION_ONLY)
    assert not unread, (
        f"config fields read nowhere in {', '.join(d + '/' for d in SOURCE_DIRS)} outside rlsys/config/: "
        f"{', '.join(unread)}. Setting them changes nothing: wire each where it takes effect (e.g. the "
        "role specs built in rlsys/specs.py), or, if it only validates other fields, add it to "
        "VALIDATION_ONLY in tests/unit/test_config_coverage.py with the reason")


def test_validation_only_lists_real_fields_with_reasons():
    paths = {path for path, _ in leaf_fields(RunConfig)}
    assert set(VALIDATION_ONLY) <= paths, sorted(set(VALIDATION_ONLY) - paths)
    assert all(reason.strip() for reason in VALIDATION_ONLY.values())


@dataclasses.dataclass
class _Item:
    item_read: int = 0
    item_unread: int = 0


@dataclasses.dataclass
class _Section:
    section_read: int = 0
    section_unread: typing.Optional[int] = None


@dataclasses.dataclass
class _Tree:
    top_unread: str = ""
    exempted: int = 0
    section: _Section = dataclasses.field(default_factory=_Section)
    items: list[_Item] = dataclasses.field(default_factory=list)


def test_the_checker_reports_a_field_nobody_reads(tmp_path):
    reader = tmp_path / "reader.py"
    reader.write_text("def use(cfg):\n    cfg.section.section_read = 1  # a store is not a read\n"
                      "    return cfg.section.section_read, [getattr(i, 'item_read') for i in cfg.items]\n")
    assert [p for p, _ in leaf_fields(_Tree)] == [
        "top_unread", "exempted", "section.section_read", "section.section_unread",
        "items[].item_read", "items[].item_unread"]
    assert unread_fields(_Tree, [reader], {"exempted": "why"}) == [
        "top_unread", "section.section_unread", "items[].item_unread"]
