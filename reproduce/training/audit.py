"""An audited cell's canaries in its training run: the training set they join, the gradients they
contribute, and the audit of the final model (``reproduce.audit`` holds the maths; this module
only wires it into training).

Each canary is included independently with probability 1/2 (``inclusion_mask``, from the cell's
seed) and an included one is an ordinary training record: it is in the N of ``q = B/N`` and of the
accountant, the Poisson sampler (or the non-private shuffle) draws it like any other record, and
its gradient is clipped and noised like any other.

- ``input`` canaries (black box) are records appended to the real ones (``with_included_canaries``)
  and scored by their loss under the final model.
- ``gradient`` canaries (white box) are placeholder rows appended to the training set, carrying
  their canary's index in a third tensor (-1 for real rows). ``Trainer.batches`` takes them out of
  each micro-batch before the forward pass (``CanaryGradients.split``), and the trainer then adds
  their gradients ``gradient_norm * u_i`` (``CanaryGradients.rows``) as the micro-batch's last
  per-sample gradients, before clipping (private) or into the batch mean (non-private). Scored by
  the weights' move along u_i from the initial weights.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from reproduce.audit import (
    GradientCanaries,
    InputCanaries,
    inclusion_mask,
    input_canaries,
    loss_scores,
    max_epsilon_lower_bound,
    one_run_audit,
    parameter_vector,
    with_included_canaries,
)
from reproduce.audit.bounds import OneRunAudit
from reproduce.errors import ReproduceError
from reproduce.records.audit import AuditRecord
from reproduce.study import AuditConfig, Cell
from reproduce.training.task import multi_label, to_targets, to_tensor


class CanaryGradients:
    """The gradient canaries of a training run, micro-batch by micro-batch.

    Args:
        canaries: The canaries' directions (in the flat order of ``params``).
        params: The trainable parameters, in ``model.parameters()`` order.
        norm: Each canary gradient's norm (before clipping).
    """

    def __init__(self, canaries: GradientCanaries, params: list[torch.nn.Parameter], *, norm: float):
        self.canaries, self.params, self.norm = canaries, params, norm
        self._pending: list[int] = []

    def split(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The real rows of a micro-batch; remembers its canaries' indices for ``rows``."""
        real = ids < 0
        self._pending = ids[~real].tolist()
        return (x, y) if bool(real.all()) else (x[real], y[real])

    def rows(self) -> list[torch.Tensor] | None:
        """Per parameter [k, *shape]: the per-sample gradients of the last split's k canaries (None if
        it had none); consumed."""
        pending, self._pending = self._pending, []
        if not pending:
            return None
        flat = np.stack([self.canaries.gradient(i, norm=self.norm) for i in pending])
        p0 = self.params[0]
        flat = torch.from_numpy(flat).to(device=p0.device, dtype=p0.dtype)
        sizes = [p.numel() for p in self.params]
        return [block.reshape(len(pending), *p.shape) for block, p in zip(flat.split(sizes, dim=1), self.params)]


@dataclasses.dataclass(frozen=True)
class CellAudit:
    """An audited cell's canaries and how it is scored.

    Attributes:
        config: The study's ``audit`` section (for this cell: ``audit.kind`` may be a grid axis).
        included: [m] bool, which canaries are in the training set.
        input: The input canaries (kind "input"), else None.
        gradient: The gradient canaries (kind "gradient"), else None.
        delta: The delta of the claims the audit tests (the study's).
    """

    config: AuditConfig
    included: np.ndarray
    input: InputCanaries | None
    gradient: GradientCanaries | None
    delta: float

    @classmethod
    def prepare(
        cls, cell: Cell, images: np.ndarray, labels: np.ndarray, *, task: str, num_classes: int, num_params: int
    ) -> CellAudit:
        """The canaries of ``cell`` (seeded by its seed) for the real training records ``images``,
        ``labels`` and a model of ``num_params`` trainable parameters."""
        config = cell.study.audit
        m = config.canaries
        try:
            included = inclusion_mask(m, seed=cell.seed)
            if config.kind == "input":
                if multi_label(task):
                    raise ValueError(
                        f"input canaries need a single-label task; {cell.dataset} is {task}: use audit.kind: gradient"
                    )
                made = input_canaries(config.input_canary, images, labels, m=m, num_classes=num_classes, seed=cell.seed)
                return cls(config, included, made, None, cell.study.privacy.delta)
            made = GradientCanaries(m=m, num_params=num_params, seed=cell.seed, kind=config.gradient_canary)
        except ValueError as e:
            raise ReproduceError(f"cell {cell.id}: cannot audit: {e} (the study's audit section)") from None
        return cls(config, included, None, made, cell.study.privacy.delta)

    def training_arrays(
        self, images: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(images, labels, canary ids or None): the audited run's training records.

        Input canaries: the real records then the included canaries. Gradient canaries: the real
        records then one placeholder per included canary (a zero image, label 0, never seen by the
        model), and [N] the canary index of each row (-1 for real rows).
        """
        if self.input is not None:
            images, labels, _ = with_included_canaries(images, labels, self.input, self.included)
            return images, labels, None
        k = int(self.included.sum())
        ids = np.concatenate([np.full(len(images), -1, dtype=np.int64), np.flatnonzero(self.included)])
        return (
            np.concatenate([images, np.zeros((k, *images.shape[1:]), dtype=images.dtype)]),
            np.concatenate([labels, np.zeros((k, *labels.shape[1:]), dtype=labels.dtype)]),
            ids,
        )

    def gradients(self, params: list[torch.nn.Parameter]) -> CanaryGradients | None:
        """The trainer's gradient-canary feed (None for input canaries)."""
        if self.gradient is None:
            return None
        return CanaryGradients(self.gradient, params, norm=self.config.gradient_norm)

    def scores(self, model: torch.nn.Module, *, theta_initial: np.ndarray, task: str, batch_size: int) -> np.ndarray:
        """[m] one score per canary (included or not) from the final ``model``, higher = more likely in."""
        if self.gradient is not None:
            return self.gradient.scores(theta_initial, parameter_vector(model))
        return loss_scores(_losses(model, self.input, task=task, batch_size=batch_size))

    def record(self, scores: np.ndarray) -> AuditRecord:
        """The audit of the run: the best bound over the study's guess candidates."""
        audit = one_run_audit(
            scores,
            self.included,
            guess_counts=self.config.guess_counts(),
            delta=self.delta,
            confidence=self.config.confidence,
        )
        kind = self.config.kind
        canary = self.config.input_canary if kind == "input" else self.config.gradient_canary
        return audit_record(audit, kind=kind, canary=canary)


def audit_record(audit: OneRunAudit, *, kind: str, canary: str) -> AuditRecord:
    """The record a cell writes of ``audit`` (``reproduce.audit.bounds.one_run_audit``'s result)."""
    return AuditRecord(
        kind=kind,
        canary=canary,
        canaries=audit.m,
        included=audit.included,
        guesses=audit.r,
        correct=audit.c,
        k_pos=audit.k_pos,
        k_neg=audit.k_neg,
        candidates=audit.candidates,
        confidence=audit.confidence,
        delta=audit.delta,
        epsilon_lower=audit.epsilon_lower_bound,
        epsilon_lower_max=max_epsilon_lower_bound(m=audit.m, delta=audit.delta, confidence=audit.confidence),
    )


@torch.no_grad()
def _losses(model: torch.nn.Module, canaries: InputCanaries, *, task: str, batch_size: int) -> np.ndarray:
    """Each input canary's training loss under ``model`` in eval mode, no augmentation (float64 [m])."""
    model.eval()
    device = next(model.parameters()).device
    x, y = to_tensor(canaries.images), to_targets(canaries.labels, task)
    out = [
        F.cross_entropy(model(x[i : i + batch_size].to(device)), y[i : i + batch_size].to(device), reduction="none")
        for i in range(0, len(x), batch_size)
    ]
    model.train()
    return torch.cat(out).cpu().numpy().astype(np.float64)
