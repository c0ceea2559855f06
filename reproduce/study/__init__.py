"""The study schema: the single source of configuration and of every default.

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
import hashlib
import itertools
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from reproduce.atomic import decode_utf8
from reproduce.data.registry import DATASETS as _DATASET_TABLE
from reproduce.errors import StudyError
from reproduce.models.group_norm import RULE as _GROUP_NORM_RULE
from reproduce.models.group_norm import unsplittable_widths

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


# The audit's canary kinds (reproduce.audit.canaries.INPUT_CANARY_KINDS / GRADIENT_CANARY_KINDS).
AUDIT_KINDS = ("input", "gradient")
INPUT_CANARIES = ("mislabeled", "ood")
GRADIENT_CANARIES = ("dirac", "gaussian")
# Default guesses: k "in" and k "out" for each share k/m (Bonferroni-corrected over them; fixed
# before any score is seen). Small shares win when the signal is weak, m/2 each when it is perfect.
DEFAULT_GUESS_SHARES = (0.01, 0.05, 0.1, 0.25, 0.5)


class AuditConfig(_Strict):
    """An opt-in one-run privacy audit of every cell (Steinke, Nasr & Jagielski 2023; reproduce.audit).

    ``canaries`` extra records, each in the training set independently with probability 1/2 (as
    ordinary samples: the Poisson sampler and the accountant's N count the included ones), then one
    guess per canary from the final model and an epsilon lower bound at ``confidence``. An audited
    cell has its own id (suffix ``audit``): canaries change the model, so it never stands in for an
    unaudited cell. ``kind``: ``input`` (black box: ``input_canary`` records, scored by their loss
    under the final model) or ``gradient`` (white box: each canary's per-sample gradient is
    ``gradient_norm`` times a fixed ``gradient_canary`` direction, scored by the weights' move
    along it). A norm above privacy.max_grad_norm makes a missing clip visible.
    """

    canaries: int = Field(1000, ge=2, description="m, the number of canaries")
    kind: Literal[AUDIT_KINDS] = "gradient"  # type: ignore[valid-type]
    input_canary: Literal[INPUT_CANARIES] = "mislabeled"  # type: ignore[valid-type]
    gradient_canary: Literal[GRADIENT_CANARIES] = "dirac"  # type: ignore[valid-type]
    gradient_norm: float = Field(1.0, gt=0, description="norm of a gradient canary before clipping")
    confidence: float = Field(0.95, gt=0, lt=1, description="of the reported lower bound (1 - beta)")
    # (k_pos, k_neg) pairs: "in" for the k_pos highest scores, "out" for the k_neg lowest; the best
    # bound over them is reported, Bonferroni-corrected. Default: DEFAULT_GUESS_SHARES of m each.
    guesses: list[tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]] | None = Field(None, min_length=1)

    @field_validator("guesses")
    @classmethod
    def _guesses_fit(cls, v, info: ValidationInfo):
        m = info.data.get("canaries")   # absent when canaries itself is invalid (reported there)
        for i, (k_pos, k_neg) in enumerate(v or ()):
            if m is not None and not 0 < k_pos + k_neg <= m:
                raise ValueError(f"entry {i} is [{k_pos}, {k_neg}]: each candidate makes between 1 and "
                                 f"canaries = {m} guesses in all")
        return v

    def guess_counts(self) -> list[tuple[int, int]]:
        """The candidate (k_pos, k_neg) pairs the audit tries."""
        if self.guesses is not None:
            return [tuple(g) for g in self.guesses]
        shares = [max(1, int(share * self.canaries)) for share in DEFAULT_GUESS_SHARES]
        return [(k, k) for k in dict.fromkeys(min(k, self.canaries // 2) for k in shares)]


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
    physical_batch_size: int = Field(128, ge=1, description="micro-batch bound for memory (at most 2 x batch_size)")
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


class GridConfig(BaseModel):
    """Each list is one axis; cells are the cross product. Keys other than ``GRID_AXES`` are dotted
    schema paths (``privacy.max_grad_norm``), kept in ``axes`` and validated by ``Study``."""

    # extra="allow" holds the dotted axes (in YAML order); any other unknown key is refused below.
    model_config = ConfigDict(extra="allow", frozen=True)

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


AXIS_HELP = (f"grid axes are {', '.join(GRID_AXES)} or dotted paths of {'/'.join(AXIS_SECTIONS)} fields, "
             "e.g. privacy.max_grad_norm")


class _Located(ValueError):
    """A study-level problem that belongs to one field: ``loc`` is its path, as in a pydantic error."""

    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc = loc


def _require_buildable_widths(model: "ModelConfig", groups: list[str]) -> None:
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
            bad = [g for g in self.grid.group if not _halvable(g)]
            if bad:
                raise ValueError(f"model.restrict=halved cannot apply to group(s) {bad} (needs C_N or D_N with even N); "
                                 "give restrict per group, e.g. {C4: halved}")
        # Above batch_size is meaningful: Poisson batches are larger about half the time, and a bound of
        # batch_size + 4 sqrt(batch_size) runs nearly all of them whole. Twice it is never needed.
        if self.training.physical_batch_size > 2 * self.training.batch_size:
            raise ValueError("training.physical_batch_size must not exceed 2 x training.batch_size (a Poisson "
                             "batch of expected size B is above B + 5 sqrt(B) with negligible probability)")
        return self

    def cells(self) -> list["Cell"]:
        """Every cell: the fixed axes' product, each times the product of the extra axes that apply to
        it (DP-only axes for private cells only); in id order (fixed axes first, then extra axes)."""
        fixed = [getattr(self.grid, a) for a in GRID_AXES]
        extra = self.grid.axes
        studies: dict[tuple, Study] = {}     # one validated study per combination of overrides
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

    def with_overrides(self, overrides: dict[str, Any]) -> "Study":
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

    def cell(self, cell_id: str) -> "Cell":
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


id_token = _token   # public name: how a value appears in a cell id


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
        why = {"data": "data sources are fixed per study (each dataset is fetched once)",
               "grid": "the grid cannot sweep itself"}.get(parts[0], f"{parts[0]!r} is not a settings section")
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
            return None, f"{path!r} is a section; sweep its fields ({', '.join(f'{path}.{f}' for f in cls.model_fields)})"
    return info, None


def _model_of(annotation) -> type[BaseModel] | None:
    """The model class of a section annotation (``OptimizerConfig | None`` -> OptimizerConfig)."""
    candidates = [annotation, *typing.get_args(annotation)]
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def axis_problems(study: "Study") -> list[tuple[tuple, str]]:
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
            problems.append((loc, f"conflicts with grid axis {keys[matrix_key(path)]!r} (same DVC key {matrix_key(path)!r})"))
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
            problems.append((loc, f"{parent} is not set in the study; give it (every field the DP cells need) "
                                  f"to sweep {path}"))
            continue
        settings: dict[str, int] = {}    # each value as the schema reads it -> its index
        for i, value in enumerate(values):
            try:
                setting = repr(_get(study.with_overrides({path: value}), path))
            except ValidationError as e:
                problems += [(_relocate(loc, path, i), msg) for loc, msg in map(_describe, e.errors())]
                continue
            if setting in settings:   # 1 and 1.0: two cell ids, one setting trained twice
                problems.append((_relocate(loc, path, i), f"is the same setting as entry {settings[setting]} "
                                                          f"({_token(values[settings[setting]])}): duplicate cells"))
            settings.setdefault(setting, i)
    if problems or len(axes) < 2:
        return problems
    for combo in itertools.product(*axes.values()):      # settings that are only wrong together
        overrides = dict(zip(axes, combo))
        try:
            study.with_overrides(overrides)
        except ValidationError as e:
            shown = ", ".join(f"{p}={_token(v)}" for p, v in overrides.items())
            loc, msg = _describe(e.errors()[0])
            problems.append((("grid",), f"the combination {shown} is invalid: {'.'.join(map(str, loc))}: {msg}"))
    return problems


def _get(study: "Study", path: str) -> Any:
    node: Any = study
    for part in path.split("."):
        node = getattr(node, part)
    return node


def _relocate(loc: tuple, path: str, index: int) -> tuple:
    """A cell study's error location -> where the value is in the grid (field path + index + rest)."""
    parts = tuple(path.split("."))
    rest = tuple(loc[len(parts):]) if tuple(loc[:len(parts)]) == parts else ()
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
            "study": s.name, "cell": self.id, **{a: getattr(self, a) for a in GRID_AXES},
            "model": {**s.model.model_dump(mode="json", exclude={"widths", "restrict"}), "widths": list(self.widths),
                      "restrict": s.model.restrict_for(self.group)},
            "privacy": s.privacy.model_dump(mode="json") if self.private else None,
            "training": s.training.model_dump(mode="json"),
            "data": s.data.model_dump(mode="json"),
            **({"audit": s.audit.model_dump(mode="json")} if self.audited else {}),
            # The extra axes' values (already part of the sections above), only for studies that have them.
            **({"axes": {p: _thawed(v) for p, v in self.axes}} if self.axes else {}),
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
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p.startswith(("literal[", "function-")) or p in {"float", "int", "str", "bool", "tuple[int, int, int]", "dict[str,tuple[int,int,int]]", "dict[str,tuple[int, int, int]]"})))
    if err["type"] == "extra_forbidden":
        return loc, "unknown key (not part of the study schema)"
    msg = err["msg"].removeprefix("Value error, ")
    located = err.get("ctx", {}).get("error")
    if isinstance(located, _Located):   # raised by Study for one field: point at it, not at line 1
        loc = (*loc, *located.loc)
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
    grid = data.get("grid")
    axes = {k: v for k, v in grid.items() if _is_path(k)} if isinstance(grid, dict) else {}
    # The study without its dotted axes first (their values are checked against it, below).
    problems = [(("grid", k), f"unknown key (not part of the study schema); {AXIS_HELP}")
                for k in (grid if isinstance(grid, dict) else {}) if k not in GRID_AXES and not _is_path(k)]
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
        raise StudyError(f"invalid study {path} ({len(lines)} problem{'s' * (len(lines) > 1)}):\n  " + "\n  ".join(lines)) from None
    stem = Path(path).stem
    if path != "<study>" and study.name != stem:
        line = _line_of(root, ("name",))
        raise StudyError(f"{path}:{line}: name: {study.name!r} must equal the file name {stem!r} (results go to results/<name>/)")
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
        raise StudyError(f"{p}: the study file is empty; a study is a YAML mapping (name, model, privacy, "
                         "training, grid), e.g. copy studies/ci.yaml")
    return parse_study(text, path=str(p))


def study_hash(path: str | Path) -> str:
    """SHA-256 of the study file's bytes (provenance)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
