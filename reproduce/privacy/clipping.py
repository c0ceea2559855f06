"""Per-sample clipping rules: how each sample's gradient is scaled before the noised sum.

Every rule scales sample i's gradient g_i (all parameters flattened together) by a factor f_i with
``||f_i g_i|| <= C``, C = ``max_grad_norm``: the sensitivity the Gaussian noise ``sigma * C`` is for.

- ``flat``: ``f_i = min(1, C / (||g_i|| + 1e-6))``, opacus's DPOptimizer's own expression, so the
  suite's optimizer with this rule reproduces opacus's bit for bit.
- ``automatic``: ``f_i = C / (||g_i|| + gamma)`` (Bu, Wang, Zha, Karypis, "Automatic clipping:
  differentially private deep learning made easier and stronger", NeurIPS 2023, AUTO-S with the
  clipping norm kept as a scale): every sample normalised, ``||f_i g_i|| = C ||g_i|| / (||g_i|| + gamma) < C``.
- ``adaptive``: the flat factor, with C following a target quantile of the per-sample norms
  (Andrew, Thakkar, McMahan, Ramaswamy, "Differentially private learning with adaptive clipping",
  NeurIPS 2021, Algorithm 1 with the geometric update). Once per logical batch::

      b~ = clamp( (sum_i (1[||g_i|| <= C] - 1/2) + N(0, sigma_b^2)) / B + 1/2, 0, 1 )
      C <- C * exp(-eta_C * (b~ - gamma))

  B is the expected batch size q N, never the realised one (which is not private under Poisson
  sampling); the count is summed over all micro-batches of the logical batch and noised once. The
  indicators are centred (``- 1/2``, as tensorflow_privacy's ``QuantileEstimatorQuery`` does) so
  that adding or removing one sample moves the noised sum by at most 1/2: that sensitivity is what
  the factor 2 in the paper's Theorem 1 rests on (``reproduce.privacy.adaptive_accounting``). With
  a known batch size the centring would change nothing; under Poisson sampling it is what keeps the
  realised batch size out of the release. The clamp and the update are post-processing.

How the optimizer drives a rule (``reproduce.privacy.clipped_optimizer.ClippingDPOptimizer``):
per micro-batch ``clip_factors(norms, C)`` then ``observe(norms, C)``; per logical batch, after the
noise, ``next_max_grad_norm(C, count_noise=..., expected_batch_size=B)``, which also clears what
``observe`` accumulated. ``count_noise_std`` is the std of the count's noise (0: no count is
released). ``state_dict``/``load_state_dict`` hold what a checkpoint must keep between logical
batches (nothing, at a logical batch's end, for any rule here).

Registry: ``CLIPPING_RULES`` maps a name to its class; ``make_clipping_rule(name, **params)``. The
rules' parameters are required keywords: their defaults belong to the study schema, which reads the names
and each rule's keywords from this registry (``reproduce.study.choices``). Importing this module does not
import torch (the rules only call tensor methods), so the schema can.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, ClassVar, TypeVar

from reproduce.errors import ReproduceError

if TYPE_CHECKING:  # annotations only: the study schema imports this registry without torch
    import torch

# opacus's DPOptimizer: C / (||g|| + 1e-6), so a zero gradient gets a finite factor.
FLAT_STABILITY = 1e-6

R = TypeVar("R", bound=type)

CLIPPING_RULES: dict[str, type[ClippingRule]] = {}


def register_clipping_rule(name: str) -> Callable[[R], R]:
    """Register a ``ClippingRule`` subclass under ``name`` in :data:`CLIPPING_RULES` (once per name)."""

    def decorator(cls: R) -> R:
        if name in CLIPPING_RULES and CLIPPING_RULES[name] is not cls:
            raise ValueError(f"clipping rule {name!r} is already registered ({CLIPPING_RULES[name].__qualname__})")
        cls.name = name
        CLIPPING_RULES[name] = cls
        return cls

    return decorator


def make_clipping_rule(name: str, **params: Any) -> ClippingRule:
    """The registered rule ``name`` built with ``params`` (keyword arguments of its class).

    Raises:
        ReproduceError: for an unknown name or parameters the rule does not take.
    """
    if name not in CLIPPING_RULES:
        raise ReproduceError(f"unknown clipping rule {name!r}; known: {', '.join(sorted(CLIPPING_RULES))}")
    try:
        return CLIPPING_RULES[name](**params)
    except TypeError as e:
        raise ReproduceError(f"clipping rule {name!r}: {e}") from None


def flat_clip_factors(norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """``min(1, C / (||g_i|| + 1e-6))`` per sample, opacus's expression and dtype handling.

    Args:
        norms: Per-sample gradient norms, shape [n].
        max_grad_norm: The clipping norm C.

    Returns:
        Factors of shape [n].
    """
    return (max_grad_norm / (norms + FLAT_STABILITY)).clamp(max=1.0)


def automatic_clip_factors(norms: torch.Tensor, max_grad_norm: float, *, gamma: float) -> torch.Tensor:
    """``C / (||g_i|| + gamma)`` per sample (Bu et al. 2023, AUTO-S); every scaled norm is < C.

    Args:
        norms: Per-sample gradient norms, shape [n].
        max_grad_norm: The clipping norm C (the sensitivity).
        gamma: The stability constant, > 0 (the paper: 0.01).

    Returns:
        Factors of shape [n].
    """
    return max_grad_norm / (norms + gamma)


def noised_unclipped_fraction(
    *, unclipped: float, batch_size: int, count_noise: float, expected_batch_size: float
) -> float:
    """Andrew et al.'s b~: the noised share of unclipped samples, centred count over the expected batch size.

    ``clamp(((unclipped - batch_size / 2) + count_noise) / B + 1/2, 0, 1)``.

    Args:
        unclipped: How many samples of the logical batch had ``||g_i|| <= C``.
        batch_size: How many samples the logical batch had (enters only through the centring).
        count_noise: The Gaussian noise drawn for the centred count, N(0, sigma_b^2).
        expected_batch_size: B = q N.

    Returns:
        b~ in [0, 1].
    """
    centred = (unclipped - batch_size / 2) + count_noise
    return min(1.0, max(0.0, centred / expected_batch_size + 0.5))


def geometric_clip_update(
    max_grad_norm: float, *, unclipped_fraction: float, target_quantile: float, learning_rate: float
) -> float:
    """``C * exp(-eta_C * (b~ - gamma))``: grows C while fewer than the target share are unclipped.

    Args:
        max_grad_norm: The current clipping norm C.
        unclipped_fraction: b~ (``noised_unclipped_fraction``).
        target_quantile: gamma, the share of samples meant to stay unclipped.
        learning_rate: eta_C (the paper: 0.2).

    Returns:
        The next clipping norm.
    """
    return max_grad_norm * math.exp(-learning_rate * (unclipped_fraction - target_quantile))


class ClippingRule:
    """A per-sample clipping rule (see the module docstring); stateless unless it adapts C."""

    name: ClassVar[str]
    count_noise_std: float = 0.0

    def clip_factors(self, norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
        """The factors f_i for per-sample norms ``norms`` [n] at clipping norm ``max_grad_norm``."""
        raise NotImplementedError

    def observe(self, norms: torch.Tensor, max_grad_norm: float) -> None:
        """Take note of a micro-batch's per-sample norms (only adaptive rules need them)."""

    def next_max_grad_norm(self, max_grad_norm: float, *, count_noise: float, expected_batch_size: float) -> float:
        """The clipping norm of the next logical batch; clears what ``observe`` accumulated."""
        return max_grad_norm

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the rule."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict``'s output."""


@register_clipping_rule("flat")
class FlatClipping(ClippingRule):
    """``min(1, C / (||g|| + 1e-6))``: opacus's DPOptimizer's rule."""

    def clip_factors(self, norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
        return flat_clip_factors(norms, max_grad_norm)


@register_clipping_rule("automatic")
class AutomaticClipping(ClippingRule):
    """``C / (||g|| + gamma)`` for every sample (Bu et al. 2023).

    Args:
        gamma: Stability constant, > 0 (the paper: 0.01).
    """

    def __init__(self, *, gamma: float):
        if not gamma > 0:
            raise ReproduceError(f"automatic clipping needs gamma > 0 (it bounds every norm below C), got {gamma}")
        self.gamma = float(gamma)

    def clip_factors(self, norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
        return automatic_clip_factors(norms, max_grad_norm, gamma=self.gamma)


@register_clipping_rule("adaptive")
class AdaptiveQuantileClipping(ClippingRule):
    """Flat clipping with C following the ``target_quantile`` of per-sample norms (Andrew et al. 2021).

    Args:
        target_quantile: gamma, the share of samples to leave unclipped (the paper: 0.5).
        learning_rate: eta_C of the geometric update (the paper: 0.2).
        count_noise_std: sigma_b, std of the noise on the centred unclipped count, > 0 (the paper
            suggests B / 20). It sets the gradient noise through Theorem 1
            (``reproduce.privacy.adaptive_accounting.gradient_noise_multiplier``).
    """

    def __init__(self, *, target_quantile: float, learning_rate: float, count_noise_std: float):
        if not 0 <= target_quantile <= 1:
            raise ReproduceError(f"adaptive clipping: target_quantile must lie in [0, 1], got {target_quantile}")
        if not count_noise_std > 0:
            raise ReproduceError(
                "adaptive clipping: count_noise_std must be > 0; a count released without "
                f"noise has no privacy guarantee (got {count_noise_std})"
            )
        self.target_quantile = float(target_quantile)
        self.learning_rate = float(learning_rate)
        self.count_noise_std = float(count_noise_std)
        self.unclipped = 0
        self.batch_size = 0

    def clip_factors(self, norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
        return flat_clip_factors(norms, max_grad_norm)

    def observe(self, norms: torch.Tensor, max_grad_norm: float) -> None:
        # Kept across micro-batches until the logical batch ends (opacus's AdaClip resets it per micro-batch).
        self.unclipped += int((norms <= max_grad_norm).sum())
        self.batch_size += int(norms.numel())

    def next_max_grad_norm(self, max_grad_norm: float, *, count_noise: float, expected_batch_size: float) -> float:
        fraction = noised_unclipped_fraction(
            unclipped=self.unclipped,
            batch_size=self.batch_size,
            count_noise=count_noise,
            expected_batch_size=expected_batch_size,
        )
        self.unclipped = self.batch_size = 0
        return geometric_clip_update(
            max_grad_norm,
            unclipped_fraction=fraction,
            target_quantile=self.target_quantile,
            learning_rate=self.learning_rate,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"unclipped": self.unclipped, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unclipped, self.batch_size = int(state["unclipped"]), int(state["batch_size"])
