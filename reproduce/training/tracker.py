"""Per-step and per-epoch training diagnostics: gradient sparsity, gradient-weight alignment, and
what clipping, noise and the optimizer did to the step (``reproduce.metrics.clipping``)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from reproduce.metrics.alignment import alignment_summary, final_layer_cosines
from reproduce.metrics.sparsity import l0_eps
from reproduce.records.result import Alignment, StepRecord
from reproduce.training.task import multi_label


def finite(loss: torch.Tensor) -> float | None:
    """The loss as a float, None for the NaN mean loss of an empty Poisson batch (JSON has no NaN)."""
    value = float(loss.item())
    return value if math.isfinite(value) else None


class StepTracker:
    """Per-step series for Figure 1 (right) and gradient-weight alignment.

    Every ``every`` optimizer steps: l0_update, the share of entries with |g| < 1e-5 of the gradient
    the optimizer applied (private: clipped + noised; non-private: plain), and l0_clipped (DP only),
    the clipped sum before noise. Gradient-weight alignment (``reproduce.metrics.alignment``): the
    cosine between each sample's final-layer update direction and the weights, taken in every
    training forward pass (every micro-batch, at the weights the gradient is taken at), summarised
    per logged step (``gwa``, ``gwa_mean``) and per epoch (``end_epoch``, as the authors do).
    On the same steps, the trainer's step diagnostics (``Trainer.step_diagnostics``), which it records
    for the steps ``due`` says are logged.
    """

    def __init__(self, model: torch.nn.Module, *, task: str, every: int):
        self.every, self.task = every, task
        self.rows: list[StepRecord] = []
        self.fc = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._io = None
        self._step_cosines: list = []
        self._epoch_cosines: list = []
        self.fc.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if module.training:
            self._io = (inputs[0].detach(), output.detach())

    def record_batch(self, targets: torch.Tensor) -> None:
        """Alignment cosines of the (micro-)batch whose forward pass just ran, with its targets."""
        if self._io is None or multi_label(self.task) or len(targets) == 0:
            self._io = None
            return
        # Its first len(targets) rows: the private trainer pads a micro-batch with zero samples after
        # the real ones (reproduce.privacy.fast_engine.ROW_MULTIPLE).
        h, z = (t[: len(targets)] for t in self._io)
        self._io = None
        cosines = final_layer_cosines(h, z, targets.reshape(-1), self.fc.weight)
        self._step_cosines.append(cosines)
        self._epoch_cosines.append(cosines)

    def due(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based) is logged: the first and every ``every``-th."""
        return step == 1 or step % self.every == 0

    def after_step(
        self,
        step: int,
        epoch: int,
        loss: torch.Tensor,
        clipped: Callable[[], list[torch.Tensor] | None],
        diagnostics: Callable[[], dict[str, float | None] | None] = lambda: None,
    ) -> None:
        """Close optimizer step ``step``; log it if due. ``clipped`` gives the step's clipped mean
        gradient before noise (``Trainer.clipped_update``: None without clipping), ``diagnostics``
        the step's diagnostics row (``Trainer.step_diagnostics``); both read only if logged."""
        cosines, self._step_cosines = self._step_cosines, []
        if not self.due(step):
            return
        clipped_mean = clipped()
        self.rows.append(
            StepRecord(
                step=step,
                epoch=epoch,
                loss=finite(loss),
                l0_update=l0_eps([p.grad for p in self.params if p.grad is not None]),
                l0_clipped=None if clipped_mean is None else l0_eps(clipped_mean),
                alignment=_alignment(cosines, per_epoch=False),
                diagnostics=diagnostics(),
            )
        )

    def end_epoch(self) -> Alignment | None:
        """Gradient-weight alignment over every training sample (view) of the epoch; None if not tracked."""
        cosines, self._epoch_cosines = self._epoch_cosines, []
        return _alignment(cosines, per_epoch=True)


def _alignment(cosines: list[np.ndarray], *, per_epoch: bool) -> Alignment | None:
    if not cosines:
        return None
    summary = alignment_summary(np.concatenate(cosines))
    return Alignment(
        gwa=summary.kurtosis_corrected_mean,
        gwa_mean=summary.mean,
        gwa_excess_kurtosis=summary.excess_kurtosis if per_epoch else None,
    )
