"""The study schema: the single source of configuration and of every default.

A study is a YAML file in ``studies/``. Scalars configure every cell; each list under ``grid`` is one
axis, and the cross product of the axes is the set of cells. DVC expands the same axes with
``matrix:`` (see dvc.yaml), so a cell id is the axis values joined by "-", in the order of
``GRID_AXES`` - exactly the ``${key}`` DVC gives the stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reproduce.data.registry import DATASETS as _DATASET_TABLE
from reproduce.errors import StudyError

GRID_AXES = ("dataset", "group", "epsilon", "multiplicity", "seed")
NON_PRIVATE = "non-private"
GROUP_PATTERN = re.compile(r"^(e|C[1-9][0-9]*|D[1-9][0-9]*|O2|SO2)$")
GROUP_HELP = 'e (conventional CNN), C<N> or D<N> with N >= 1, O2, SO2'
# Datasets a study may name: the dataset table's (reproduce.data.registry), which also resolves them.
DATASETS = tuple(_DATASET_TABLE)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """Architecture shared by the cells; the group is a grid axis."""

    architecture: Literal["resnet9"] = "resnet9"
    # Either one layout for every group, or a layout per group (to compare models of similar size).
    widths: Union[tuple[int, int, int], dict[str, tuple[int, int, int]]] = (8, 16, 32)
    # "halved" restricts C_N -> C_{N/2} / D_N -> D_{N/2} before conv4; per group if a mapping
    # (groups not listed stay unrestricted: C1, O2, SO2 and "e" have no half-rotation subgroup).
    restrict: Union[Literal["none", "halved"], dict[str, Literal["none", "halved"]]] = "none"
    fix_params: bool = False
    # Steerable basis of C_N/D_N convolutions: "authors" (radial cutoff 3r, the authors' later code)
    # or "escnn" (escnn's default; it reproduces the MedMNIST paper's C4 counts with fix_params).
    basis: Literal["authors", "escnn"] = "authors"
    # Standardise each equivariant convolution's basis coefficients, (w - mean) / (std + 1e-5) over
    # the layer, before expanding the filter (the authors' code always does; no effect on "e").
    weight_standardisation: bool = False

    @field_validator("restrict")
    @classmethod
    def _restrictable(cls, v):
        items = v.items() if isinstance(v, dict) else []
        for group, r in items:
            if r == "halved" and not _halvable(group):
                raise ValueError(f"group {group!r} cannot be halved: restrict=halved needs C_N or D_N with even N")
        return v

    def restrict_for(self, group: str) -> str:
        if isinstance(self.restrict, dict):
            return self.restrict.get(group, "none")
        return self.restrict

    @field_validator("widths")
    @classmethod
    def _positive(cls, v):
        layouts = v.values() if isinstance(v, dict) else [v]
        for layout in layouts:
            if any(w < 1 for w in layout):
                raise ValueError(f"widths must be positive integers, got {list(layout)}")
        if isinstance(v, dict):
            bad = [g for g in v if not GROUP_PATTERN.match(g)]
            if bad:
                raise ValueError(f"unknown group(s) {bad} in widths; allowed: {GROUP_HELP}")
        return v

    def widths_for(self, group: str) -> tuple[int, int, int]:
        if isinstance(self.widths, dict):
            return tuple(self.widths[group])
        return tuple(self.widths)


def _halvable(group: str) -> bool:
    m = re.match(r"^[CD]([0-9]+)$", group)
    return bool(m) and int(m.group(1)) % 2 == 0


class ClippingConfig(_Strict):
    """The per-sample clipping rule of DP cells; each rule reads only its own parameters.

    - ``flat``: min(1, C / ||g||), opacus's (today's and every earlier study's).
    - ``automatic``: g * C / (||g|| + gamma) for every sample (Bu et al. 2023, AUTO-S); sensitivity C.
    - ``adaptive``: flat, with C (starting at privacy.max_grad_norm) following the target quantile
      of per-sample norms from a noised unclipped count (Andrew et al. 2021); the count's noise is
      accounted with the gradient's (Theorem 1), so the study's target epsilon covers both.
    """

    rule: Literal["flat", "automatic", "adaptive"] = "flat"
    gamma: float = Field(0.01, gt=0, description="automatic: stability constant (Bu et al.: 0.01)")
    target_quantile: float = Field(0.5, ge=0, le=1, description="adaptive: share of samples left unclipped")
    clip_learning_rate: float = Field(0.2, gt=0, description="adaptive: eta_C of C <- C exp(-eta_C (b - q))")
    # None: the expected batch size / 20, Andrew et al.'s recommendation; it must exceed half the
    # calibrated noise multiplier (else the count alone would spend the budget: an error says so).
    count_noise_std: float | None = Field(None, gt=0, description="adaptive: sigma_b, std of the count's noise")
    # Divide the noised mean by C before the optimizer (jax_privacy's option; post-processing): SGD's
    # step then does not grow with an adaptive C (no effect at C = 1).
    rescale_to_unit_norm: bool = False

    def count_noise_for(self, expected_batch_size: int) -> float:
        """sigma_b for a logical batch of ``expected_batch_size`` samples."""
        return self.count_noise_std if self.count_noise_std is not None else expected_batch_size / 20

    def rule_parameters(self, *, expected_batch_size: int) -> dict[str, float]:
        """The keyword arguments of ``reproduce.privacy.clipping.make_clipping_rule`` for ``rule``."""
        if self.rule == "automatic":
            return {"gamma": self.gamma}
        if self.rule == "adaptive":
            return {"target_quantile": self.target_quantile, "learning_rate": self.clip_learning_rate,
                    "count_noise_std": self.count_noise_for(expected_batch_size)}
        return {}


class PrivacyConfig(_Strict):
    """DP-SGD settings for every cell whose grid epsilon is a number."""

    delta: float = Field(1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    accountant: Literal["rdp", "prv"] = "rdp"
    # Poisson sample and noise from the OS CSPRNG (reproduce.privacy.secure_rng) for runs whose
    # results are released; not reproducible by design. Off: both come from seeded generators.
    secure_mode: bool = False
    # How the hyperparameters were chosen, quoted by every private cell's privacy statement (the
    # guarantee covers one run; tuning on the private data is not accounted for).
    hyperparameter_selection: str | None = Field(None, min_length=1)
    # How each sample's gradient is bounded by max_grad_norm (reproduce.privacy.clipping).
    clipping: ClippingConfig = ClippingConfig()


OPTIMIZER_NAMES = ("sgd", "adam", "dp_adambc")
# The hyperparameters each optimizer reads (the builders of reproduce.privacy.optimizers); the
# others are ignored, so a grid may sweep the name over one optimizer section.
OPTIMIZER_HYPERPARAMETERS = {
    "sgd": ("momentum", "weight_decay"),
    "adam": ("betas", "eps", "weight_decay"),
    "dp_adambc": ("betas", "gamma_prime", "weight_decay"),
}


class OptimizerConfig(_Strict):
    """An optimizer and its hyperparameters (each read only by the optimizers that have it).

    ``dp_adambc`` is DP-AdamBC (Tang et al. 2024): Adam whose second moment has the DP noise variance
    (sigma C / B)^2 taken out, floored at ``gamma_prime`` (post-processing). In a non-private cell
    the variance is 0 and it is Adam with ``gamma_prime`` under the root in place of ``eps``.
    ``lr`` may be one rate or a rate per optimizer name, for grids that sweep ``name``.
    """

    name: Literal[OPTIMIZER_NAMES] = "sgd"  # type: ignore[valid-type]
    lr: Union[float, dict[Literal[OPTIMIZER_NAMES], float]] = 0.1  # type: ignore[valid-type]
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd: heavy-ball momentum")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.999), description="adam, dp_adambc: moment decays")
    eps: float = Field(1e-8, gt=0, description="adam: added to the root of the second moment")
    gamma_prime: float = Field(1e-8, gt=0, description="dp_adambc: floor of the corrected second moment")

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, v):
        rates = v.values() if isinstance(v, dict) else [v]
        if any(not r > 0 for r in rates):
            raise ValueError(f"learning rates must be > 0, got {v}")
        return v

    @field_validator("betas")
    @classmethod
    def _betas(cls, v):
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must lie in [0, 1), got {list(v)}")
        return v

    @model_validator(mode="after")
    def _lr_for_name(self):
        if isinstance(self.lr, dict) and self.name not in self.lr:
            raise ValueError(f"lr gives no rate for optimizer {self.name!r} (rates for: {', '.join(self.lr)})")
        return self

    @property
    def learning_rate(self) -> float:
        """The rate of ``name``."""
        return float(self.lr[self.name]) if isinstance(self.lr, dict) else float(self.lr)

    def hyperparameters(self) -> dict[str, Any]:
        """The keyword arguments of ``reproduce.privacy.optimizers.make_optimizer`` for ``name``."""
        return {"lr": self.learning_rate, **{k: getattr(self, k) for k in OPTIMIZER_HYPERPARAMETERS[self.name]}}


class TrainingConfig(_Strict):
    optimizer: OptimizerConfig = OptimizerConfig()
    # DP cells' optimizer when it differs (DP-SGD's clipped, noised mean gradient usually wants a
    # larger step without momentum); default: the same as non-private cells.
    dp_optimizer: OptimizerConfig | None = None
    batch_size: int = Field(256, ge=1, description="logical (expected) batch size")
    physical_batch_size: int = Field(128, ge=1, description="micro-batch bound for memory")
    # Exactly one of epochs / steps; with steps, training stops after that many optimizer steps
    # (mid-epoch if need be) and the accountant is calibrated for exactly that many.
    epochs: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    max_train_samples: int | None = Field(None, ge=1, description="use a prefix of the train split")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="EMA of weights, evaluated at the end")
    log_every: int = Field(5, ge=1, description="steps between gradient sparsity/alignment records")


class DataConfig(_Strict):
    """Where dataset bytes come from (the dataset itself is a grid axis)."""

    size: Literal[28, 64, 128, 224] = 28      # MedMNIST image size
    mirror: str | None = Field(None, description="base URL replacing the official host (also REPRODUCE_*_MIRROR)")
    # Local archives with the checksum the user states, e.g. {cifar10: {path: ..., sha256: ...}}.
    local_files: dict[str, "LocalFile"] = {}
    # What the mirror serves when it is not the official file (a rebuild, a subset), e.g.
    # {cifar10: <sha256>}: checked instead of the official MD5.
    mirror_sha256: dict[Literal[DATASETS], Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = {}  # type: ignore[valid-type]


class LocalFile(_Strict):
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Tolerance(_Strict):
    """Allowed |now - baseline|: max(abs, std x the baseline's seed std of the cell's row)."""

    abs: float = Field(0.0, ge=0)
    std: float = Field(0.0, ge=0)


class ChecksConfig(_Strict):
    """What `reproduce check` compares against baselines/<study>.json, per cell."""

    tolerances: dict[str, Tolerance] = {
        "test_acc": Tolerance(abs=0.05, std=3.0),   # hardware float differences move accuracy a little
        "epsilon": Tolerance(abs=1e-6),            # privacy accounting does not depend on hardware
        "steps": Tolerance(abs=0.0),
        "parameters": Tolerance(abs=0.0),
    }


class GridConfig(_Strict):
    """Each list is one axis; cells are the cross product."""

    dataset: list[Literal[DATASETS]] = Field(min_length=1)  # type: ignore[valid-type]
    group: list[str] = Field(min_length=1)
    # A target epsilon, or "non-private" to train without DP (explicit, never a fallback).
    # int stays int so the cell id matches DVC's ${key} ("8", not "8.0").
    epsilon: list[Union[int, float, str]] = Field(min_length=1)
    multiplicity: list[Annotated[int, Field(ge=1)]] = Field([1], min_length=1)
    seed: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)

    @field_validator("group")
    @classmethod
    def _groups(cls, v):
        for g in v:
            if not GROUP_PATTERN.match(g):
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
                raise ValueError(f"entry {i} is {e!r}; each epsilon must be a positive number (target epsilon) or {NON_PRIVATE!r}")
        return v

    @field_validator(*GRID_AXES)
    @classmethod
    def _no_duplicates(cls, v):
        values = [_token(x) for x in v]
        dupes = sorted({x for x in values if values.count(x) > 1})
        if dupes:
            raise ValueError(f"repeats {', '.join(dupes)}: duplicate cell ids")
        return v


class Study(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    description: str = ""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    training: TrainingConfig = TrainingConfig()
    checks: ChecksConfig = ChecksConfig()
    grid: GridConfig

    @model_validator(mode="after")
    def _consistent(self):
        if isinstance(self.model.widths, dict):
            missing = [g for g in self.grid.group if g not in self.model.widths]
            if missing:
                raise ValueError(f"model.widths has no layout for group(s) {missing}")
        if (self.training.epochs is None) == (self.training.steps is None):
            raise ValueError("training needs exactly one of epochs or steps")
        if self.model.restrict == "halved":
            bad = [g for g in self.grid.group if not _halvable(g)]
            if bad:
                raise ValueError(f"model.restrict=halved cannot apply to group(s) {bad} (needs C_N or D_N with even N); "
                                 "give restrict per group, e.g. {C4: halved}")
        if self.training.physical_batch_size > self.training.batch_size:
            raise ValueError("training.physical_batch_size must not exceed training.batch_size")
        return self

    def cells(self) -> list["Cell"]:
        axes = [getattr(self.grid, a) for a in GRID_AXES]
        return [Cell(self, **dict(zip(GRID_AXES, values))) for values in itertools.product(*axes)]

    def cell(self, cell_id: str) -> "Cell":
        for c in self.cells():
            if c.id == cell_id:
                return c
        raise StudyError(f"study {self.name!r} has no cell {cell_id!r}")


def _token(value: Any) -> str:
    """How DVC's matrix prints a value in ${key}: YAML scalars as str()."""
    return str(value)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of the grid, with everything training needs."""

    study: Study
    dataset: str
    group: str
    epsilon: float | str
    multiplicity: int
    seed: int

    @property
    def id(self) -> str:
        return "-".join(_token(getattr(self, a)) for a in GRID_AXES)

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
            "study": s.name, "cell": self.id, **{a: getattr(self, a) for a in GRID_AXES},
            "model": {**s.model.model_dump(mode="json", exclude={"widths", "restrict"}), "widths": list(self.widths),
                      "restrict": s.model.restrict_for(self.group)},
            "privacy": s.privacy.model_dump(mode="json") if self.private else None,
            "training": s.training.model_dump(mode="json"),
            "data": s.data.model_dump(mode="json"),
        }


# ---------------------------------------------------------------- loading with located errors

class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
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
            continue   # pydantic's union branch names (e.g. 'float') follow list indices
        else:
            break
    else:
        if node is not None:
            line = node.start_mark.line + 1
    return line


def _describe(err: dict) -> tuple[tuple, str]:
    # Drop pydantic's union/literal branch labels from the path: users think in YAML keys.
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p.startswith(("literal[", "function-")) or p in {"float", "int", "str", "bool", "tuple[int, int, int]", "dict[str,tuple[int,int,int]]"})))
    if err["type"] == "extra_forbidden":
        return loc, "unknown key (not part of the study schema)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] in ("literal_error",) and "expected" in err.get("ctx", {}):
        msg = f"got {err['input']!r}; allowed: {err['ctx']['expected']}"
    return loc, msg


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
    try:
        study = Study.model_validate(data)
    except ValidationError as e:
        lines = []
        seen = set()
        for err in e.errors():
            loc, msg = _describe(err)
            field = ".".join(str(p) for p in loc) or "(study)"
            line = _line_of(root, loc)
            entry = f"{path}:{line or 1}: {field}: {msg}"
            if entry not in seen:
                seen.add(entry)
                lines.append(entry)
        lines.sort(key=lambda entry: int(entry.split(":")[1]))
        raise StudyError(f"invalid study {path} ({len(lines)} problem{'s' * (len(lines) > 1)}):\n  " + "\n  ".join(lines)) from None
    stem = Path(path).stem
    if path != "<study>" and study.name != stem:
        line = _line_of(root, ("name",))
        raise StudyError(f"{path}:{line}: name: {study.name!r} must equal the file name {stem!r} (results go to results/<name>/)")
    return study


def load_study(path: str | Path) -> Study:
    """Read and validate ``path``; raises StudyError (exit 2) naming file, line and field."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise StudyError(f"{p}: cannot read study file: {e.strerror}") from None
    return parse_study(text, path=str(p))


def study_hash(path: str | Path) -> str:
    """SHA-256 of the study file's bytes (provenance)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
