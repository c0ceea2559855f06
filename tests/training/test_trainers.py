"""The two trainers behind the loop: which micro-batches are optimizer steps, and drop-in behaviour."""

from __future__ import annotations

import pytest
import torch

from reproduce.models import build_cell_model
from reproduce.data.stand_in import stand_in
from reproduce.study import parse_study
from reproduce.training.cell import training_set
from reproduce.training.plain import PlainTrainer
from reproduce.training.private import PrivateTrainer

# q = 2/64: Poisson batches of about 2 samples, so an epoch has empty batches and batches of 2-5
# that a physical bound of 1 splits into several micro-batches.
STUDY = """\
name: trainers
model:
  widths: [2, 2, 4]
training:
  optimizer: {{name: sgd, lr: 0.1}}
  batch_size: 2
  physical_batch_size: 1
  epochs: 2
  max_train_samples: 64
grid:
  dataset: [bloodmnist]
  group: [e]
  epsilon: [{epsilon}]
  multiplicity: [{k}]
  seed: [0]
"""


def make_trainer(*, private: bool, k: int = 1):
    study = parse_study(STUDY.format(epsilon=8 if private else "non-private", k=k))
    (cell,) = study.cells()
    splits = stand_in(cell.dataset, size=28, seed=0)
    model = build_cell_model(cell, in_channels=splits.info.n_channels, num_classes=splits.info.num_classes)
    train_set = training_set(splits, max_samples=study.training.max_train_samples, task=splits.info.task)
    kind = PrivateTrainer if private else PlainTrainer
    return kind.for_cell(cell, model, train_set, task=splits.info.task), model


def run_epoch(trainer) -> list[tuple[int, bool]]:
    """(micro-batch size, was it an optimizer step) for every micro-batch of one epoch."""
    out = []
    for x, y in trainer.batches():
        trainer.forward_backward(x, y)
        out.append((len(x), trainer.step()))
    return out


def test_private_trainer_steps_once_per_logical_batch_across_micro_batches_and_empty_batches():
    trainer, _ = make_trainer(private=True)
    generator = trainer.dp.loader.generator
    state = generator.get_state()
    logical = [len(x) for x, _ in trainer.dp.loader]       # the epoch's Poisson batches, drawn ahead
    generator.set_state(state)
    assert 0 in logical and max(logical) > 1               # empty batches, and batches to split

    seen = run_epoch(trainer)
    assert all(n <= 1 for n, _ in seen)                   # the physical bound holds
    steps = [stepped for _, stepped in seen]
    assert sum(steps) == len(logical) == trainer.steps_per_epoch
    # the step flag closes each logical batch: its micro-batches' sizes add up to the batch's size
    sizes, current = [], 0
    for n, stepped in seen:
        current += n
        if stepped:
            sizes.append(current)
            current = 0
    assert sizes == logical
    assert sum(s for _, _, s in trainer.dp.accountant.history) == len(logical)   # what was accounted


def test_private_step_flag_agrees_with_the_dp_optimizer():
    trainer, _ = make_trainer(private=True)
    for x, y in trainer.batches():
        trainer.forward_backward(x, y)
        # opacus's own record of whether the step it just took was deferred
        assert trainer.step() is not trainer.optimizer._is_last_step_skipped


def test_plain_trainer_steps_on_every_batch():
    trainer, _ = make_trainer(private=False)
    seen = run_epoch(trainer)
    assert [stepped for _, stepped in seen] == [True] * 32 and trainer.steps_per_epoch == 32
    assert trainer.steps == 64 and trainer.epochs == 2
    assert trainer.clipped_update() is None and trainer.epsilon_spent() is None


@pytest.mark.parametrize("private", [False, True])
def test_views_are_averaged_per_sample(private):
    trainer, _ = make_trainer(private=private, k=3)
    x, y = next((x, y) for x, y in trainer.batches() if len(x))
    loss, targets = trainer.forward_backward(x, y)
    assert len(targets) == 3 * len(x) and torch.isfinite(loss)
    for p in trainer.params:
        # private: one clipped gradient per sample, not per view; plain: the batch gradient
        assert (p.grad_sample.shape[0] == len(x)) if private else (p.grad is not None)


def test_private_state_round_trips_the_sampler_noise_and_views():
    trainer, _ = make_trainer(private=True)
    run_epoch(trainer)
    state = trainer.state()
    after = run_epoch(trainer)
    other, _ = make_trainer(private=True)
    other.load_state(state)
    assert run_epoch(other) == after       # same Poisson batches from the restored sampler
    assert other.dp.accountant.history == trainer.dp.accountant.history
