"""The privacy statement written next to every result: what a run's guarantee rests on and what it does
not cover; read by the report and ``reproduce check``.

A private run's statement is built by ``private_statement`` from the ``Mechanism`` that
``reproduce.privacy.dp_sgd.make_private`` resolved (the values its optimizer, sampler and accountant
use) and what only the finished run knows: the privacy spent, its seed, what it released without
noise, its audit. Nothing of it is read back from a serialised result.
"""

from __future__ import annotations

import dataclasses

from reproduce.records.audit import AuditRecord

# The one sampling scheme make_private builds, as the mechanism and its statement name it.
POISSON = "Poisson"


@dataclasses.dataclass(frozen=True)
class Mechanism:
    """The DP-SGD mechanism of a private run, as resolved by ``reproduce.privacy.dp_sgd.make_private``:
    each value read from the optimizer, the sampler or the accountant that use it.

    Attributes:
        accountant: The accountant's name ("rdp", "prv").
        target_epsilon: The epsilon that ``noise_multiplier`` was calibrated for, at ``delta`` over ``steps``.
        delta: The delta of the calibration and of the epsilon spent.
        noise_multiplier: The accounted sigma: Andrew et al.'s sigma_eff where a noised count shares the
            budget (adaptive clipping), else the gradient noise's own.
        gradient_noise_multiplier: The sigma of the Gaussian noise on the clipped gradient sum (std sigma C);
            ``noise_multiplier`` itself unless a noised count shares the budget, then the larger Theorem 1 split.
        sample_rate: q = B / N, of the Poisson sampler and of every accounted step.
        steps: The optimizer steps the noise was calibrated for (the run must take exactly these).
        max_grad_norm: C, the clipping norm (adaptive clipping: its initial value C_0).
        clipping: The clipping rule's registry name (``reproduce.privacy.clipping``).
        clipping_parameters: The rule's keyword arguments as the rule holds them, ``(name, value)`` pairs.
        rescale_to_unit_norm: Whether the noised mean is divided by C before the optimizer (post-processing).
        sampling: The batch sampling scheme (``POISSON``).
        secure_mode: Whether the sample and the noise come from the OS CSPRNG rather than seeded generators.
        training_set_size: N, the records the sampler draws from (an audited cell's included canaries too).
    """

    accountant: str
    target_epsilon: float
    delta: float
    noise_multiplier: float
    gradient_noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    clipping: str
    clipping_parameters: tuple[tuple[str, float], ...]
    rescale_to_unit_norm: bool
    sampling: str
    secure_mode: bool
    training_set_size: int

    def clipping_parameter(self, name: str) -> float:
        """The clipping rule's parameter ``name``; KeyError naming the rule if it has none of that name."""
        for key, value in self.clipping_parameters:
            if key == name:
                return value
        raise KeyError(f"clipping rule {self.clipping!r} has no parameter {name!r}")


@dataclasses.dataclass(frozen=True)
class PrivacyStatement:
    """What a DP guarantee of a run rests on, and what it does not cover; written next to every private result.

    ``unnoised_releases`` are the result's fields that read the training data without noise
    (``reproduce.privacy.released.unnoised_releases`` of the record the statement goes with).
    """

    private: bool
    accountant: str | None = None
    target_epsilon: float | None = None
    epsilon_spent: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    steps: int | None = None
    max_grad_norm: float | None = None
    sampling: str | None = None
    secure_mode: bool | None = None
    training_set_size: int | None = None
    seed: int | None = None
    hyperparameter_selection: str | None = None
    unnoised_releases: tuple[str, ...] = ()
    unit: str = "sample-level (add/remove one training image)"
    # The clipping rule (reproduce.privacy.clipping) and its parameters; None for the flat rule's
    # (and for results written before rules existed, which all clipped flat).
    clipping: str | None = None
    clipping_gamma: float | None = None  # automatic
    target_quantile: float | None = None  # adaptive
    clip_learning_rate: float | None = None  # adaptive
    count_noise_std: float | None = None  # adaptive: sigma_b
    gradient_noise_multiplier: float | None = None  # adaptive: sigma_grad (noise_multiplier is sigma_eff)
    rescaled_to_unit_norm: bool | None = None  # the noised mean divided by C (post-processing)
    # An audited run (reproduce.audit): canaries made, and of them in the training set (in N).
    audit_canaries: int | None = None
    audit_included: int | None = None

    def sentence(self) -> str:
        """The statement in words: guarantee, its assumptions, its randomness, what it does not cover."""
        if not self.private:
            return "Trained WITHOUT differential privacy (non-private baseline): no privacy guarantee."
        return " ".join([self._guarantee(), self._assumptions(), self._randomness(), self._coverage(), *self._audit()])

    def _guarantee(self) -> str:
        return (
            f"({self.epsilon_spent:.3f}, {self.delta:g})-DP at {self.unit} by DP-SGD: "
            f"{self.sampling} sampling q={self.sample_rate:.6g}, {self.steps} steps, {self._clipping_and_noise()}; "
            f"{self.accountant.upper()} accountant (target epsilon {self.target_epsilon:g})."
        )

    def _clipping_and_noise(self) -> str:
        text = self._clipping()
        if self.rescaled_to_unit_norm:
            text += ", the noised mean divided by the clipping norm before the optimizer (post-processing)"
        return text

    def _clipping(self) -> str:
        sigma, C = self.noise_multiplier, self.max_grad_norm
        if self.clipping == "automatic":
            return (
                f"automatic per-sample clipping g C / (||g|| + {self.clipping_gamma:g}) with C={C:g} (Bu et al. "
                f"2023; every sample scaled, each norm below C), Gaussian noise multiplier {sigma:.4f} "
                f"(std {sigma * C:.4g})"
            )
        if self.clipping == "adaptive":
            grad = self.gradient_noise_multiplier
            return (
                f"per-sample clipping to an adaptive norm C_t (Andrew et al. 2021: from C_0={C:g} towards the "
                f"{self.target_quantile:g} quantile of per-sample gradient norms, step {self.clip_learning_rate:g}; "
                f"C_t is released, as post-processing of a count of unclipped samples noised with std "
                f"{self.count_noise_std:.4g}), Gaussian gradient noise multiplier {grad:.4f} (std {grad:.4f} C_t); "
                f"gradient and count accounted together as one Gaussian mechanism with noise multiplier "
                f"{sigma:.4f} (Theorem 1)"
            )
        return f"per-sample clipping to {C:g}, Gaussian noise multiplier {sigma:.4f} (std {sigma * C:.4g})"

    def _assumptions(self) -> str:
        if self.hyperparameter_selection:
            chosen = f'How they were chosen, as the study states: "{self.hyperparameter_selection.strip()}"'
        else:
            chosen = (
                "The study does not say how they were chosen: the guarantee assumes they were not chosen "
                "on the private training data."
            )
        return (
            f"The training set size N={self.training_set_size} is treated as public (q = B/N). "
            "The guarantee is for this one run with hyperparameters fixed in advance; it does not account "
            f"for choosing them. {chosen}"
        )

    def _randomness(self) -> str:
        if self.secure_mode:
            return (
                "Secure mode: the Poisson sample and the noise come from the operating system's CSPRNG "
                "(os.urandom), each noise entry the sum of 4 Gaussian draws divided by 2 against "
                "floating-point attacks; not reproducible."
            )
        return (
            f"NOT secure: the Poisson sample and the noise come from generators seeded with the seed "
            f"recorded in this result ({self.seed}), so anyone who has it can regenerate the noise and the "
            "guarantee does not hold against them: for research reproduction, not for release."
        )

    def _audit(self) -> list[str]:
        if self.audit_canaries is None:
            return []
        return [
            f"Audited run: N counts {self.audit_included} canaries (of {self.audit_canaries} made, each included "
            "with probability 1/2) trained on as ordinary records; the guarantee covers them as it covers every "
            "record, and the audit's lower bound is measured on this run, not on an unaudited one."
        ]

    def _coverage(self) -> str:
        unnoised = ", ".join(self.unnoised_releases) or "none"
        return (
            "Covers the trained weights and what is computed from them on other data. Released without "
            f"noise, reading the training data, and not covered: {unnoised} (a null loss marks an empty "
            "Poisson batch; the timings depend on the sampled batch sizes)."
        )


def private_statement(
    mechanism: Mechanism,
    *,
    epsilon_spent: float,
    seed: int,
    hyperparameter_selection: str | None,
    unnoised_releases: tuple[str, ...],
    audit: AuditRecord | None = None,
) -> PrivacyStatement:
    """The statement of a private run: its mechanism, and what only the finished run knows.

    Args:
        mechanism: What ``make_private`` resolved; the run took exactly its ``steps``.
        epsilon_spent: The accountant's epsilon at ``mechanism.delta`` for the steps that ran.
        seed: The run's seed (it regenerates a seeded run's sample and noise).
        hyperparameter_selection: How the study says its hyperparameters were chosen; None if it does not.
        unnoised_releases: The run's result fields released without noise
            (``reproduce.privacy.released.unnoised_releases``).
        audit: An audited run's audit record (its canary counts); None for every other run.

    Returns:
        The statement; fields a mechanism does not use stay None, as in statements written before them.
    """
    m = mechanism
    return PrivacyStatement(
        private=True,
        accountant=m.accountant,
        target_epsilon=m.target_epsilon,
        epsilon_spent=epsilon_spent,
        delta=m.delta,
        noise_multiplier=m.noise_multiplier,
        sample_rate=m.sample_rate,
        steps=m.steps,
        max_grad_norm=m.max_grad_norm,
        sampling=m.sampling,
        secure_mode=m.secure_mode,
        training_set_size=m.training_set_size,
        seed=seed,
        hyperparameter_selection=hyperparameter_selection,
        unnoised_releases=unnoised_releases,
        **({} if audit is None else {"audit_canaries": audit.canaries, "audit_included": audit.included}),
        **_clipping_fields(m),
    )


def _clipping_fields(m: Mechanism) -> dict[str, object]:
    """The statement's clipping fields (none for flat clipping unrescaled: earlier statements' form)."""
    out: dict[str, object] = {"rescaled_to_unit_norm": True} if m.rescale_to_unit_norm else {}
    if m.clipping == "flat":
        return out
    if m.clipping == "automatic":
        return {**out, "clipping": "automatic", "clipping_gamma": m.clipping_parameter("gamma")}
    if m.clipping == "adaptive":
        # Two sigmas: the statement's noise_multiplier is the accounted sigma_eff, beside the gradient's.
        return {
            **out,
            "clipping": "adaptive",
            "target_quantile": m.clipping_parameter("target_quantile"),
            "clip_learning_rate": m.clipping_parameter("learning_rate"),
            "count_noise_std": m.clipping_parameter("count_noise_std"),
            "gradient_noise_multiplier": m.gradient_noise_multiplier,
        }
    # A guarantee must not be stated in another rule's words.
    raise ValueError(
        f"the privacy statement has no fields for clipping rule {m.clipping!r}: add them to "
        "PrivacyStatement (reproduce/records/privacy.py) and its sentence"
    )
