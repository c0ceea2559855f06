"""What clipping and noise did to one logical DP step: pure functions of the step's sums and norms.

Inputs, all for one logical batch (every micro-batch of it), parameters flattened and concatenated
in one fixed order (``StepRecord``):

- ``norms`` [n]: per-sample gradient norms ||g_i|| (before clipping);
- ``unclipped_sum`` [d]: sum_i g_i;  ``clipped_sum`` [d]: sum_i f_i g_i (what is noised);
- ``noise`` [d]: the Gaussian noise added to ``clipped_sum``;
- ``descent`` [d]: theta_t - theta_{t+1}, the update the optimizer applied, sign flipped so that
  it points along the gradient it descends;
- ``max_grad_norm``: the C the step clipped to.

Diagnostics (``clipping_diagnostics``; None where a norm in a denominator is 0, e.g. an empty batch):

- ``share_clipped`` = mean_i 1[||g_i|| > C] (for automatic clipping, which scales every sample,
  the share whose norm exceeds C); the complement of adaptive clipping's unclipped count;
- ``grad_norm_q10/q50/q90``: quantiles of ||g_i||, linear interpolation between order statistics
  (``torch.quantile``, numpy's default);
- ``clip_bias_cosine`` = cos(clipped_sum, unclipped_sum), ``clip_bias_norm_ratio`` =
  ||clipped_sum|| / ||unclipped_sum||: the bias of clipping, mean clipped against mean unclipped
  gradient (both means over the same denominator, which cancels);
- ``noise_to_signal`` = ||noise|| / ||clipped_sum||, the same as for the averages over B;
- ``update_cosine`` = cos(descent, unclipped_sum): how well the applied private update follows the
  mean unclipped gradient;
- ``max_grad_norm``: C (changes only under adaptive clipping).

Without clipping (non-private training) only ``update_cosine`` is defined, with the batch's mean
gradient for the mean unclipped one (``update_cosine``): it shows what momentum and Adam's
preconditioning do to the step, the reference for the private cells' cosine.

Every diagnostic but ``max_grad_norm`` reads the training data without noise, as l0 sparsity of the
clipped sum and gradient-weight alignment do: the privacy statement must list them
(``reproduce.privacy.released.UNNOISED``). ``max_grad_norm`` is a function of noised counts.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from reproduce.records.result import DIAGNOSTIC_KEYS, NORM_QUANTILES, quantile_key  # noqa: F401  (the row's keys)


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().reshape(-1).to(dtype=torch.float64, device="cpu")


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Tensors (one per parameter) flattened and concatenated in order, float64 on the CPU."""
    return torch.cat([_f64(t) for t in tensors]) if tensors else torch.zeros(0, dtype=torch.float64)


def share_clipped(norms: torch.Tensor, max_grad_norm: float) -> float | None:
    """``mean_i 1[||g_i|| > C]``; None for an empty batch.

    Args:
        norms: Per-sample gradient norms [n].
        max_grad_norm: C.
    """
    n = _f64(norms)
    return float((n > max_grad_norm).double().mean()) if n.numel() else None


def norm_quantiles(norms: torch.Tensor, levels: Sequence[float] = NORM_QUANTILES) -> tuple[float | None, ...]:
    """Quantiles of the per-sample norms at ``levels`` (linear interpolation); Nones for an empty batch."""
    n = _f64(norms)
    if not n.numel():
        return tuple(None for _ in levels)
    return tuple(float(v) for v in torch.quantile(n, torch.tensor(list(levels), dtype=torch.float64)))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """``<a, b> / (||a|| ||b||)``, None when either is zero."""
    a, b = _f64(a), _f64(b)
    na, nb = float(a.norm()), float(b.norm())
    if na == 0 or nb == 0:
        return None
    return max(-1.0, min(1.0, float(a @ b) / (na * nb)))


def norm_ratio(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """``||a|| / ||b||``, None when b is zero."""
    nb = float(_f64(b).norm())
    return float(_f64(a).norm()) / nb if nb else None


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One logical step's flattened sums, noise, update and norms (see the module docstring)."""

    norms: torch.Tensor
    unclipped_sum: torch.Tensor
    clipped_sum: torch.Tensor
    noise: torch.Tensor
    descent: torch.Tensor
    max_grad_norm: float


@dataclasses.dataclass(frozen=True)
class ClippingDiagnostics:
    """The diagnostics of one logical step (formulas in the module docstring)."""

    share_clipped: float | None
    grad_norm_quantiles: tuple[float | None, ...]
    clip_bias_cosine: float | None
    clip_bias_norm_ratio: float | None
    noise_to_signal: float | None
    update_cosine: float | None
    max_grad_norm: float
    levels: tuple[float, ...] = NORM_QUANTILES

    def as_row(self) -> dict[str, float | None]:
        """Flat, JSON-ready keys for a step row: ``grad_norm_q10`` etc. for the quantiles."""
        row = {"share_clipped": self.share_clipped}
        row.update({quantile_key(q): v for q, v in zip(self.levels, self.grad_norm_quantiles)})
        row.update(
            clip_bias_cosine=self.clip_bias_cosine,
            clip_bias_norm_ratio=self.clip_bias_norm_ratio,
            noise_to_signal=self.noise_to_signal,
            update_cosine=self.update_cosine,
            max_grad_norm=self.max_grad_norm,
        )
        return row


def clipping_diagnostics(record: StepRecord, levels: Sequence[float] = NORM_QUANTILES) -> ClippingDiagnostics:
    """Every diagnostic of one logical step from its ``StepRecord``.

    Args:
        record: The step's norms, sums, noise and update.
        levels: Quantile levels of the per-sample norms.

    Returns:
        The step's ``ClippingDiagnostics``.
    """
    return ClippingDiagnostics(
        share_clipped=share_clipped(record.norms, record.max_grad_norm),
        grad_norm_quantiles=norm_quantiles(record.norms, levels),
        clip_bias_cosine=cosine(record.clipped_sum, record.unclipped_sum),
        clip_bias_norm_ratio=norm_ratio(record.clipped_sum, record.unclipped_sum),
        noise_to_signal=norm_ratio(record.noise, record.clipped_sum),
        update_cosine=cosine(record.descent, record.unclipped_sum),
        max_grad_norm=float(record.max_grad_norm),
        levels=tuple(levels),
    )


def update_cosine(
    *, before: Sequence[torch.Tensor], after: Sequence[torch.Tensor], gradient: Sequence[torch.Tensor]
) -> float | None:
    """cos(theta_t - theta_{t+1}, gradient) for parameters ``before`` and ``after`` a step on ``gradient``.

    Args:
        before: The parameters before the step, one tensor per parameter.
        after: The same parameters after it.
        gradient: The gradient the step was taken on (the batch's mean gradient).

    Returns:
        The cosine; None when the step or the gradient is zero.
    """
    return cosine(flatten([b - a for b, a in zip(before, after)]), flatten(gradient))
