"""The two trainers behind the loop: which micro-batches are optimizer steps, and drop-in behaviour."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from reproduce.data.stand_in import stand_in
from reproduce.errors import ReproduceError
from reproduce.models import build_cell_model
from reproduce.records.audit import AuditRecord
from reproduce.records.privacy import PrivacyStatement
from reproduce.records.provenance import DataProvenance, Provenance
from reproduce.records.result import CellResult
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
    logical = [len(x) for x, _ in trainer.dp.loader]  # the epoch's Poisson batches, drawn ahead
    generator.set_state(state)
    assert 0 in logical and max(logical) > 1  # empty batches, and batches to split

    seen = run_epoch(trainer)
    assert all(n <= 1 for n, _ in seen)  # the physical bound holds
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
    assert sum(s for _, _, s in trainer.dp.accountant.history) == len(logical)  # what was accounted


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
    assert run_epoch(other) == after  # same Poisson batches from the restored sampler
    assert other.dp.accountant.history == trainer.dp.accountant.history


def test_private_statement_states_the_trainers_mechanism_never_the_drafts_serialised_privacy():
    trainer, _ = make_trainer(private=True)
    m = trainer.mechanism
    assert m is trainer.dp.mechanism and (m.training_set_size, m.sample_rate, m.steps) == (64, 2 / 64, 64)
    # A draft whose statement (N=1024, another sigma) is not this run's: the trainer must not read it.
    stale = PrivacyStatement(private=True, noise_multiplier=0.5, sample_rate=0.0625, steps=32, training_set_size=1024)
    draft = CellResult(
        cell="trainers-e-8-1-0",
        config={},
        metrics={"steps": 64, "train_loss_last": 0.1},
        privacy=stale,
        statement="",
        provenance=Provenance(
            study="trainers",
            study_sha256=None,
            cell="trainers-e-8-1-0",
            seed=0,
            versions={},
            data=DataProvenance(name="bloodmnist", sha256="0", source="stand-in"),
            device="cpu",
        ),
    )
    with pytest.raises(ReproduceError, match="ran 0 private steps but calibrated for 64"):
        trainer.privacy_statement(draft)
    trainer.dp.accountant.history = [(m.noise_multiplier, m.sample_rate, m.steps)]  # as if every step ran
    audit = AuditRecord(
        kind="input",
        canary="mislabeled",
        canaries=8,
        included=3,
        guesses=2,
        correct=1,
        k_pos=1,
        k_neg=1,
        candidates=5,
        confidence=0.95,
        delta=1e-5,
        epsilon_lower=0.0,
        epsilon_lower_max=1.0,
    )
    statement = trainer.privacy_statement(dataclasses.replace(draft, audit=audit))
    assert (statement.training_set_size, statement.noise_multiplier, statement.sample_rate, statement.steps) == (
        64,
        m.noise_multiplier,
        m.sample_rate,
        64,
    )
    assert (statement.delta, statement.max_grad_norm, statement.accountant) == (m.delta, m.max_grad_norm, "rdp")
    assert (statement.audit_canaries, statement.audit_included) == (8, 3)
    assert statement.epsilon_spent == trainer.epsilon_spent()
    assert statement.unnoised_releases == ("metrics.train_loss_last", "provenance.data.sha256", "audit.*")
    plain, _ = make_trainer(private=False)
    assert plain.privacy_statement(draft) == PrivacyStatement(private=False)
