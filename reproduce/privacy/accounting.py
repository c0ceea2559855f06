"""Noise calibration and epsilon accounting, through opacus's accountants.

The sample rate and step count given here must be the ones that actually run: the authors' code
calibrated for q = B/N but sampled at q = 1/len(loader) (see shared facts); we build the Poisson
loader from the same q (``reproduce.privacy.dp_sgd``) so the two cannot drift apart.
"""

from __future__ import annotations

import functools

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from reproduce.errors import ReproduceError
from reproduce.privacy.accountants import ACCOUNTANTS  # noqa: F401  (re-exported: the accountants a study may name)

# Absolute tolerance of opacus's bisection; 0.01 keeps epsilon within 1% of any target >= 1.
EPSILON_TOLERANCE = 0.01


def poisson_steps_per_epoch(sample_rate: float) -> int:
    """Steps opacus's UniformWithReplacementSampler runs per epoch: int(1 / q)."""
    return int(1 / sample_rate)


# Pure in its arguments and seconds per call (a bisection over the accountant); `reproduce verify`
# and the tests build many DP steps with the same (epsilon, delta, q, steps).
@functools.lru_cache(maxsize=256)
def calibrate_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """Smallest noise multiplier whose epsilon after ``steps`` Poisson steps at ``sample_rate`` is <= target."""
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=EPSILON_TOLERANCE,
            )
        )
    except ValueError as e:
        raise ReproduceError(
            f"cannot calibrate noise for epsilon={target_epsilon}, delta={delta}, q={sample_rate:.5g}, "
            f"steps={steps} with the {accountant} accountant: {e}"
        ) from None


def epsilon_for(*, noise_multiplier: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """Epsilon of a run, computed independently of any optimizer (the accountant's forward map)."""
    acc = create_accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return float(acc.get_epsilon(delta))
