"""The grid and the study: axes, cells, and the ``Study`` model that holds the sections.

A study is a YAML file in ``studies/``. Scalars configure every cell; each list under ``grid`` is one
axis, and the cross product of the axes is the set of cells. Besides the fixed axes (``GRID_AXES``),
any field of the model, privacy or training section can be an axis, named by its dotted path
(``privacy.max_grad_norm: [0.5, 1, 2]``); each cell's ``study`` is the study with its values applied
and re-validated, so training reads ``cell.study.privacy.max_grad_norm`` and never sees an axis.
Axes of DP-only settings (``DP_ONLY``) are not expanded for non-private cells.

A cell id is the fixed axes' values joined by "-" in the order of ``GRID_AXES``, then the extra axes'
tokens in YAML order, then ``audit`` for the cells of a study with an ``audit`` section - exactly the
``${key}`` DVC gives the stage (see reproduce/pipeline/stages.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from reproduce.errors import StudyError
from reproduce.models.group_norm import RULE as _GROUP_NORM_RULE
from reproduce.models.group_norm import unsplittable_widths
from reproduce.models.groups import GROUP_HELP, halvable, is_group
from reproduce.study.located import _describe, _Located
from reproduce.study.sections import (
    DATASETS,
    AuditConfig,
    ChecksConfig,
    DataConfig,
    ModelConfig,
    PrivacyConfig,
    TrainingConfig,
    _Strict,
)

GRID_AXES = ("dataset", "group", "epsilon", "multiplicity", "seed")
# Sections whose fields a dotted grid axis may name. data.* is not one: data/<dataset> is fetched once
# per study (pipelines/dvc.yaml), so its sources cannot vary by cell; name/grid/checks are no settings.
AXIS_SECTIONS = ("model", "privacy", "training", "audit")
# Settings that only DP training reads: their axes multiply private cells only (one non-private
# reference per remaining combination).
DP_ONLY = ("privacy", "training.dp_optimizer")
NON_PRIVATE = "non-private"
# The last token of an audited cell's id: its canaries change the model, so it is never the id of an
# unaudited cell.
AUDIT_TOKEN = "audit"


class GridConfig(BaseModel):
    """Each list is one axis; cells are the cross product. Keys other than ``GRID_AXES`` are dotted
    schema paths (``privacy.max_grad_norm``), kept in ``axes`` and validated by ``Study``."""

    # extra="allow" holds the dotted axes (in YAML order); any other unknown key is refused below.
    model_config = ConfigDict(extra="allow", frozen=True)

    dataset: list[Literal[DATASETS]] = Field(min_length=1)  # type: ignore[valid-type]
    group: list[str] = Field(min_length=1)
    # A target epsilon, or "non-private" to train without DP (explicit, never a fallback).
    # int stays int so the cell id matches DVC's ${key} ("8", not "8.0").
    epsilon: list[int | float | str] = Field(min_length=1)
    multiplicity: list[Annotated[int, Field(ge=1)]] = Field([1], min_length=1)
    seed: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)

    @field_validator("group")
    @classmethod
    def _groups(cls, v):
        for g in v:
            if not is_group(g):
                raise ValueError(f"unknown group {g!r}; allowed: {GROUP_HELP}")
        return v

    @field_validator("epsilon", mode="before")
    @classmethod
    def _epsilons(cls, v):
        if not isinstance(v, list):
            return v
        for i, e in enumerate(v):
            ok = e == NON_PRIVATE or (isinstance(e, (int, float)) and not isinstance(e, bool) and 0 < e < float("inf"))
            if not ok:
                raise ValueError(
                    f"entry {i} is {e!r}; each epsilon must be a positive number (target epsilon) or {NON_PRIVATE!r}"
                )
        return v

    @field_validator(*GRID_AXES)
    @classmethod
    def _no_duplicates(cls, v):
        dupes = _duplicates(v)
        if dupes:
            raise ValueError(f"repeats {', '.join(dupes)}: duplicate cell ids")
        return v

    @model_validator(mode="after")
    def _dotted_only(self):
        bad = [k for k in self.model_extra or {} if not _is_path(k)]
        if bad:
            raise ValueError(f"unknown grid key(s) {bad}; {AXIS_HELP}")
        return self

    @property
    def axes(self) -> dict[str, list]:
        """The extra axes, dotted path -> values, in YAML order."""
        return dict(self.model_extra or {})


AXIS_HELP = (
    f"grid axes are {', '.join(GRID_AXES)} or dotted paths of {'/'.join(AXIS_SECTIONS)} fields, "
    "e.g. privacy.max_grad_norm"
)


def _require_buildable_widths(model: ModelConfig, groups: list[str]) -> None:
    """Refuse widths the conventional model cannot build (the only one whose norm constrains them)."""
    if "e" not in groups:
        return
    layout = model.widths_for("e")
    bad = unsplittable_widths(layout)
    if bad:
        where = ("model", "widths", "e") if isinstance(model.widths, dict) else ("model", "widths")
        widths = f"width{'s' * (len(bad) > 1)} {', '.join(map(str, bad))}"
        raise _Located((*where, layout.index(bad[0])), f"{widths} cannot be built: {_GROUP_NORM_RULE}")


def _is_path(key) -> bool:
    return isinstance(key, str) and "." in key


def _duplicates(values) -> list[str]:
    tokens = [_token(x) for x in values]
    return sorted({x for x in tokens if tokens.count(x) > 1})


class Study(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    description: str = ""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    training: TrainingConfig = TrainingConfig()
    checks: ChecksConfig = ChecksConfig()
    # None: no audit (every study before audits existed).
    audit: AuditConfig | None = None
    grid: GridConfig

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo):
        # A cell's study (overrides applied) is validated with the axes already checked on its parent.
        if self.grid.axes and not (info.context or {}).get(_CELL_CONTEXT):
            problems = axis_problems(self)
            if problems:
                raise ValueError("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems))
        if isinstance(self.model.widths, dict):
            missing = [g for g in self.grid.group if g not in self.model.widths]
            if missing:
                raise ValueError(f"model.widths has no layout for group(s) {missing}")
        _require_buildable_widths(self.model, self.grid.group)
        if (self.training.epochs is None) == (self.training.steps is None):
            raise ValueError("training needs exactly one of epochs or steps")
        if self.model.restrict == "halved":
            bad = [g for g in self.grid.group if not halvable(g)]
            if bad:
                raise ValueError(
                    f"model.restrict=halved cannot apply to group(s) {bad} (needs C_N or D_N with even N); "
                    "give restrict per group, e.g. {C4: halved}"
                )
        # Above batch_size is meaningful: Poisson batches are larger about half the time, and a bound of
        # batch_size + 4 sqrt(batch_size) runs nearly all of them whole. Twice it is never needed.
        if self.training.physical_batch_size > 2 * self.training.batch_size:
            raise ValueError(
                "training.physical_batch_size must not exceed 2 x training.batch_size (a Poisson "
                "batch of expected size B is above B + 5 sqrt(B) with negligible probability)"
            )
        return self

    def cells(self) -> list[Cell]:
        """Every cell: the fixed axes' product, each times the product of the extra axes that apply to
        it (DP-only axes for private cells only); in id order (fixed axes first, then extra axes)."""
        fixed = [getattr(self.grid, a) for a in GRID_AXES]
        extra = self.grid.axes
        studies: dict[tuple, Study] = {}  # one validated study per combination of overrides
        cells = []
        for values in itertools.product(*fixed):
            point = dict(zip(GRID_AXES, values))
            paths = [p for p in extra if point["epsilon"] != NON_PRIVATE or not dp_only(p)]
            for combo in itertools.product(*(extra[p] for p in paths)):
                axes = tuple((p, _frozen(v)) for p, v in zip(paths, combo))
                key = tuple(_token(v) for _, v in axes)
                if key not in studies:
                    studies[key] = self.with_overrides(dict(axes)) if axes else self
                cells.append(Cell(studies[key], **point, axes=axes))
        return cells

    def with_overrides(self, overrides: dict[str, Any]) -> Study:
        """This study with ``{dotted path: value}`` applied and re-validated (pydantic ValidationError
        on a bad value, located at the field's own path)."""
        data = self.model_dump(mode="python")
        for path, value in overrides.items():
            *parents, leaf = path.split(".")
            node = data
            for part in parents:
                node = node[part]
            node[leaf] = _thawed(value)
        return Study.model_validate(data, context={_CELL_CONTEXT: True})

    def cell(self, cell_id: str) -> Cell:
        for c in self.cells():
            if c.id == cell_id:
                return c
        raise StudyError(f"study {self.name!r} has no cell {cell_id!r}")


def _token(value: Any) -> str:
    """A value in a cell id. Scalars as DVC's matrix prints them in ${key} (str()); a list's items joined
    by "_" ([8, 16, 32] -> 8_16_32; DVC's matrix would say "<axis>0"), a mapping as key_value pairs."""
    if isinstance(value, (list, tuple)):
        return "_".join(_token(v) for v in value)
    if isinstance(value, dict):
        return "_".join(f"{k}_{_token(v)}" for k, v in value.items())
    return str(value)


id_token = _token  # public name: how a value appears in a cell id


def _frozen(value: Any) -> Any:
    """An axis value as a cell holds it: YAML lists as tuples (like the schema's widths)."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return {k: _frozen(v) for k, v in value.items()}
    return value


def _thawed(value: Any) -> Any:
    """The plain-data (JSON/YAML) form of an axis value."""
    if isinstance(value, (list, tuple)):
        return [_thawed(v) for v in value]
    if isinstance(value, dict):
        return {k: _thawed(v) for k, v in value.items()}
    return value


def dp_only(path: str) -> bool:
    """Whether the setting at ``path`` is read by DP training only (see ``DP_ONLY``)."""
    return any(path == p or path.startswith(p + ".") for p in DP_ONLY)


def matrix_key(path: str) -> str:
    """The name of a dotted axis where DVC needs one without dots (its item keys)."""
    return path.replace(".", "_")


_CELL_CONTEXT = "cell_overrides"


def _field_at(path: str) -> tuple[Any, str | None]:
    """(the pydantic FieldInfo ``path`` names, None) or (None, why it names no settable field)."""
    parts = path.split(".")
    if parts[0] not in AXIS_SECTIONS:
        why = {
            "data": "data sources are fixed per study (each dataset is fetched once)",
            "grid": "the grid cannot sweep itself",
        }.get(parts[0], f"{parts[0]!r} is not a settings section")
        return None, f"unknown axis {path!r}: {why}; {AXIS_HELP}"
    cls: Any = Study
    for i, part in enumerate(parts):
        fields = getattr(cls, "model_fields", None)
        if not fields or part not in fields:
            where = ".".join(parts[:i]) or "the study"
            known = ", ".join(fields) if fields else "none"
            return None, f"unknown axis {path!r}: {where} has no field {part!r} (fields: {known})"
        info = fields[part]
        cls = _model_of(info.annotation)
        if i == len(parts) - 1 and cls is not None:
            return (
                None,
                f"{path!r} is a section; sweep its fields ({', '.join(f'{path}.{f}' for f in cls.model_fields)})",
            )
    return info, None


def _model_of(annotation) -> type[BaseModel] | None:
    """The model class of a section annotation (``OptimizerConfig | None`` -> OptimizerConfig)."""
    candidates = [annotation, *typing.get_args(annotation)]
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def axis_problems(study: Study) -> list[tuple[tuple, str]]:
    """Every problem of the study's dotted grid axes: (location, message), the location as in YAML
    (``("grid", "privacy.max_grad_norm", 1)`` for the second value). Each value is validated by its
    field's own schema, with the rest of the study, and so is every combination of the axes' values."""
    problems: list[tuple[tuple, str]] = []
    axes = study.grid.axes
    keys = {matrix_key(a): a for a in GRID_AXES}
    for path, values in axes.items():
        loc = ("grid", path)
        _, why = _field_at(path)
        if why:
            problems.append((loc, why))
            continue
        if matrix_key(path) in keys:
            problems.append(
                (loc, f"conflicts with grid axis {keys[matrix_key(path)]!r} (same DVC key {matrix_key(path)!r})")
            )
            continue
        keys[matrix_key(path)] = path
        if not isinstance(values, list) or not values:
            problems.append((loc, "an axis is a non-empty list of values"))
            continue
        dupes = _duplicates(values)
        if dupes:
            problems.append((loc, f"repeats {', '.join(dupes)}: duplicate cell ids"))
            continue
        if dp_only(path) and all(e == NON_PRIVATE for e in study.grid.epsilon):
            problems.append((loc, f"{path} applies to DP cells only, and grid.epsilon has none"))
            continue
        parent = path.rsplit(".", 1)[0]
        if _get(study, parent) is None:
            problems.append(
                (loc, f"{parent} is not set in the study; give it (every field the DP cells need) to sweep {path}")
            )
            continue
        settings: dict[str, int] = {}  # each value as the schema reads it -> its index
        for i, value in enumerate(values):
            try:
                setting = repr(_get(study.with_overrides({path: value}), path))
            except ValidationError as e:
                problems += [(_relocate(loc, path, i), msg) for loc, msg in map(_describe, e.errors())]
                continue
            if setting in settings:  # 1 and 1.0: two cell ids, one setting trained twice
                problems.append(
                    (
                        _relocate(loc, path, i),
                        f"is the same setting as entry {settings[setting]} "
                        f"({_token(values[settings[setting]])}): duplicate cells",
                    )
                )
            settings.setdefault(setting, i)
    if problems or len(axes) < 2:
        return problems
    for combo in itertools.product(*axes.values()):  # settings that are only wrong together
        overrides = dict(zip(axes, combo))
        try:
            study.with_overrides(overrides)
        except ValidationError as e:
            shown = ", ".join(f"{p}={_token(v)}" for p, v in overrides.items())
            loc, msg = _describe(e.errors()[0])
            problems.append((("grid",), f"the combination {shown} is invalid: {'.'.join(map(str, loc))}: {msg}"))
    return problems


def _get(study: Study, path: str) -> Any:
    node: Any = study
    for part in path.split("."):
        node = getattr(node, part)
    return node


def _relocate(loc: tuple, path: str, index: int) -> tuple:
    """A cell study's error location -> where the value is in the grid (field path + index + rest)."""
    parts = tuple(path.split("."))
    rest = tuple(loc[len(parts) :]) if tuple(loc[: len(parts)]) == parts else ()
    return ("grid", path, index, *rest)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of the grid, with everything training needs."""

    study: Study
    dataset: str
    group: str
    epsilon: float | str
    multiplicity: int
    seed: int
    # The extra (dotted) axes' values of this cell, (path, value) in YAML order; ``study`` already
    # has them applied. DP-only axes are absent from non-private cells.
    axes: tuple[tuple[str, Any], ...] = ()

    @property
    def id(self) -> str:
        tokens = [*(_token(getattr(self, a)) for a in GRID_AXES), *(_token(v) for _, v in self.axes)]
        return "-".join(tokens + [AUDIT_TOKEN] * self.audited)

    @property
    def audited(self) -> bool:
        """Whether this cell trains with canaries and audits itself (its study has an ``audit`` section)."""
        return self.study.audit is not None

    def axis(self, name: str) -> Any:
        """The cell's value of any grid axis, fixed or dotted (None: a DP-only axis of a non-private cell)."""
        if name in GRID_AXES:
            return getattr(self, name)
        return dict(self.axes).get(name)

    @property
    def private(self) -> bool:
        return self.epsilon != NON_PRIVATE

    @property
    def widths(self) -> tuple[int, int, int]:
        return self.study.model.widths_for(self.group)

    def config(self) -> dict:
        """Everything that determines this cell's result (recorded with its metrics)."""
        s = self.study
        return {
            "study": s.name,
            "cell": self.id,
            **{a: getattr(self, a) for a in GRID_AXES},
            "model": {
                **s.model.model_dump(mode="json", exclude={"widths", "restrict"}),
                "widths": list(self.widths),
                "restrict": s.model.restrict_for(self.group),
            },
            "privacy": s.privacy.model_dump(mode="json") if self.private else None,
            "training": s.training.model_dump(mode="json"),
            "data": s.data.model_dump(mode="json"),
            **({"audit": s.audit.model_dump(mode="json")} if self.audited else {}),
            # The extra axes' values (already part of the sections above), only for studies that have them.
            **({"axes": {p: _thawed(v) for p, v in self.axes}} if self.axes else {}),
        }
