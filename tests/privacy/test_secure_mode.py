"""privacy.secure_mode: noise and Poisson sample from the OS, never from the seed; seeded mode stays reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch import nn
from torch.utils.data import TensorDataset

from reproduce.data.stand_in import stand_in
from reproduce.privacy.dp_sgd import make_private
from reproduce.privacy.secure_rng import os_bernoulli_mask, os_gaussian_noise, os_standard_normal, os_uniform
from reproduce.study import parse_study
from reproduce.training.cell import checkpoint_key, run_cell
from reproduce.training.checkpoint import load_checkpoint
from reproduce.training.state import TrainingState

N_DRAWS = 1_000_000


def test_os_uniforms_carry_53_random_bits():
    u = os_uniform(N_DRAWS)
    k = u * 2.0**53
    assert u.dtype == np.float64 and u.min() >= 0 and u.max() < 1
    assert np.array_equal(k, np.floor(k))  # multiples of 2**-53
    assert abs((k % 2).mean() - 0.5) < 0.005  # the lowest of the 53 bits is random too (float32: always 0)
    assert abs(u.mean() - 0.5) < 0.002  # se 2.9e-4


def test_os_standard_normal_has_mean_0_std_1_and_gaussian_tails():
    z = os_standard_normal(N_DRAWS + 1)  # odd count: Box-Muller's pairs are trimmed
    assert z.shape == (N_DRAWS + 1,)
    assert abs(z.mean()) < 0.006  # se 1e-3
    assert abs(z.std() - 1) < 0.005  # se 7e-4
    assert abs((np.abs(z) > 1.959964).mean() - 0.05) < 0.0015  # se 2.2e-4
    assert abs(((z - z.mean()) ** 4).mean() / z.var() ** 2 - 3) < 0.05  # kurtosis, se 5e-3


def test_secure_noise_is_gaussian_with_the_requested_std_like_the_reference():
    reference = torch.zeros(1000, 1000, dtype=torch.float32)
    noise = os_gaussian_noise(2.5, reference)
    assert noise.shape == reference.shape and noise.dtype == reference.dtype
    x = noise.double().flatten().numpy()
    assert abs(x.mean()) < 6 * 2.5 / 1000  # se 2.5e-3
    assert abs(x.std() / 2.5 - 1) < 0.005  # the sum of 4 draws is halved: std 2.5, not 5
    assert abs(((x - x.mean()) ** 4).mean() / x.var() ** 2 - 3) < 0.05
    assert torch.equal(os_gaussian_noise(0.0, reference), reference)


@pytest.mark.parametrize("q", [0.01, 0.5])
def test_os_bernoulli_mask_has_rate_q(q):
    mask = os_bernoulli_mask(N_DRAWS, q)
    assert mask.dtype == bool
    assert abs(mask.mean() - q) < 6 * (q * (1 - q) / N_DRAWS) ** 0.5


def _private_draws(*, secure: bool, seed: int = 0, steps: int = 3):
    """The Poisson batches and the noise of ``steps`` DP steps, with torch seeded as the trainer seeds it."""
    torch.manual_seed(seed)
    model = nn.Linear(4, 2)
    data = TensorDataset(torch.randn(200, 4), torch.randint(0, 2, (200,)))
    dp = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        data,
        batch_size=20,
        steps=steps,
        target_epsilon=8.0,
        delta=1e-5,
        max_grad_norm=1.0,
        accountant="rdp",
        seed=seed,
        secure_mode=secure,
    )
    batches = list(dp.loader.batch_sampler)  # one epoch: int(1/q) = 10 batches
    noise = []
    for _ in range(steps):
        for p in model.parameters():  # zero clipped sum: the applied gradient is the noise / B
            p.grad_sample = p.new_zeros((0, *p.shape))
        dp.optimizer.step()
        noise.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        dp.optimizer.zero_grad(set_to_none=True)
    return batches, torch.stack(noise)


def test_two_secure_runs_with_the_same_seed_differ_in_noise_and_in_poisson_batches():
    (batches_a, noise_a), (batches_b, noise_b) = _private_draws(secure=True), _private_draws(secure=True)
    assert batches_a != batches_b
    assert not torch.equal(noise_a, noise_b)
    assert len(batches_a) == 10 and all(len(b) < 60 for b in batches_a)  # q = 0.1 of 200


def test_two_seeded_runs_with_the_same_seed_are_identical():
    (batches_a, noise_a), (batches_b, noise_b) = _private_draws(secure=False), _private_draws(secure=False)
    assert batches_a == batches_b
    assert torch.equal(noise_a, noise_b)


def test_secure_batches_split_into_micro_batches_with_one_noised_step_each():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    data = TensorDataset(torch.randn(200, 4), torch.randint(0, 2, (200,)))
    dp = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        data,
        batch_size=40,
        steps=5,
        target_epsilon=8.0,
        delta=1e-5,
        max_grad_norm=1.0,
        accountant="rdp",
        seed=0,
        secure_mode=True,
    )
    with BatchMemoryManager(data_loader=dp.loader, max_physical_batch_size=7, optimizer=dp.optimizer) as batches:
        sizes, steps = [], 0
        for x, _ in batches:
            assert len(x) <= 7
            dp.optimizer.zero_grad(set_to_none=True)
            for p in model.parameters():
                p.grad_sample = p.new_zeros((len(x), *p.shape))
            dp.optimizer.step()
            sizes.append(len(x))
            steps += not dp.optimizer._is_last_step_skipped
    assert steps == 5 and sum(sizes) > 100  # five logical batches of about 40, in pieces of <= 7
    assert sum(s for _, _, s in dp.accountant.history) == 5


SECURE_STUDY = """\
name: secure
model:
  widths: [4, 4, 8]
privacy:
  secure_mode: {secure}
training:
  optimizer: {{name: sgd, lr: 0.2, momentum: 0.9}}
  batch_size: 16
  physical_batch_size: 8
  epochs: 2
grid:
  dataset: [bloodmnist]
  group: [e]
  epsilon: [8]
  multiplicity: [1]
  seed: [0]
"""
TIMING = {"train_seconds", "samples_per_second"}


def _cell(secure: bool):
    study = parse_study(SECURE_STUDY.format(secure=str(secure).lower()))
    (cell,) = study.cells()
    return cell, stand_in(cell.dataset, size=study.data.size, seed=0)


def _comparable(result) -> dict:
    return {
        "metrics": {k: v for k, v in result.metrics.items() if k not in TIMING},
        "steps": result.steps,
        "epochs": result.epochs,
    }


def test_two_secure_training_runs_of_one_cell_differ_and_two_seeded_ones_are_identical():
    cell, splits = _cell(secure=True)
    a, b = (run_cell(cell, data_root=None, progress=False, splits=splits) for _ in range(2))
    assert [s.loss for s in a.steps] != [s.loss for s in b.steps]
    assert a.metrics["epsilon"] == b.metrics["epsilon"]  # the accountant does not care
    cell, splits = _cell(secure=False)
    c, d = (run_cell(cell, data_root=None, progress=False, splits=splits) for _ in range(2))
    assert _comparable(c) == _comparable(d)


class _Killed(Exception):
    pass


def test_secure_checkpoint_stores_no_privacy_rng_state_and_resumes(tmp_path, monkeypatch):
    import reproduce.training.cell as train

    cell, splits = _cell(secure=True)
    ckpt = tmp_path / "cell.ckpt"
    save = train.save_checkpoint

    def save_then_die(path, state):  # a run killed right after its first checkpoint
        save(path, state)
        raise _Killed

    monkeypatch.setattr(train, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        run_cell(cell, data_root=None, progress=False, checkpoint=ckpt, splits=splits)
    state = TrainingState.from_dict(load_checkpoint(ckpt, expect_key=checkpoint_key(cell)))
    assert state.epoch_done == 1
    assert state.trainer["sampler_gen"] is None and state.trainer["noise_gen"] is None
    monkeypatch.setattr(train, "save_checkpoint", save)
    resumed = run_cell(cell, data_root=None, progress=False, checkpoint=ckpt, splits=splits)
    assert resumed.epochs[0] == state.epochs[0]  # continued from the checkpoint
    assert len(resumed.epochs) == 2
    fresh = run_cell(cell, data_root=None, progress=False, splits=splits)
    assert resumed.metrics["steps"] == resumed.privacy.steps == fresh.privacy.steps
    assert resumed.metrics["epsilon"] == fresh.metrics["epsilon"]  # same accounting
