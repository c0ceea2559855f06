"""Reading a study file: YAML with duplicate keys refused, every problem reported with file, line and field."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml
from pydantic import ValidationError

from reproduce.atomic import decode_utf8
from reproduce.errors import StudyError
from reproduce.study.grid import _CELL_CONTEXT, AXIS_HELP, GRID_AXES, Study, _is_path, axis_problems
from reproduce.study.located import _describe


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the deepest YAML node along a pydantic error location."""
    line = None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == part]
            if not match:
                break
            line = match[0][0].start_mark.line + 1
            node = match[0][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        elif isinstance(node, yaml.SequenceNode):
            continue  # pydantic's union branch names (e.g. 'float') follow list indices
        else:
            break
    else:
        if node is not None:
            line = node.start_mark.line + 1
    return line


def parse_study(text: str, *, path: str = "<study>") -> Study:
    """Parse and validate a study; every problem is reported at once with file, line and field."""
    try:
        root = yaml.compose(text, Loader=_UniqueKeyLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise StudyError(f"{where}: YAML syntax error: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise StudyError(f"{path}:1: a study must be a YAML mapping (name, model, privacy, training, grid)")
    grid = data.get("grid")
    axes = {k: v for k, v in grid.items() if _is_path(k)} if isinstance(grid, dict) else {}
    # The study without its dotted axes first (their values are checked against it, below).
    problems = [
        (("grid", k), f"unknown key (not part of the study schema); {AXIS_HELP}")
        for k in (grid if isinstance(grid, dict) else {})
        if k not in GRID_AXES and not _is_path(k)
    ]
    base = {**data, "grid": {k: v for k, v in grid.items() if k in GRID_AXES}} if axes or problems else data
    try:
        study = Study.model_validate(base)
    except ValidationError as e:
        problems += [_describe(err) for err in e.errors()]
    if not problems and axes:
        study = Study.model_validate(data, context={_CELL_CONTEXT: True})
        problems = axis_problems(study)
    if problems:
        lines = []
        for loc, msg in problems:
            field = ".".join(str(p) for p in loc) or "(study)"
            entry = f"{path}:{_line_of(root, loc) or 1}: {field}: {msg}"
            if entry not in lines:
                lines.append(entry)
        lines.sort(key=lambda entry: int(entry.split(":")[1]))
        raise StudyError(
            f"invalid study {path} ({len(lines)} problem{'s' * (len(lines) > 1)}):\n  " + "\n  ".join(lines)
        ) from None
    stem = Path(path).stem
    if path != "<study>" and study.name != stem:
        line = _line_of(root, ("name",))
        raise StudyError(
            f"{path}:{line}: name: {study.name!r} must equal the file name {stem!r} (results go to results/<name>/)"
        )
    return study


def load_study(path: str | Path) -> Study:
    """Read and validate ``path``; raises StudyError (exit 2) naming file, line and field."""
    p = Path(path)
    if p.is_dir():
        raise StudyError(f"{p}: is a directory, not a study file; give one YAML file, e.g. studies/default.yaml")
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise StudyError(f"{p}: no such study file; check the path (studies are studies/<name>.yaml)") from None
    except OSError as e:
        raise StudyError(f"{p}: cannot read study file: {e.strerror}") from None
    text = decode_utf8(raw, p, error=StudyError)
    if not text.strip():
        raise StudyError(
            f"{p}: the study file is empty; a study is a YAML mapping (name, model, privacy, "
            "training, grid), e.g. copy studies/ci.yaml"
        )
    return parse_study(text, path=str(p))


def study_hash(path: str | Path) -> str:
    """SHA-256 of the study file's bytes (provenance)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
