"""Privacy of adaptive quantile clipping: Andrew et al. 2021, Theorem 1, under Poisson sampling.

Each logical step releases two noised sums over the same Poisson sample: the clipped gradients
(sensitivity C, noise ``sigma_grad * C``) and the centred unclipped count ``sum_i (b_i - 1/2)``
(sensitivity 1/2, noise ``sigma_b``; ``reproduce.privacy.clipping``). Scale the count by
``sigma_grad * C / sigma_b``: both noises become ``N(0, (sigma_grad C)^2)`` and one sample's
contribution, the vector (clipped g_i, (b_i - 1/2) sigma_grad C / sigma_b), has norm at most
``C sqrt(1 + (sigma_grad / (2 sigma_b))^2)``. The pair is therefore one Gaussian mechanism on the
subsample with noise multiplier (Andrew, Thakkar, McMahan, Ramaswamy, NeurIPS 2021, Theorem 1)::

    sigma_eff = (sigma_grad^-2 + (2 sigma_b)^-2)^(-1/2)

and the run is accounted as ``steps`` Poisson-subsampled Gaussian steps at ``sigma_eff`` and q (the
accountant sees ``noise_multiplier = sigma_eff``). To reach a target epsilon, calibrate sigma_eff as
for flat clipping and raise the gradient noise to ``sigma_grad = (sigma_eff^-2 - (2 sigma_b)^-2)^(-1/2)``,
which exists only for ``2 sigma_b > sigma_eff``. Micro-batching changes nothing: each sum is
accumulated over the whole logical batch and noised once. C changing between steps is adaptive
composition, which the accountant's per-step analysis already covers.

The factor 2 is the count's sensitivity 1/2, i.e. the centring; an uncentred count (sensitivity 1)
would give ``(sigma_grad^-2 + sigma_b^-2)^(-1/2)``.
"""

from __future__ import annotations

import dataclasses

from reproduce.errors import ReproduceError
from reproduce.privacy.accounting import calibrate_noise, epsilon_for

# add/remove of one sample moves the centred count sum_i (1[||g_i|| <= C] - 1/2) by at most 1/2.
COUNT_SENSITIVITY = 0.5


def effective_noise_multiplier(*, gradient_noise_multiplier: float, count_noise_std: float) -> float:
    """sigma_eff = (sigma_grad^-2 + (2 sigma_b)^-2)^(-1/2), Andrew et al. 2021, Theorem 1.

    Args:
        gradient_noise_multiplier: sigma_grad, the gradient noise std over C.
        count_noise_std: sigma_b, the std of the count's noise (> 0).

    Returns:
        The noise multiplier of the equivalent single Gaussian mechanism.
    """
    if not (gradient_noise_multiplier > 0 and count_noise_std > 0):
        raise ReproduceError(
            "adaptive clipping needs noise on both sums, got "
            f"sigma_grad={gradient_noise_multiplier}, sigma_b={count_noise_std}"
        )
    count_multiplier = count_noise_std / COUNT_SENSITIVITY
    return (gradient_noise_multiplier**-2 + count_multiplier**-2) ** -0.5


def gradient_noise_multiplier(*, effective_noise_multiplier: float, count_noise_std: float) -> float:
    """sigma_grad = (sigma_eff^-2 - (2 sigma_b)^-2)^(-1/2): the gradient noise that keeps the pair at sigma_eff.

    Args:
        effective_noise_multiplier: sigma_eff, calibrated for the target epsilon.
        count_noise_std: sigma_b (> sigma_eff / 2).

    Returns:
        sigma_grad >= sigma_eff.

    Raises:
        ReproduceError: when 2 sigma_b <= sigma_eff (the count alone would spend the budget).
    """
    count_multiplier = count_noise_std / COUNT_SENSITIVITY
    if not count_multiplier > effective_noise_multiplier > 0:
        raise ReproduceError(
            f"adaptive clipping: count_noise_std={count_noise_std} is too small for noise multiplier "
            f"{effective_noise_multiplier:.4g}: need 2 * count_noise_std > noise multiplier (Andrew et al., Theorem 1); "
            "raise count_noise_std (the paper suggests expected batch size / 20)"
        )
    return (effective_noise_multiplier**-2 - count_multiplier**-2) ** -0.5


@dataclasses.dataclass(frozen=True)
class AdaptiveNoise:
    """The two noise levels of adaptive clipping: accounted (``effective``) and applied to the gradient."""

    effective: float  # sigma_eff: what the accountant and the privacy statement see
    gradient: float  # sigma_grad: the gradient noise is gradient * C
    count_std: float  # sigma_b: the count noise std


def calibrate_adaptive_noise(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str, count_noise_std: float
) -> AdaptiveNoise:
    """Noise levels for ``steps`` Poisson steps at ``sample_rate`` with epsilon <= ``target_epsilon``.

    Args:
        target_epsilon: The budget.
        delta: The delta of the guarantee.
        sample_rate: q = B / N.
        steps: Logical steps that will run.
        accountant: An opacus accountant name ("rdp", "prv").
        count_noise_std: sigma_b.

    Returns:
        sigma_eff (``calibrate_noise`` for the target) and the sigma_grad that realises it.
    """
    sigma_eff = calibrate_noise(
        target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=steps, accountant=accountant
    )
    return AdaptiveNoise(
        effective=sigma_eff,
        count_std=count_noise_std,
        gradient=gradient_noise_multiplier(effective_noise_multiplier=sigma_eff, count_noise_std=count_noise_std),
    )


def adaptive_epsilon(
    *,
    gradient_noise_multiplier: float,
    count_noise_std: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
) -> float:
    """Epsilon of ``steps`` adaptive-clipping steps: the accountant at sigma_eff (Theorem 1).

    Args:
        gradient_noise_multiplier: sigma_grad.
        count_noise_std: sigma_b.
        delta: The delta of the guarantee.
        sample_rate: q.
        steps: Logical steps run.
        accountant: An opacus accountant name.

    Returns:
        Epsilon.
    """
    sigma_eff = effective_noise_multiplier(
        gradient_noise_multiplier=gradient_noise_multiplier, count_noise_std=count_noise_std
    )
    return epsilon_for(
        noise_multiplier=sigma_eff, delta=delta, sample_rate=sample_rate, steps=steps, accountant=accountant
    )
