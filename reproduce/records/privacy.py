"""The privacy statement written next to every result: what a run's guarantee rests on and what it does
not cover (built by the trainers from the mechanism they ran; read by the report and ``reproduce check``)."""

from __future__ import annotations

import dataclasses


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
    clipping_gamma: float | None = None            # automatic
    target_quantile: float | None = None           # adaptive
    clip_learning_rate: float | None = None        # adaptive
    count_noise_std: float | None = None           # adaptive: sigma_b
    gradient_noise_multiplier: float | None = None  # adaptive: sigma_grad (noise_multiplier is sigma_eff)
    rescaled_to_unit_norm: bool | None = None      # the noised mean divided by C (post-processing)
    # An audited run (reproduce.audit): canaries made, and of them in the training set (in N).
    audit_canaries: int | None = None
    audit_included: int | None = None

    def sentence(self) -> str:
        """The statement in words: guarantee, its assumptions, its randomness, what it does not cover."""
        if not self.private:
            return "Trained WITHOUT differential privacy (non-private baseline): no privacy guarantee."
        return " ".join([self._guarantee(), self._assumptions(), self._randomness(), self._coverage(), *self._audit()])

    def _guarantee(self) -> str:
        return (f"({self.epsilon_spent:.3f}, {self.delta:g})-DP at {self.unit} by DP-SGD: "
                f"{self.sampling} sampling q={self.sample_rate:.6g}, {self.steps} steps, {self._clipping_and_noise()}; "
                f"{self.accountant.upper()} accountant (target epsilon {self.target_epsilon:g}).")

    def _clipping_and_noise(self) -> str:
        text = self._clipping()
        if self.rescaled_to_unit_norm:
            text += ", the noised mean divided by the clipping norm before the optimizer (post-processing)"
        return text

    def _clipping(self) -> str:
        sigma, C = self.noise_multiplier, self.max_grad_norm
        if self.clipping == "automatic":
            return (f"automatic per-sample clipping g C / (||g|| + {self.clipping_gamma:g}) with C={C:g} (Bu et al. "
                    f"2023; every sample scaled, each norm below C), Gaussian noise multiplier {sigma:.4f} "
                    f"(std {sigma * C:.4g})")
        if self.clipping == "adaptive":
            grad = self.gradient_noise_multiplier
            return (f"per-sample clipping to an adaptive norm C_t (Andrew et al. 2021: from C_0={C:g} towards the "
                    f"{self.target_quantile:g} quantile of per-sample gradient norms, step {self.clip_learning_rate:g}; "
                    f"C_t is released, as post-processing of a count of unclipped samples noised with std "
                    f"{self.count_noise_std:.4g}), Gaussian gradient noise multiplier {grad:.4f} (std {grad:.4f} C_t); "
                    f"gradient and count accounted together as one Gaussian mechanism with noise multiplier "
                    f"{sigma:.4f} (Theorem 1)")
        return f"per-sample clipping to {C:g}, Gaussian noise multiplier {sigma:.4f} (std {sigma * C:.4g})"

    def _assumptions(self) -> str:
        if self.hyperparameter_selection:
            chosen = f'How they were chosen, as the study states: "{self.hyperparameter_selection.strip()}"'
        else:
            chosen = ("The study does not say how they were chosen: the guarantee assumes they were not chosen "
                      "on the private training data.")
        return (f"The training set size N={self.training_set_size} is treated as public (q = B/N). "
                "The guarantee is for this one run with hyperparameters fixed in advance; it does not account "
                f"for choosing them. {chosen}")

    def _randomness(self) -> str:
        if self.secure_mode:
            return ("Secure mode: the Poisson sample and the noise come from the operating system's CSPRNG "
                    "(os.urandom), each noise entry the sum of 4 Gaussian draws divided by 2 against "
                    "floating-point attacks; not reproducible.")
        return (f"NOT secure: the Poisson sample and the noise come from generators seeded with the seed "
                f"recorded in this result ({self.seed}), so anyone who has it can regenerate the noise and the "
                "guarantee does not hold against them: for research reproduction, not for release.")

    def _audit(self) -> list[str]:
        if self.audit_canaries is None:
            return []
        return [f"Audited run: N counts {self.audit_included} canaries (of {self.audit_canaries} made, each included "
                "with probability 1/2) trained on as ordinary records; the guarantee covers them as it covers every "
                "record, and the audit's lower bound is measured on this run, not on an unaudited one."]

    def _coverage(self) -> str:
        unnoised = ", ".join(self.unnoised_releases) or "none"
        return ("Covers the trained weights and what is computed from them on other data. Released without "
                f"noise, reading the training data, and not covered: {unnoised} (a null loss marks an empty "
                "Poisson batch; the timings depend on the sampled batch sizes).")
