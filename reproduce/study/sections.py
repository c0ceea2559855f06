"""The study's settings sections: one Pydantic model per YAML section, with every default.

Names of choices (optimizers, clipping rules, accountants, canary kinds, architectures, groups) come from
their registries (``reproduce.study.choices``, ``reproduce.models.groups``); the per-choice settings a
builder reads are the discriminated unions of ``reproduce.study.choices``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from reproduce.data.registry import DATASETS as _DATASET_TABLE
from reproduce.models import DEFAULT_ARCHITECTURE
from reproduce.models.groups import GROUP_HELP, halvable, is_group
from reproduce.models.registry import ARCHITECTURES
from reproduce.study.choices import (
    ACCOUNTANT_NAMES,
    AUDIT_KINDS,
    CLIPPING_RULE_NAMES,
    CLIPPING_SETTINGS,
    GRADIENT_CANARIES,
    INPUT_CANARIES,
    OPTIMIZER_NAMES,
    OPTIMIZER_SETTINGS,
    ClippingSettings,
    OptimizerSettings,
    unknown_settings,
)

# Datasets a study may name: the dataset table's (reproduce.data.registry), which also resolves them.
DATASETS = tuple(_DATASET_TABLE)


def registered_architecture(name: str) -> str:
    """A name registered with ``@register_architecture`` (reproduce.models.registry).

    Checked when a study is validated, not frozen into a Literal at import: an architecture that a
    module registers later (a plug-in) is a valid choice too.
    """
    if name not in ARCHITECTURES:
        allowed = " or ".join(repr(a) for a in ARCHITECTURES)
        raise ValueError(
            f"got {name!r}; allowed: {allowed} (the architectures registered in reproduce.models.registry)"
        )
    return name


Architecture = Annotated[str, AfterValidator(registered_architecture)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """Architecture shared by the cells; the group is a grid axis."""

    architecture: Architecture = DEFAULT_ARCHITECTURE
    # Either one layout for every group, or a layout per group (to compare models of similar size).
    widths: tuple[int, int, int] | dict[str, tuple[int, int, int]] = (8, 16, 32)
    # "halved" restricts C_N -> C_{N/2} / D_N -> D_{N/2} before conv4; per group if a mapping
    # (groups not listed stay unrestricted: C1, O2, SO2 and "e" have no half-rotation subgroup).
    restrict: Literal["none", "halved"] | dict[str, Literal["none", "halved"]] = "none"
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
            if r == "halved" and not halvable(group):
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
            bad = [g for g in v if not is_group(g)]
            if bad:
                raise ValueError(f"unknown group(s) {bad} in widths; allowed: {GROUP_HELP}")
        return v

    def widths_for(self, group: str) -> tuple[int, int, int]:
        if isinstance(self.widths, dict):
            return tuple(self.widths[group])
        return tuple(self.widths)


class ClippingConfig(_Strict):
    """The per-sample clipping rule of DP cells; each rule reads only its own parameters.

    - ``flat``: min(1, C / ||g||), opacus's (today's and every earlier study's).
    - ``automatic``: g * C / (||g|| + gamma) for every sample (Bu et al. 2023, AUTO-S); sensitivity C.
    - ``adaptive``: flat, with C (starting at privacy.max_grad_norm) following the target quantile
      of per-sample norms from a noised unclipped count (Andrew et al. 2021); the count's noise is
      accounted with the gradient's (Theorem 1), so the study's target epsilon covers both.
    """

    rule: Literal[CLIPPING_RULE_NAMES] = "flat"  # type: ignore[valid-type]
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

    def offered(self, *, expected_batch_size: int) -> dict[str, Any]:
        """Every rule parameter this section can give, by the rules' keyword names (each rule takes its own)."""
        return {
            "gamma": self.gamma,
            "target_quantile": self.target_quantile,
            "learning_rate": self.clip_learning_rate,
            "count_noise_std": self.count_noise_for(expected_batch_size),
        }

    def resolved(self, *, expected_batch_size: int) -> ClippingSettings:
        """``rule`` and exactly the parameters it reads (a member of ``choices.ClippingSettings``)."""
        offered = self.offered(expected_batch_size=expected_batch_size)
        return _CLIPPING_ADAPTER.validate_python({**offered, "rule": self.rule})

    def rule_parameters(self, *, expected_batch_size: int) -> dict[str, float]:
        """The keyword arguments of ``reproduce.privacy.clipping.make_clipping_rule`` for ``rule``."""
        return self.resolved(expected_batch_size=expected_batch_size).arguments(discriminator="rule")


class PrivacyConfig(_Strict):
    """DP-SGD settings for every cell whose grid epsilon is a number."""

    delta: float = Field(1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    accountant: Literal[ACCOUNTANT_NAMES] = "rdp"  # type: ignore[valid-type]
    # Poisson sample and noise from the OS CSPRNG (reproduce.privacy.secure_rng) for runs whose
    # results are released; not reproducible by design. Off: both come from seeded generators.
    secure_mode: bool = False
    # How the hyperparameters were chosen, quoted by every private cell's privacy statement (the
    # guarantee covers one run; tuning on the private data is not accounted for).
    hyperparameter_selection: str | None = Field(None, min_length=1)
    # How each sample's gradient is bounded by max_grad_norm (reproduce.privacy.clipping).
    clipping: ClippingConfig = ClippingConfig()


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
        m = info.data.get("canaries")  # absent when canaries itself is invalid (reported there)
        for i, (k_pos, k_neg) in enumerate(v or ()):
            if m is not None and not 0 < k_pos + k_neg <= m:
                raise ValueError(
                    f"entry {i} is [{k_pos}, {k_neg}]: each candidate makes between 1 and canaries = {m} guesses in all"
                )
        return v

    def guess_counts(self) -> list[tuple[int, int]]:
        """The candidate (k_pos, k_neg) pairs the audit tries."""
        if self.guesses is not None:
            return [tuple(g) for g in self.guesses]
        shares = [max(1, int(share * self.canaries)) for share in DEFAULT_GUESS_SHARES]
        return [(k, k) for k in dict.fromkeys(min(k, self.canaries // 2) for k in shares)]


# The hyperparameters each optimizer reads besides lr: its builder's keywords (reproduce.privacy.optimizers);
# the others are ignored, so a grid may sweep the name over one optimizer section.
OPTIMIZER_HYPERPARAMETERS = {
    name: tuple(f for f in model.model_fields if f not in ("name", "lr")) for name, model in OPTIMIZER_SETTINGS.items()
}


class OptimizerConfig(_Strict):
    """An optimizer and its hyperparameters (each read only by the optimizers that have it).

    ``dp_adambc`` is DP-AdamBC (Tang et al. 2024): Adam whose second moment has the DP noise variance
    (sigma C / B)^2 taken out, floored at ``gamma_prime`` (post-processing). In a non-private cell
    the variance is 0 and it is Adam with ``gamma_prime`` under the root in place of ``eps``.
    ``lr`` may be one rate or a rate per optimizer name, for grids that sweep ``name``.
    """

    name: Literal[OPTIMIZER_NAMES] = "sgd"  # type: ignore[valid-type]
    lr: float | dict[Literal[OPTIMIZER_NAMES], float] = 0.1  # type: ignore[valid-type]
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

    def resolved(self) -> OptimizerSettings:
        """``name`` and exactly the hyperparameters it reads (a member of ``choices.OptimizerSettings``)."""
        offered = {k: getattr(self, k) for k in type(self).model_fields}
        return _OPTIMIZER_ADAPTER.validate_python({**offered, "lr": self.learning_rate})

    def hyperparameters(self) -> dict[str, Any]:
        """The keyword arguments of ``reproduce.privacy.optimizers.make_optimizer`` for ``name``."""
        return self.resolved().arguments(discriminator="name")


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

    size: Literal[28, 64, 128, 224] = 28  # MedMNIST image size
    mirror: str | None = Field(None, description="base URL replacing the official host (also REPRODUCE_*_MIRROR)")
    # Local archives with the checksum the user states, e.g. {cifar10: {path: ..., sha256: ...}}.
    local_files: dict[str, LocalFile] = {}
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
        "test_acc": Tolerance(abs=0.05, std=3.0),  # hardware float differences move accuracy a little
        "epsilon": Tolerance(abs=1e-6),  # privacy accounting does not depend on hardware
        "steps": Tolerance(abs=0.0),
        "parameters": Tolerance(abs=0.0),
    }


_OPTIMIZER_ADAPTER = TypeAdapter(OptimizerSettings)
_CLIPPING_ADAPTER = TypeAdapter(ClippingSettings)
# A registry ahead of the schema (a builder reading a setting no section field holds) fails at import.
_UNKNOWN = [
    *unknown_settings(OPTIMIZER_SETTINGS, offered=set(OptimizerConfig.model_fields), section="training.optimizer"),
    *unknown_settings(
        CLIPPING_SETTINGS,
        offered={"rule", *ClippingConfig().offered(expected_batch_size=1)},
        section="privacy.clipping",
    ),
]
if _UNKNOWN:
    raise TypeError("the study schema lacks settings its registries read: " + "; ".join(_UNKNOWN))
