"""Non-private training of one cell: shuffled batches, the mean gradient over the K views, one
optimizer step per batch; the baseline the DP cells are compared with."""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader

from reproduce.metrics.clipping import update_cosine
from reproduce.records.privacy import PrivacyStatement
from reproduce.records.result import CellResult
from reproduce.training.trainer import Trainer, make_optimizer


class PlainTrainer(Trainer):
    """SGD/Adam on the batch gradient; every micro-batch is a whole batch and every step is taken."""

    def __init__(self, cell, model: torch.nn.Module, loader: DataLoader, *, optimizer, task: str, canaries=None):
        tr = cell.study.training
        super().__init__(
            cell,
            model=model,
            params=[p for p in model.parameters() if p.requires_grad],
            optimizer=optimizer,
            task=task,
            steps=tr.steps or tr.epochs * len(loader),
            steps_per_epoch=len(loader),
            canaries=canaries,
        )
        self.loader = loader
        self._record, self._diagnostics = False, None

    @classmethod
    def for_cell(cls, cell, model: torch.nn.Module, train_set, *, task: str, canaries=None) -> PlainTrainer:
        """The cell's non-private training of ``model`` on ``train_set``, as its study configures it
        (``canaries``: an audited cell's gradient canaries, ``reproduce.training.audit.CanaryGradients``)."""
        tr = cell.study.training
        optimizer = make_optimizer(model.parameters(), tr.optimizer)
        # Its own stream for the data order (the private trainer's Poisson sampler uses the same seed).
        generator = torch.Generator().manual_seed(cell.seed * 1_000_003 + 1)
        loader = DataLoader(train_set, batch_size=tr.batch_size, shuffle=True, generator=generator)
        return cls(cell, model, loader, optimizer=optimizer, task=task, canaries=canaries)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from self._on_device(self.loader)

    def _gradients(self, x, y):
        if len(x) == 0:  # a batch of canaries only (an audited cell): nothing to run the model on
            for p in self.params:
                p.grad = torch.zeros_like(p)
            return torch.tensor(float("nan"), device=self.device), y
        return super()._gradients(x, y)

    def _backward(self, loss):
        loss.backward()

    def _add_canaries(self, rows, *, real):
        # The batch mean over real samples and canaries alike (the canaries' gradients unclipped).
        for p, block in zip(self.params, rows):
            grad = torch.zeros_like(p) if p.grad is None else p.grad
            p.grad = (grad * real + block.sum(0)) / (real + len(block))

    def step(self) -> bool:
        before = [p.detach().clone() for p in self.params] if self._record else None
        self.optimizer.step()
        # Nothing is clipped or noised: of the step diagnostics only the update's cosine with the
        # batch gradient is defined (the reference for the private cells').
        self._diagnostics = (
            None
            if before is None
            else {
                "update_cosine": update_cosine(
                    before=before,
                    after=[p.detach() for p in self.params],
                    gradient=[torch.zeros_like(p) if p.grad is None else p.grad for p in self.params],
                )
            }
        )
        return True

    def record_next_step(self, record: bool) -> None:
        self._record = record

    def step_diagnostics(self) -> dict[str, float | None] | None:
        return self._diagnostics

    def state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "sampler_gen": self.loader.generator.get_state(),
            "views_gen": self.views_generator.get_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.loader.generator.set_state(state["sampler_gen"])
        self.views_generator.set_state(state["views_gen"])

    def privacy_statement(self, draft: CellResult) -> PrivacyStatement:
        return PrivacyStatement(private=False)
