"""Noise calibration and epsilon accounting, through opacus's accountants.

The sample rate and step count given here must be the ones that actually run: the authors' code
calibrated for q = B/N but sampled at q = 1/len(loader) (see shared facts); we build the Poisson
loader from the same q (``reproduce.privacy.dp_sgd``) so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from reproduce.errors import ReproduceError

# Absolute tolerance of opacus's bisection; 0.01 keeps epsilon within 1% of any target >= 1.
EPSILON_TOLERANCE = 0.01


def poisson_steps_per_epoch(sample_rate: float) -> int:
    """Steps opacus's UniformWithReplacementSampler runs per epoch: int(1 / q)."""
    return int(1 / sample_rate)


# Pure in its arguments and seconds per call (a bisection over the accountant); `reproduce verify`
# and the tests build many DP steps with the same (epsilon, delta, q, steps).
@functools.lru_cache(maxsize=256)
def calibrate_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int,
                    accountant: str) -> float:
    """Smallest noise multiplier whose epsilon after ``steps`` Poisson steps at ``sample_rate`` is <= target."""
    try:
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps, accountant=accountant,
                                          epsilon_tolerance=EPSILON_TOLERANCE))
    except ValueError as e:
        raise ReproduceError(
            f"cannot calibrate noise for epsilon={target_epsilon}, delta={delta}, q={sample_rate:.5g}, "
            f"steps={steps} with the {accountant} accountant: {e}") from None


def epsilon_for(*, noise_multiplier: float, delta: float, sample_rate: float, steps: int,
                accountant: str) -> float:
    """Epsilon of a run, computed independently of any optimizer (the accountant's forward map)."""
    acc = create_accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return float(acc.get_epsilon(delta))


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

    def sentence(self) -> str:
        """The statement in words: guarantee, its assumptions, its randomness, what it does not cover."""
        if not self.private:
            return "Trained WITHOUT differential privacy (non-private baseline): no privacy guarantee."
        return " ".join([self._guarantee(), self._assumptions(), self._randomness(), self._coverage()])

    def _guarantee(self) -> str:
        return (f"({self.epsilon_spent:.3f}, {self.delta:g})-DP at {self.unit} by DP-SGD: "
                f"{self.sampling} sampling q={self.sample_rate:.6g}, {self.steps} steps, per-sample clipping "
                f"to {self.max_grad_norm:g}, Gaussian noise multiplier {self.noise_multiplier:.4f} "
                f"(std {self.noise_multiplier * self.max_grad_norm:.4g}); {self.accountant.upper()} accountant "
                f"(target epsilon {self.target_epsilon:g}).")

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

    def _coverage(self) -> str:
        unnoised = ", ".join(self.unnoised_releases) or "none"
        return ("Covers the trained weights and what is computed from them on other data. Released without "
                f"noise, reading the training data, and not covered: {unnoised} (a null loss marks an empty "
                "Poisson batch; the timings depend on the sampled batch sizes).")
