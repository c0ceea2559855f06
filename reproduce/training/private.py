"""DP-SGD training of one cell: Poisson batches split into micro-batches, clipped per-sample
gradients averaged over the K views, one noised step per logical batch, and its privacy statement.

The model, optimizer and loader come from ``reproduce.privacy.dp_sgd.make_private`` (accounted for
exactly the steps that run), with the resolved ``Mechanism`` that the privacy statement states.
Micro-batches are opacus's (``wrap_data_loader``, what its ``BatchMemoryManager`` yields); the
trainer hears each micro-batch's skip signal on its way to the DP optimizer, so it knows where a
logical batch ends without reading the optimizer's private state.
"""

from __future__ import annotations

import collections
from typing import Any, Iterator

import torch
from opacus.utils.batch_memory_manager import wrap_data_loader

from reproduce.data.augment import average_view_grad_samples
from reproduce.errors import ReproduceError
from reproduce.metrics.clipping import clipping_diagnostics
from reproduce.privacy.clipping import make_clipping_rule
from reproduce.privacy.dp_sgd import PrivateTraining, make_private
from reproduce.privacy.released import unnoised_releases
from reproduce.records.privacy import Mechanism, PrivacyStatement, private_statement
from reproduce.records.result import CellResult
from reproduce.training.trainer import Trainer, make_optimizer


class _LogicalBatchEnds:
    """Stands in for the DP optimizer in opacus's batch splitting: passes each micro-batch's skip
    signal on to it and keeps a copy, in the same order as the optimizer's own queue."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.skips: collections.deque[bool] = collections.deque()

    def signal_skip_step(self, do_skip: bool = True) -> None:
        self.optimizer.signal_skip_step(do_skip=do_skip)
        self.skips.append(do_skip)


class PrivateTrainer(Trainer):
    """DP training through opacus's parts: per-sample clipping by the study's rule to ``max_grad_norm``,
    Gaussian noise per logical step, then the study's optimizer (SGD, Adam, DP-AdamBC) on the result."""

    def __init__(self, cell, dp: PrivateTraining, *, params, task: str, canaries=None):
        super().__init__(
            cell,
            model=dp.model,
            params=params,
            optimizer=dp.optimizer,
            task=task,
            steps=dp.steps,
            steps_per_epoch=len(dp.loader),
            canaries=canaries,
        )
        self.dp, self.cell = dp, cell
        self.mechanism: Mechanism = dp.mechanism  # what the privacy statement states
        self.physical_batch_size = cell.study.training.physical_batch_size
        self._ends = _LogicalBatchEnds(dp.optimizer)

    @classmethod
    def for_cell(
        cls, cell, model: torch.nn.Module, train_set, *, task: str, per_sample_gradients: str = "engine", canaries=None
    ) -> PrivateTrainer:
        """The cell's DP training of ``model`` on ``train_set``, as its study configures it.

        ``per_sample_gradients``: "engine" (training) or "hooks" (opacus's own; ``reproduce verify``).
        ``canaries``: an audited cell's gradient canaries (``reproduce.training.audit.CanaryGradients``).
        """
        tr, p = cell.study.training, cell.study.privacy
        optimizer = make_optimizer(model.parameters(), tr.dp_optimizer or tr.optimizer)
        # B in the adaptive rule's count is the expected batch size, never the realised one.
        rule = make_clipping_rule(p.clipping.rule, **p.clipping.rule_parameters(expected_batch_size=tr.batch_size))
        dp = make_private(
            model,
            optimizer,
            train_set,
            batch_size=tr.batch_size,
            epochs=tr.epochs,
            steps=tr.steps,
            target_epsilon=float(cell.epsilon),
            delta=p.delta,
            max_grad_norm=p.max_grad_norm,
            accountant=p.accountant,
            seed=cell.seed,
            secure_mode=p.secure_mode,
            per_sample_gradients=per_sample_gradients,
            clipping=rule,
            rescale_to_unit_norm=p.clipping.rescale_to_unit_norm,
        )
        params = [q for q in model.parameters() if q.requires_grad]
        return cls(cell, dp, params=params, task=task, canaries=canaries)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Poisson batches of random size, split into micro-batches of at most physical_batch_size;
        # the optimizer takes its (noised) step at the end of each logical batch only.
        yield from self._on_device(
            wrap_data_loader(data_loader=self.dp.loader, max_batch_size=self.physical_batch_size, optimizer=self._ends)
        )

    def _gradients(self, x, y):
        if len(x) == 0:
            # An empty Poisson batch: a noise-only DP step with zero per-sample gradients, in either
            # per-sample-gradient mode (opacus's own nn.Conv2d rule mis-shapes a batch of zero).
            self.optimizer.zero_grad(set_to_none=True)
            for p in self.params:
                p.grad_sample = p.new_zeros((0, *p.shape))
            return torch.tensor(float("nan"), device=self.device), y
        return super()._gradients(x, y)

    def _add_canaries(self, rows, *, real):
        # The canaries are the micro-batch's last samples: clipped, summed and noised with the rest.
        for p, block in zip(self.params, rows):
            p.grad_sample = torch.cat([p.grad_sample, block])

    def _forward(self, views):
        return self.dp.forward(views)  # padded to a seen shape in engine mode; its backward drops the padding

    def _backward(self, loss):
        self.dp.backward(loss)  # per-sample gradients only
        average_view_grad_samples(self.params, self.multiplicity)  # clip the view-average, per sample

    def step(self) -> bool:
        self.optimizer.step()
        return not self._ends.skips.popleft()

    def clipped_update(self) -> list[torch.Tensor]:
        B = self.optimizer.expected_batch_size
        return [p.summed_grad / B for p in self.params if getattr(p, "summed_grad", None) is not None]

    def record_next_step(self, record: bool) -> None:
        # Read when the next logical batch's first micro-batch is clipped.
        self.optimizer.record_diagnostics = record

    def step_diagnostics(self) -> dict[str, float | None] | None:
        record = self.optimizer.last_step_record
        return None if record is None else clipping_diagnostics(record).as_row()

    def state(self) -> dict[str, Any]:
        # In secure mode the sampler and the noise read the OS and have no state: a resumed run
        # draws fresh bytes.
        sampler, noise = self.dp.loader.batch_sampler.generator, self.optimizer.generator
        # The inner optimizer's state holds DP-AdamBC's moments and noise variance; the clipping
        # state holds adaptive clipping's C (saved at a logical batch's end: no count pending).
        return {
            "optimizer": self.optimizer.original_optimizer.state_dict(),
            "clipping": self.optimizer.clipping_state_dict(),
            "accountant_history": list(self.dp.accountant.history),
            "sampler_gen": None if sampler is None else sampler.get_state(),
            "noise_gen": None if noise is None else noise.get_state(),
            "noise_device": None if noise is None else noise.device.type,
            "views_gen": self.views_generator.get_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.optimizer.original_optimizer.load_state_dict(state["optimizer"])
        self.optimizer.load_clipping_state_dict(state["clipping"])
        self.dp.accountant.history = list(state["accountant_history"])
        sampler, noise = self.dp.loader.batch_sampler.generator, self.optimizer.generator
        if sampler is not None:
            sampler.set_state(state["sampler_gen"])
        if noise is not None:
            # A CUDA generator's state is not a CPU one's: a checkpoint resumes on its device type.
            saved = state.get("noise_device", "cpu")
            if saved != noise.device.type:
                raise ReproduceError(
                    f"cell {self.cell.id}: the checkpoint's noise was drawn on {saved}, this run is "
                    f"on {noise.device.type}; resume with --device {saved}, or delete the checkpoint"
                )
            noise.set_state(state["noise_gen"])
        self.views_generator.set_state(state["views_gen"])

    def epsilon_spent(self) -> float:
        return float(self.dp.accountant.get_epsilon(self.mechanism.delta))

    def privacy_statement(self, draft: CellResult) -> PrivacyStatement:
        ran = sum(s for _, _, s in self.dp.accountant.history)
        if ran != self.mechanism.steps:
            raise ReproduceError(
                f"cell {self.cell.id}: ran {ran} private steps but calibrated for {self.mechanism.steps}"
            )
        return private_statement(
            self.mechanism,
            epsilon_spent=self.epsilon_spent(),
            seed=self.cell.seed,
            hyperparameter_selection=self.cell.study.privacy.hyperparameter_selection,
            unnoised_releases=tuple(unnoised_releases(draft.released())),
            audit=draft.audit,
        )
