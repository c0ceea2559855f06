"""The package's import map: top-level units (a sub-package or a loose module of ``reproduce/``) import
each other without a cycle, and the result records load without torch.

A unit's imports are every ``import`` in its files, function-level ones included (they run too).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "reproduce"


def unit_of(module: str) -> str | None:
    """``reproduce.training.cell`` -> ``training``; None outside the package."""
    parts = module.split(".")
    if parts[0] != "reproduce" or len(parts) < 2:
        return None
    return parts[1]


def _file_unit(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    here = ["reproduce", *path.relative_to(PACKAGE).with_suffix("").parts]
    if here[-1] == "__init__":
        here = here[:-1]
    else:
        here = here[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            out.add(module)
            out |= {f"{module}.{a.name}" for a in node.names}
    return out


def import_map() -> dict[str, set[str]]:
    """unit -> the other units it imports."""
    edges: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _file_unit(path)
        edges.setdefault(unit, set())
        for module in _imports(path):
            other = unit_of(module)
            if other and other != unit and ((PACKAGE / other).is_dir() or (PACKAGE / f"{other}.py").is_file()):
                edges[unit].add(other)
    return edges


def layers(edges: dict[str, set[str]]) -> dict[str, int]:
    """Each unit's layer: 0 for a unit that imports no other, else one above the highest it imports.
    Raises ValueError naming a cycle."""
    out: dict[str, int] = {}

    def visit(unit: str, path: tuple[str, ...]) -> int:
        if unit in path:
            raise ValueError("import cycle: " + " -> ".join([*path[path.index(unit) :], unit]))
        if unit not in out:
            out[unit] = 1 + max((visit(o, (*path, unit)) for o in edges[unit]), default=-1)
        return out[unit]

    for unit in edges:
        visit(unit, ())
    return out


def test_the_units_of_the_package_import_each_other_without_a_cycle():
    edges = import_map()
    level = layers(edges)  # raises on a cycle
    # the CLI and the entry point sit on top; nothing imports them
    assert not [u for u, others in edges.items() if {"cli", "__main__"} & others and u != "__main__"]
    assert level["cli"] == max(level[u] for u in edges if u != "__main__")


def test_a_cycle_is_found():
    try:
        layers({"a": {"b"}, "b": {"c"}, "c": {"a"}})
    except ValueError as e:
        assert "a -> b -> c -> a" in str(e)
    else:
        raise AssertionError("no cycle found")


def test_the_result_records_load_without_torch():
    # reproduce check, the report's readers and the audit verdict read results; torch takes seconds to load
    code = (
        "import sys, reproduce.records.result, reproduce.checks.audit, reproduce.checks.baseline; "
        "print(sorted(m for m in ('torch', 'opacus', 'escnn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


if __name__ == "__main__":  # the figures of the map: python tests/test_layout.py
    edges = import_map()
    level = layers(edges)
    for unit in sorted(edges, key=lambda u: (-level[u], u)):
        print(f"layer {level[unit]:2d}  {unit:12s} -> {', '.join(sorted(edges[unit])) or '-'}")
    print(f"{len(edges)} units, {max(level.values()) + 1} layers, {sum(map(len, edges.values()))} edges")
