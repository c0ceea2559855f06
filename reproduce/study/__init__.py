"""The study schema: the single source of configuration and of every default.

A study is a YAML file in ``studies/``: its sections configure every cell, its ``grid`` lists the axes
whose cross product is the set of cells. The package in the order a study is read:

- ``sections``: one Pydantic model per settings section (model, privacy, training, data, checks, audit);
- ``choices``: the named choices, read from their registries, and the per-choice settings (discriminated
  unions) that optimizer and clipping builders read;
- ``grid``: the grid's axes, ``Study`` (the whole file) and ``Cell`` (one point of the grid);
- ``load``: reading a file, every problem reported with file, line and field;
- ``files``: where a study's files live.

Every public name is importable from ``reproduce.study``.
"""

from reproduce.models.groups import GROUP_HELP, GROUP_PATTERN
from reproduce.study.choices import AUDIT_KINDS, GRADIENT_CANARIES, INPUT_CANARIES, OPTIMIZER_NAMES
from reproduce.study.grid import (
    AUDIT_TOKEN,
    AXIS_HELP,
    AXIS_SECTIONS,
    DP_ONLY,
    GRID_AXES,
    NON_PRIVATE,
    Cell,
    GridConfig,
    Study,
    axis_problems,
    dp_only,
    id_token,
    matrix_key,
)
from reproduce.study.load import load_study, parse_study, study_hash
from reproduce.study.sections import (
    DATASETS,
    DEFAULT_GUESS_SHARES,
    OPTIMIZER_HYPERPARAMETERS,
    AuditConfig,
    ChecksConfig,
    ClippingConfig,
    DataConfig,
    LocalFile,
    ModelConfig,
    OptimizerConfig,
    PrivacyConfig,
    Tolerance,
    TrainingConfig,
)

__all__ = [
    "AUDIT_KINDS",
    "AUDIT_TOKEN",
    "AXIS_HELP",
    "AXIS_SECTIONS",
    "DATASETS",
    "DEFAULT_GUESS_SHARES",
    "DP_ONLY",
    "GRADIENT_CANARIES",
    "GRID_AXES",
    "GROUP_HELP",
    "GROUP_PATTERN",
    "INPUT_CANARIES",
    "NON_PRIVATE",
    "OPTIMIZER_HYPERPARAMETERS",
    "OPTIMIZER_NAMES",
    "AuditConfig",
    "Cell",
    "ChecksConfig",
    "ClippingConfig",
    "DataConfig",
    "GridConfig",
    "LocalFile",
    "ModelConfig",
    "OptimizerConfig",
    "PrivacyConfig",
    "Study",
    "Tolerance",
    "TrainingConfig",
    "axis_problems",
    "dp_only",
    "id_token",
    "load_study",
    "matrix_key",
    "parse_study",
    "study_hash",
]
