"""The training interface the one loop drives, and what its two implementations share.

A ``Trainer`` hands the loop one epoch of micro-batches, computes the gradients of one micro-batch
over its K augmented views, takes (or defers) the optimizer step, and saves and restores everything
it owns for checkpoints. ``PrivateTrainer`` (``reproduce.training.private``) and ``PlainTrainer``
(``reproduce.training.plain``) are drop-ins for each other: the loop never asks which it has.
"""

from __future__ import annotations

import abc
import math
from typing import Any, Iterator

import torch
from torch import nn

from reproduce.data.augment import augmentation_kind, training_views
from reproduce.privacy import optimizers
from reproduce.records.privacy import PrivacyStatement
from reproduce.records.result import CellResult
from reproduce.training.task import loss_fn


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    """The optimizer of a study's ``OptimizerConfig``, from the registry (``reproduce.privacy.optimizers``)."""
    return optimizers.make_optimizer(cfg.name, params, **cfg.hyperparameters())


class Trainer(abc.ABC):
    """One cell's training method.

    Attributes:
        model: What to call forward on (the cell's model, or a wrapper of it sharing its parameters).
        params: The trainable parameters of the cell's model.
        optimizer: The optimizer whose ``step`` the trainer takes.
        steps: Optimizer steps the run takes in all.
        steps_per_epoch: Optimizer steps in one epoch.
        epochs: Epochs the loop runs (the last one may stop after ``steps``).
    """

    def __init__(
        self,
        cell,
        *,
        model: nn.Module,
        params: list[nn.Parameter],
        optimizer: torch.optim.Optimizer,
        task: str,
        steps: int,
        steps_per_epoch: int,
        canaries=None,
    ):
        self.model, self.params, self.optimizer, self.task = model, params, optimizer, task
        # An audited cell's gradient canaries (reproduce.training.audit.CanaryGradients), else None.
        self.canaries = canaries
        self.steps, self.steps_per_epoch = steps, steps_per_epoch
        self.epochs = cell.study.training.epochs or math.ceil(steps / steps_per_epoch)
        self.multiplicity = cell.multiplicity
        self.augmentation = augmentation_kind(cell.dataset)
        # Its own stream: the views do not move when the data order or the noise changes. On the CPU
        # on every device: the views must not depend on micro-batching (reproduce.data.augment._draws).
        self.views_generator = torch.Generator().manual_seed(cell.seed * 1_000_003 + 3)
        # Where the model is, everything of the step is (reproduce.device).
        self.device = params[0].device if params else torch.device("cpu")

    @abc.abstractmethod
    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of (images, targets) micro-batches, on ``device``."""

    def _on_device(self, loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A training set resident on the device gives device batches already (no copy); one left on
        # the host (too big, reproduce.device.resident) is copied per micro-batch; an empty Poisson
        # batch (opacus makes it on the CPU) costs nothing to move.
        # Gradient canaries' placeholder rows (a third tensor names them) leave the micro-batch here:
        # the model never sees them, the trainer adds their gradients (forward_backward).
        for x, y, *ids in loader:
            if self.canaries is not None:
                x, y = self.canaries.split(x, y, ids[0])
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of micro-batch (x, y) over its K views; returns (mean loss, the views' targets).

        Clears the previous micro-batch's gradients first (a private trainer keeps its clipped sum
        until the logical batch ends). An audited cell's gradient canaries drawn into this
        micro-batch are added last, as its last samples (``_add_canaries``).
        """
        self.optimizer.zero_grad(set_to_none=True)
        loss, targets = self._gradients(x, y)
        rows = None if self.canaries is None else self.canaries.rows()
        if rows is not None:
            self._add_canaries(rows, real=len(x))
        return loss, targets

    def _gradients(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        views, targets = training_views(x, y, self.multiplicity, kind=self.augmentation, generator=self.views_generator)
        loss = loss_fn(self._forward(views), targets, self.task)
        self._backward(loss)
        return loss, targets

    def _forward(self, views: torch.Tensor) -> torch.Tensor:
        """The model's output on the micro-batch's views (the private trainer pads them, ``_backward`` knows)."""
        return self.model(views)

    def _add_canaries(self, rows: list[torch.Tensor], *, real: int) -> None:
        """Add k canaries' per-sample gradients (per parameter [k, *shape]) to the micro-batch's
        gradients of ``real`` real samples."""
        raise NotImplementedError(f"{type(self).__name__} cannot train with gradient canaries")

    @abc.abstractmethod
    def _backward(self, loss: torch.Tensor) -> None:
        """Turn the mean loss of the K views into the gradients the optimizer's step uses."""

    @abc.abstractmethod
    def step(self) -> bool:
        """Apply the micro-batch's gradients; True when that was an optimizer step."""

    def clipped_update(self) -> list[torch.Tensor] | None:
        """The clipped mean gradient before noise of the last step; None without clipping."""
        return None

    @abc.abstractmethod
    def record_next_step(self, record: bool) -> None:
        """Whether the next optimizer step records its diagnostics (called before its first micro-batch)."""

    @abc.abstractmethod
    def step_diagnostics(self) -> dict[str, float | None] | None:
        """The last step's diagnostics row (``reproduce.metrics.clipping``); None if it recorded none."""

    @abc.abstractmethod
    def state(self) -> dict[str, Any]:
        """Everything the trainer evolves, for a checkpoint (a resumed run continues bit-identically)."""

    @abc.abstractmethod
    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what ``state`` returned."""

    def epsilon_spent(self) -> float | None:
        """The privacy spent so far; None for non-private training."""
        return None

    @abc.abstractmethod
    def privacy_statement(self, draft: CellResult) -> PrivacyStatement:
        """The statement of the finished run; ``draft`` is its result, with a placeholder statement.

        A private trainer states the mechanism it ran (``reproduce.records.privacy.Mechanism``) and
        takes from ``draft`` only what the run released: its fields without noise, its audit.
        """
